"""Run by test_shard_faults in a process of its own: a local Ray whose workers register the
``flaky://`` file system (tests/flaky_fs.py), then `spresso shard` three times over a small corpus
with a flaky file, a dead file and a corrupt file. Prints one JSON line of what each run saw, and
what the driver received from its tasks (``ray.get`` spied on)."""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import flaky_fs
import ray

from spresso.config import load_config
from spresso.data.reader import (
    read_dataset_info,
    read_failures,
    read_manifest,
    read_rejects,
)
from spresso.data.shard import shard

RECEIVED: list = []


def spy_get(refs, *args, **kwargs):
    value = REAL_GET(refs, *args, **kwargs)
    RECEIVED.append(value)
    return value


REAL_GET = ray.get


def run(corpus: Path, out: Path, cfg) -> dict:
    res = shard([f"flaky://{corpus}"], cfg, output=str(out), progress=False, track=False)
    return {"up_to_date": res.up_to_date, "digest": res.digest, "clips": res.clips, "failures": res.failures,
            "processed": res.processed_units,
            "rejects": {Path(r["path"]).name: r["reason"] for r in read_rejects(str(out)).to_pylist()},
            "failed": {Path(r["path"]).name: r["reason"] for r in read_failures(str(out)).to_pylist()},
            "sources": sorted({r["source"].rsplit("/", 1)[-1] for r in read_manifest(str(out)).to_pylist()}),
            "info_failures": read_dataset_info(str(out))["failures"]}


def received_items() -> list[tuple[str, int]]:
    """Type and pickled size of every item the driver got; lists are unpacked (one item per unit)."""
    items = []
    for value in RECEIVED:
        for item in value if isinstance(value, list) else [value]:
            for sub in item if isinstance(item, list) else [item]:
                items.append((type(sub).__name__, len(pickle.dumps(sub))))
    return items


def main() -> None:
    corpus, work = Path(sys.argv[1]), Path(sys.argv[2])
    flaky_fs.register()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "flaky_fs.register"})
    cfg = load_config(None, [f"workdir={work}", "data.clips_per_shard=3", "data.io_retries=2",
                             "data.splits.train=1.0", "data.splits.valid=0.0", "data.splits.test=0.0"])
    out = work / "shards"
    ray.get = spy_get
    first = run(corpus, out, cfg)
    ray.get = REAL_GET
    facts = {"first": first, "received": received_items(),
             "reads": {p.name: int(p.read_text()) for p in Path(os.environ["FLAKY_FS_STATE"]).glob("*.reads")}}
    facts["second"] = run(corpus, out, cfg)  # the dead file still fails: not up to date
    (Path(os.environ["FLAKY_FS_STATE"]) / "heal").write_text("")
    facts["third"] = run(corpus, out, cfg)
    facts["fourth"] = run(corpus, out, cfg)
    print("FACTS " + json.dumps(facts), flush=True)


if __name__ == "__main__":
    main()
