"""Helpers for tests on the session's local Ray."""
from __future__ import annotations


def release_placement_groups() -> int:
    """Remove every live placement group on the local Ray; returns how many there were."""
    import ray
    from ray.util.placement_group import PlacementGroup

    live = [g for g in ray.util.placement_group_table().values() if g.get("state") == "CREATED"]
    for g in live:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(g["placement_group_id"]))))
    return len(live)
