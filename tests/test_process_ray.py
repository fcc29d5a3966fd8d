"""The tree sampler Ray nodes run is shipped by value: a node that has ray (and psutil) but not
buildctl can still sample a job's tree."""

from __future__ import annotations

import subprocess
import sys

import pytest

ray = pytest.importorskip("ray")

NODE = """
import sys

class NoBuildctl:  # a node without buildctl installed
    def find_spec(self, name, path=None, target=None):
        if name == "buildctl" or name.startswith("buildctl."):
            raise ImportError("no buildctl on this node")
        return None

sys.meta_path.insert(0, NoBuildctl())
import os, subprocess
from ray import cloudpickle
sample_tree = cloudpickle.loads(sys.stdin.buffer.read())
child = subprocess.Popen(["sleep", "30"])
tree = sample_tree(os.getpid(), 1.0)
child.kill()
print(len(tree.procs), tree.rss > 0, "buildctl" in sys.modules)
"""


def test_node_side_sampler_needs_no_buildctl() -> None:
    from buildctl import process
    from buildctl.govern import ray_cluster

    ray.cloudpickle.register_pickle_by_value(process)
    ray.cloudpickle.register_pickle_by_value(ray_cluster)
    data = ray.cloudpickle.dumps(ray_cluster.sample_tree)
    result = subprocess.run([sys.executable, "-c", NODE], input=data, capture_output=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["2", "True", "False"]
