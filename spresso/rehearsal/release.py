"""Run as a Ray job after the rehearsal's jobs: end the detached actors other jobs left behind.

Ray Data's helper actors (_StatsActor, _AutoscalingCoordinatorActor, ActorLocationTracker) are
detached, restart forever (max_restarts=-1) and are pinned to the node of the driver that first
used Ray Data; with a head that has no CPUs that is a worker node, which then never goes idle.
Killing their processes only restarts them there: ``ray.kill(no_restart=True)`` from a driver does.
"""
from __future__ import annotations

import json

import ray
from ray.util.state import list_actors

JOB_SUPERVISOR_PREFIX = "_ray_internal_job_actor_"


def main() -> None:
    ray.init()
    me = ray.get_runtime_context().get_job_id()
    ended = []
    for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10000):
        # named actors of other jobs; never a job's supervisor (ours among them: it runs this very job)
        if actor.name and actor.job_id != me and not actor.name.startswith(JOB_SUPERVISOR_PREFIX):
            try:
                ray.kill(ray.get_actor(actor.name, namespace=actor.ray_namespace), no_restart=True)
                ended.append({"class": actor.class_name, "name": actor.name, "node_id": actor.node_id})
            except ValueError:  # gone meanwhile
                pass
    print("RELEASED " + json.dumps(ended))


if __name__ == "__main__":
    main()
