"""The rehearsal's summary, printed: bucket, MLflow runs and lineage, nodes, the node kill, times."""
from __future__ import annotations


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_summary(report) -> None:
    line = "=" * 78
    print(f"\n{line}\nspresso rehearsal: {'OK' if report.ok else 'FAILED'} in {report.seconds.get('total', 0) / 60:.1f} min")
    print("\nbucket (objects, bytes per prefix):")
    for prefix, row in report.bucket.items():
        print(f"  {prefix or '(top)':40s} {row['objects']:6d}  {human(row['bytes']):>10s}")
    print("\nMLflow stage runs (first submission; lineage: spresso.upstream.*):")
    for run in report.stages:
        ups = ", ".join(f"{k}={v[:8]}" for k, v in sorted(run["upstream"].items())) or "-"
        print(f"  {run['instance']:28s} {run['status']:9s} {run['seconds']:7.1f}s  {run['run_id'][:8]}  <- {ups}")
    print(f"  runs per stage: {report.runs_per_stage}")
    if report.states_second:
        print(f"  second submission: {({k: v for k, v in report.states_second.items() if v != 'not selected'})}")
    print("\nnodes launched / terminated per type (alive at the end):")
    for kind, row in report.nodes.items():
        print(f"  {kind:14s} launched {row['launched']}  terminated {row['terminated']}  alive {row['alive']}")
    for t, kind, what, nid in report.node_events:
        print(f"    +{t:7.1f}s  {kind:14s} {what:10s} ...{nid}")
    if report.pinned_by:
        print("\ndetached actors left on worker nodes after the jobs (they keep their node from scaling down; ended by a last job):")
        for a in report.pinned_by:
            print(f"  {a['class']} on {a['node_type']} ...{a['node_id'][-5:]}")
    if report.asked_types:
        print(f"\nnode types asked for (by label) -> started by the autoscaler: {report.asked_types}")
    if report.kill:
        print(f"\nnode kill: {report.kill}")
    if report.roundtrip:
        print("\ncodec round trips (bundles loaded from the bucket):")
        for url, row in report.roundtrip.items():
            print(f"  {url}: {row}")
    print(f"\njobs: {report.jobs}")
    print(f"times (s): {report.seconds}")
    print(f"local writes under work/: {report.local_writes or 'none'}")
    for why in report.failures:
        print(f"FAILED: {why}")
    print(line)
