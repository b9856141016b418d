"""launch/arm.launch.py against minimal fakes of launch / launch_ros (no ROS needed).

The fakes (python/tests/fakes/) record the Node arguments, so these tests check the
package, executable and parameters the launch file would start the node with.
"""

import importlib.util
import os
import py_compile
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LAUNCH_FILE = os.path.join(ROOT, "launch", "arm.launch.py")
FAKES = os.path.join(os.path.dirname(__file__), "fakes")
FAKE_MODULES = ("launch", "launch_ros", "ament_index_python")


@pytest.fixture
def launch_module(monkeypatch, tmp_path):
    """Imports arm.launch.py with the fakes first on sys.path; restores everything after."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in FAKE_MODULES}
    for k in saved:
        del sys.modules[k]
    monkeypatch.syspath_prepend(FAKES)
    # The package share: the repository's layout matches share/vw2_policy (config/, launch/).
    monkeypatch.setenv("VW2_FAKE_SHARE_VW2_POLICY", ROOT)
    spec = importlib.util.spec_from_file_location("vw2_arm_launch", LAUNCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import launch

    assert os.path.dirname(launch.__file__).startswith(FAKES), "the fake launch module must be used"
    yield mod
    for k in [k for k in sys.modules if k.split(".")[0] in FAKE_MODULES]:
        del sys.modules[k]
    sys.modules.update(saved)


def _evaluate(mod, **overrides):
    """Runs generate_launch_description and its OpaqueFunction with the given arguments."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    ld = mod.generate_launch_description()
    args = {e.name: e for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    values = {name: a.default_value for name, a in args.items() if a.default_value is not None}
    unknown = set(overrides) - set(args)
    assert not unknown, f"not launch arguments: {unknown}"
    values.update(overrides)
    missing = [n for n in args if n not in values]
    if missing:
        raise KeyError(f"required launch arguments missing: {missing}")
    ctx = LaunchContext(values)
    nodes = []
    for e in ld.entities:
        if isinstance(e, OpaqueFunction):
            nodes.extend(e.execute(ctx))
    return args, nodes


def test_launch_file_compiles(tmp_path):
    py_compile.compile(LAUNCH_FILE, cfile=str(tmp_path / "arm.launch.pyc"), doraise=True)


def test_declares_the_documented_arguments(launch_module):
    from launch.actions import DeclareLaunchArgument

    ld = launch_module.generate_launch_description()
    args = {e.name: e for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    assert set(args) == {"policy", "calibration", "command_mode", "robot", "params_file", "instruction", "use_sim_time"}
    assert args["policy"].default_value is None, "policy is required"
    assert args["robot"].default_value == "franka"
    assert args["robot"].choices == ["franka", "calvin_sim", "ur"]
    assert args["use_sim_time"].default_value == "false"
    assert all(a.description for a in args.values())


def test_default_robot_starts_the_node_with_its_params_file(launch_module):
    _, nodes = _evaluate(launch_module, policy="/opt/policies/calvin")
    assert len(nodes) == 1
    n = nodes[0]
    assert (n.package, n.executable, n.name) == ("vw2_policy", "vw2_policy_node", "vw2_policy_node")
    assert n.output == "screen"
    params_file, overrides = n.parameters
    assert params_file == os.path.join(ROOT, "config", "franka.yaml")
    assert os.path.isfile(params_file)
    # Only non-empty launch arguments override the file.
    assert overrides == {"policy": "/opt/policies/calvin", "use_sim_time": False}


def test_arguments_become_parameters(launch_module, tmp_path):
    custom = tmp_path / "mine.yaml"
    custom.write_text("vw2_policy_node:\n  ros__parameters: {}\n")
    _, nodes = _evaluate(
        launch_module,
        policy="/p",
        calibration="/c/front.yaml",
        command_mode="joint_trajectory",
        robot="ur",
        params_file=str(custom),
        instruction="open the drawer",
        use_sim_time="true",
    )
    (n,) = nodes
    assert n.parameters == [
        str(custom),
        {
            "policy": "/p",
            "use_sim_time": True,
            "calibration": "/c/front.yaml",
            "command_mode": "joint_trajectory",
            "instruction": "open the drawer",
        },
    ]


@pytest.mark.parametrize("robot", ["franka", "ur", "calvin_sim"])
def test_every_robot_has_a_params_file_for_the_node(launch_module, robot):
    _, nodes = _evaluate(launch_module, policy="/p", robot=robot)
    path = nodes[0].parameters[0]
    assert path == os.path.join(ROOT, "config", f"{robot}.yaml")
    text = open(path).read()
    assert "vw2_policy_node:\n  ros__parameters:" in text


def test_calvin_sim_adds_the_bridge(launch_module, tmp_path):
    _, nodes = _evaluate(launch_module, policy="/p", robot="calvin_sim", use_sim_time="false")
    assert [n.executable for n in nodes] == ["vw2_policy_node", "calvin_sim_bridge"]
    bridge = nodes[1]
    assert bridge.package == "vw2_policy"
    assert bridge.parameters == [{"use_sim_time": False, "rate_hz": 30.0, "seed": 0}]
    # The bridge script it names exists and compiles.
    script = os.path.join(ROOT, "python", "vw2_ros", "calvin_sim_bridge.py")
    py_compile.compile(script, cfile=str(tmp_path / "bridge.pyc"), doraise=True)


def test_bad_arguments_are_refused(launch_module):
    with pytest.raises(KeyError, match="policy"):
        _evaluate(launch_module)
    with pytest.raises(RuntimeError, match="policy:= is required"):
        _evaluate(launch_module, policy="  ")
    with pytest.raises(RuntimeError, match="robot:='kuka'"):
        _evaluate(launch_module, policy="/p", robot="kuka")
    with pytest.raises(RuntimeError, match="command_mode:='cartesian'"):
        _evaluate(launch_module, policy="/p", command_mode="cartesian")


def test_bridge_math_matches_the_node_conventions():
    """The bridge turns the node's twist back into CALVIN actions with the inverse map."""
    import math

    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "python"))
    try:
        from vw2_ros import calvin_sim_bridge as b
    finally:
        sys.path.remove(os.path.join(ROOT, "python"))

    def rot(roll, pitch, yaw):
        cx, sx, cy, sy, cz, sz = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        return rz @ ry @ rx

    def quat_to_rot(x, y, z, w):
        return np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ])

    e = (2.9, 0.3, -0.7)
    assert np.allclose(quat_to_rot(*b.quaternion_from_euler(*e)), rot(*e), atol=1e-12)
    # Forward map of the node (convert::euler_rates_to_angular_velocity), then the bridge's inverse.
    rates = np.array([0.2, -0.4, 0.5])
    _, th, ps = e
    omega = [
        math.cos(ps) * math.cos(th) * rates[0] - math.sin(ps) * rates[1],
        math.sin(ps) * math.cos(th) * rates[0] + math.cos(ps) * rates[1],
        -math.sin(th) * rates[0] + rates[2],
    ]
    assert np.allclose(b.euler_rates(e, omega), rates, atol=1e-12)
    # 0.3 m/s for 1/30 s = 0.01 m = 0.5 CALVIN units; clipping; gripper sign.
    a = b.relative_action((0.3, -3.0, 0.0), (0.0, 0.0, 0.75), (math.pi, 0.0, 0.0), -1.0, 1 / 30)
    assert np.allclose(a, [0.5, -1.0, 0.0, 0.0, 0.0, 0.5, -1.0])
    assert b.relative_action((0, 0, 0), (0, 0, 0), (0, 0, 0), 0.04, 1 / 30)[6] == 1.0
