"""Helpers for tests on the session's local Ray."""
from __future__ import annotations


def live_placement_groups() -> list[dict]:
    """The placement groups that hold resources on the local Ray now (``placement_group_table`` rows)."""
    import ray

    return [g for g in ray.util.placement_group_table().values() if g.get("state") == "CREATED"]


def release_placement_groups() -> int:
    """Remove every live placement group on the local Ray; returns how many there were."""
    import ray
    from ray.util.placement_group import PlacementGroup

    live = live_placement_groups()
    for g in live:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(g["placement_group_id"]))))
    return len(live)
