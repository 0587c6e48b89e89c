"""Ray's fake multi-node provider, with one temporary folder per node.

The autoscaler loads this class (``provider: {type: external, module: ...}``) in its own process.
Ray's provider builds each node's ``RayParams`` itself and leaves ``temp_dir`` unset, so every node
would share the head's folder; we hand it a ``RayParams`` that also names the node's own folder.
"""
from __future__ import annotations

import functools
import os

import ray._private.parameter as ray_parameter
from ray._common.utils import get_ray_address_file
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

NODES_ROOT = "nodes_root"  # provider config key: where the nodes' folders go


class OwnFolderProvider(FakeMultiNodeProvider):
    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        # one node per call: each gets its own folder (launch_multiple would create `count` in one go)
        for _ in range(count if self._launch_multiple else 1):
            self.create_one(tags, resources, labels)

    def create_one(self, tags, resources, labels) -> None:
        with self.lock:
            # short: Ray's socket paths under it must stay within 107 bytes (AF_UNIX)
            folder = os.path.join(self.provider_config[NODES_ROOT], str(self._next_node_id + 1))
            os.makedirs(folder, exist_ok=True)
            # What `ray start` leaves on a real node: the cluster's address, which a job's supervisor
            # hands its driver. Without it Ray falls back to /tmp/ray, another cluster's file.
            with open(get_ray_address_file(folder), "w") as f:
                f.write(self.provider_config["gcs_address"])
            # memory is a node setting, not a custom resource (Ray's provider would pass it as one and
            # the node would die at start): hand it to the node's RayParams like its folder.
            resources = dict(resources)
            memory = resources.pop("memory", None)
            params = ray_parameter.RayParams
            ray_parameter.RayParams = functools.partial(params, temp_dir=folder,
                                                        **({"memory": int(memory)} if memory else {}))
            try:
                self._create_node_with_resources_and_labels({}, tags, 1, resources, labels)
            finally:
                ray_parameter.RayParams = params
