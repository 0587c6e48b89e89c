"""The codec bundle's files: its manifest (``bundle.json``) and its weight files, with digests.

    <bundle>/bundle.json          format, format_version, model_id, mode, operating point, configs,
                                  normalisation stats, default sampler, file digests, lineage
    <bundle>/audioae.safetensors  the AudioAE (encoder + decoder)
    <bundle>/dae.safetensors      g_psi (``encoder.*``) + D_theta (``denoiser.*``)
    <bundle>/quantizer.safetensors  the quantizer (discrete bundles only): QINCo2, or RQ codebooks
                                  (``configs.quantizer.kind``: "rq"; format version 2 on)

Safetensors + JSON only: reading a bundle never unpickles anything. The model id is the SHA-256
of the weight files' digests and of every field of bundle.json that affects what the models
compute (configs, normalisation, operating point); lineage and paths are left out, so re-exporting
the same weights gives the same id. Streams carry the id's first 4 bytes (docs/bitstream.md).
Building the models from these files is the codec's job (:mod:`spresso.codec.bundle`); writing a
bundle from training checkpoints is the export stage's (:mod:`spresso.train.export`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as tensors_bytes

from spresso.core import storage
from spresso.core.errors import BundleError
from spresso.core.outputs import write_file

FORMAT = "spresso-bundle"
FORMAT_VERSION = 2  # what export writes: version 2 added RQ quantizers (configs.quantizer.kind)
READ_VERSIONS = (1, 2)
MANIFEST = "bundle.json"
AUDIOAE_FILE, DAE_FILE, QUANTIZER_FILE = "audioae.safetensors", "dae.safetensors", "quantizer.safetensors"
# bundle.json fields that do not change the model's function: excluded from the model id.
NOT_IDENTITY = ("model_id", "lineage", "files", "exported_with")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with storage.open_file(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def compute_model_id(manifest: dict, file_digests: dict[str, str]) -> str:
    identity = {k: v for k, v in manifest.items() if k not in NOT_IDENTITY}
    blob = json.dumps({"manifest": identity, "files": dict(sorted(file_digests.items()))}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Weights to a safetensors file, written whole under a temporary name, with the usual file mode (safetensors'
    own ``save_file`` makes it 0600, which other users of a shared bundle cannot read)."""
    write_file(path, tensors_bytes({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}))


def read_bundle_manifest(path: str | Path) -> dict:
    """The manifest of the bundle at ``path`` (a local folder or a URL prefix); one-line BundleError otherwise."""
    root = path if storage.is_url(path) else Path(path)
    mpath = storage.join(root, MANIFEST)
    try:
        if not storage.is_file(mpath):
            if storage.is_file(root):
                raise BundleError(f"{root}: a bundle is a folder (with {MANIFEST}), got a file")
            if not storage.exists(root):
                raise BundleError(f"{root}: no such bundle")
            raise BundleError(f"{root}: not a codec bundle (no {MANIFEST})")
        manifest = json.loads(storage.read_text(mpath))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(f"{mpath}: corrupt bundle manifest (not JSON)") from None
    except OSError as err:  # an unreachable store, missing credentials
        raise BundleError(f"{root}: cannot read the bundle ({storage.describe_error(err)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{root}: not a codec bundle ({MANIFEST} has format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if version not in READ_VERSIONS:
        raise BundleError(f"{root}: bundle format version {version} is not supported by this spresso (reads versions "
                          f"{', '.join(map(str, READ_VERSIONS))}); re-export it with a matching spresso")
    return manifest


def load_bundle_weights(root: str | Path, name: str, manifest: dict, verify: bool) -> dict[str, torch.Tensor]:
    path = storage.join(root, name)
    try:
        if not storage.is_file(path):
            raise BundleError(f"{root}: bundle is missing {name}")
        data = storage.read_bytes(path)  # one read: verified and parsed from the same bytes
    except OSError as err:  # a weight file this user may not read, an unreachable store
        raise BundleError(f"{path}: cannot read the bundle file ({storage.describe_error(err)})") from None
    want = manifest.get("files", {}).get(name)
    if verify and want is not None and hashlib.sha256(data).hexdigest() != want:
        raise BundleError(f"{path}: corrupt bundle file (digest does not match {MANIFEST})")
    try:
        return load_tensors(data)
    except Exception as err:  # safetensors raises its own error types on a damaged header
        raise BundleError(f"{path}: unreadable weights ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


