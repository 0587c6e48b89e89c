"""Run by test_stage_resources in a process of its own: a local Ray whose one node carries the label
``spresso-node: a100`` and the resource ``accelerator_type:A100`` (as the rehearsal's fake GPU nodes do).
A task, a Ray Data map, an actor pool and a 2-worker Ray Train run, each placed with the options the
config makes, must run there; prints one JSON line of what each saw."""
from __future__ import annotations

import json
import sys
import tempfile

import ray
from ray.train import RunConfig
from ray.train.torch import TorchTrainer

from spresso.config.scaling import ScalingSettings
from spresso.runtime.placement import ray_options
from spresso.train.harness import scaling_config

OPTIONS = ray_options(cpus=0.5, label="a100", accelerator="A100")


def labels() -> str:
    return ray.get_runtime_context().get_node_labels().get("spresso-node", "")


class Labels:
    def __call__(self, batch):
        return {"label": [labels()] * len(batch["x"])}


def loop(config):
    with open(f"{config['out']}/rank{ray.train.get_context().get_world_rank()}", "w") as f:
        f.write(labels())


def main() -> None:
    ray.init(address="local", num_cpus=2, labels={"spresso-node": "a100"}, resources={"accelerator_type:A100": 1},
             include_dashboard=False, log_to_driver=False)
    seen = {"task": ray.get(ray.remote(labels).options(**OPTIONS).remote())}
    # A label no node carries (and an accelerator none has) leaves the task waiting for an autoscaler.
    for other in ({"label": "cpu"}, {"accelerator": "H100"}):
        ref = ray.remote(labels).options(**ray_options(cpus=0.5, **other)).remote()
        seen[f"waits for {other}"] = not ray.wait([ref], timeout=3)[0]
        ray.cancel(ref, force=True)
    ds = ray.data.from_items([{"x": i} for i in range(4)])
    seen["map"] = sorted({r["label"] for r in ds.map(lambda r: {"label": labels()}, **OPTIONS).take_all()})
    pool = ds.map_batches(Labels, compute=ray.data.ActorPoolStrategy(size=2), batch_size=2, batch_format="numpy", **OPTIONS)
    seen["pool"] = sorted({r["label"] for r in pool.take_all()})
    out = tempfile.mkdtemp()
    sc = scaling_config(ScalingSettings(workers=2, cpus_per_worker=0.5, label="a100", accelerator="A100"))
    TorchTrainer(loop, train_loop_config={"out": out}, scaling_config=sc,
                 run_config=RunConfig(name="probe", storage_path=tempfile.mkdtemp())).fit()
    seen["train"] = sorted(open(f"{out}/rank{r}").read() for r in range(2))
    ray.shutdown()
    print(json.dumps(seen))


if __name__ == "__main__":
    sys.exit(main())
