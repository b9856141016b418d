"""Fixtures for the live ROS 2 tests: rclpy, the installed node, parameter files.

Run by scripts/test-ros.sh (inside a private network namespace with only `lo` up), after
`colcon build` installed the package; AMENT_PREFIX_PATH must name that install.
"""

import os
import sys

import pytest
import yaml

sys.path.insert(0, os.path.dirname(__file__))

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
POLICY = os.path.join(ROOT, "tests", "fixtures", "tiny-policy")


@pytest.fixture(scope="session", autouse=True)
def ros():
    import rclpy

    rclpy.init()
    yield
    rclpy.shutdown()


def executable(name):
    from ament_index_python.packages import get_package_prefix

    exe = os.path.join(get_package_prefix("vw2_policy"), "lib", "vw2_policy", name)
    assert os.access(exe, os.X_OK), f"{exe}: not installed (colcon build with -DVW2_CARGO_EXAMPLES=ON)"
    return exe


def params_file(path, base="franka.yaml", **overrides):
    """config/<base> with `policy` set to the tiny test policy and `overrides` applied
    (nested keys as 'safety.hold_repeats'), written to `path`."""
    with open(os.path.join(ROOT, "config", base)) as f:
        doc = yaml.safe_load(f)
    p = doc["vw2_policy_node"]["ros__parameters"]
    p["policy"] = POLICY
    p["instruction"] = ""
    p["diagnostics_rate_hz"] = 5.0
    for k, v in overrides.items():
        d = p
        *parents, leaf = k.split(".")
        for q in parents:
            d = d.setdefault(q, {})
        d[leaf] = v
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path
