"""Run GPU code paths on a CPU-only machine: PyTorch's ``meta`` device plays the accelerator.

CI has no GPU, yet the bugs of a first GPU step are CPU/GPU mix-ups: a CPU ``torch.Generator``
handed to a draw on the GPU, a tensor made on the CPU (a factory without ``device=``) meeting
the model's, a branch on ``x.is_cuda`` that changes precision. ``meta`` tensors carry shapes,
dtypes and a device but no data, and PyTorch's meta kernels refuse CPU tensors mixed with meta
ones (as CUDA kernels refuse them), so a model moved to ``meta`` runs its real code on a second
device. :class:`OnAccelerator` adds what meta lacks:

- a generator must live where its draw goes (``device=``, else the op's tensors): CUDA's rule;
- no op may mix non-scalar CPU tensors with meta tensors (meta checks only some ops itself);
  transfers (``to``, ``cpu``, ``copy_``...) are exempt;
- ``x.is_cuda`` is True for meta tensors, so code takes its CUDA branches;
- values leaving the device (``float(loss)``, ``.item()``, ``.cpu()``, ``.numpy()``) are zeros of the
  right shape, and data-dependent ops (``nonzero``) find nothing: the step runs to its end, and
  only placement and dtype are checked, never numbers.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

ACCEL = torch.device("meta")
T = torch.Tensor
# Ops that move data between devices, or only read metadata: mixing devices is their job.
TRANSFERS = {T.to, T.cpu, T.copy_, T.cuda, T.type_as, T.new_tensor, T.new_zeros, T.new_ones, T.new_empty, T.new_full,
             torch.as_tensor, torch.tensor, T.__repr__, T.__format__, T.__getitem__,
             torch._has_compatible_shallow_copy_type}  # nn.Module.to asks it while moving parameters
IS_CUDA = T.is_cuda.__get__  # a fresh method-wrapper per access: compare with ==, not is
LEAVE_AS_SCALAR = {T.__float__: 0.0, T.__int__: 0, T.__index__: 0, T.__bool__: False, T.item: 0.0}


class DeviceMixError(RuntimeError):
    """What CUDA would have raised: a generator or a tensor on the wrong device."""


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _tensors(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


def _on_accel(t: torch.Tensor) -> bool:
    return t.device.type == ACCEL.type


class OnAccelerator(TorchFunctionMode):
    """While active, ``meta`` tensors behave as GPU tensors do towards CPU tensors and generators.

    ``calls`` counts the ops seen, so a test can check the mode really watched the code it ran.
    """

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.autocasts: list[tuple[str, torch.dtype | None, bool]] = []  # (device type, dtype, enabled) asked for
        self._autocast = None

    def __enter__(self):
        # torch.autocast knows no meta device; the code's own autocast requests are recorded (what a
        # test checks: the precision a path asks for), then served as the CPU's (disabled: no CPU bf16).
        self._autocast = torch.autocast
        real = self._autocast

        def autocast(device_type: str, dtype: torch.dtype | None = None, enabled: bool = True, **kw):
            self.autocasts.append((device_type, dtype, bool(enabled)))
            if device_type in (ACCEL.type, "cuda"):
                return real("cpu", enabled=False)
            return real(device_type, dtype=dtype, enabled=enabled, **kw)

        torch.autocast = autocast
        return super().__enter__()

    def __exit__(self, *exc):
        torch.autocast = self._autocast
        return super().__exit__(*exc)

    def asked_bf16(self) -> bool:
        """Whether the code asked for an enabled reduced-precision autocast while the mode was active."""
        return any(enabled and dtype in (torch.bfloat16, torch.float16) for _, dtype, enabled in self.autocasts)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls += 1
        first = args[0] if args else None
        meta_self = isinstance(first, torch.Tensor) and _on_accel(first)
        if meta_self and func == IS_CUDA:
            return True
        if meta_self and func in LEAVE_AS_SCALAR:
            return LEAVE_AS_SCALAR[func]
        if meta_self and (func in (T.cpu, T.numpy, T.tolist) or (func is T.to and _to_cpu(args, kwargs))):
            host = torch.zeros(first.shape, dtype=_to_dtype(args, kwargs) or first.dtype)
            return host.numpy() if func is T.numpy else host.tolist() if func is T.tolist else host
        if meta_self and func in (T.nonzero, torch.nonzero):
            return torch.zeros((0, first.dim()), dtype=torch.long, device=ACCEL)
        if meta_self and func in (T.bincount, torch.bincount):  # no meta kernel: its size depends on the data
            return torch.zeros(int(kwargs.get("minlength", args[2] if len(args) > 2 else 0)), dtype=torch.long, device=ACCEL)
        # Indexing a device tensor with CPU indices is fine on CUDA; assigning CPU values is not.
        tensors = _tensors((args[0], args[2]) if func is T.__setitem__ else args, []) + _tensors(kwargs, [])
        self._check_generator(func, kwargs, tensors)
        if func not in TRANSFERS:
            self._check_mix(func, tensors)
        return func(*args, **kwargs)

    @staticmethod
    def _check_generator(func, kwargs: dict, tensors: list) -> None:
        gen = kwargs.get("generator")
        if gen is None:
            return
        if kwargs.get("device") is not None:
            where = torch.device(kwargs["device"])
        elif tensors:
            where = tensors[0].device
        else:
            where = torch.device("cpu")
        if where.type != gen.device.type:
            raise DeviceMixError(f"{_name(func)}: a {gen.device.type} generator drawing on {where.type} "
                                 "(CUDA refuses a generator of another device)")

    @staticmethod
    def _check_mix(func, tensors: list) -> None:
        accel = any(_on_accel(t) for t in tensors)
        host = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]  # 0-dim CPU tensors are scalars to CUDA
        if accel and host:
            raise DeviceMixError(f"{_name(func)}: CPU tensor {tuple(host[0].shape)} {host[0].dtype} mixed with "
                                 "accelerator tensors (a factory without device=, or a missing .to(device))")


def _to_cpu(args, kwargs) -> bool:
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    if isinstance(target, (str, torch.device)):
        return torch.device(target).type == "cpu"
    return False


def _to_dtype(args, kwargs):
    dtype = kwargs.get("dtype")
    for a in args[1:]:
        if isinstance(a, torch.dtype):
            dtype = a
    return dtype
