"""The real node's parameter handling: the shipped parameter files, what arm.launch.py
passes (evaluated with the fakes of python/tests), and a parameter file with an error."""

import importlib.util
import os
import sys

import pytest

from conftest import POLICY, ROOT, executable, params_file
from harness import NodeProcess

LAUNCH_TESTS = os.path.join(ROOT, "python", "tests")


def ros_args(params):
    """`launch_ros.actions.Node(parameters=[file, {overrides}])` as a command line."""
    args = []
    for p in params:
        if isinstance(p, dict):
            for k, v in p.items():
                v = str(v).lower() if isinstance(v, bool) else v
                args += ["-p", f"{k}:={v}"]
        else:
            args += ["--params-file", str(p)]
    return args


def run_node(exe, args, log):
    import subprocess

    with open(log, "w") as f:
        proc = subprocess.Popen([exe, "--ros-args", *args], stdout=f, stderr=subprocess.STDOUT)
    return proc


@pytest.mark.parametrize("robot", ["franka", "ur", "calvin_sim"])
def test_shipped_parameter_files_are_accepted(tmp_path, robot):
    path = params_file(tmp_path / f"{robot}.yaml", base=f"{robot}.yaml")
    node = NodeProcess(executable("vw2_policy_node"), path, tmp_path / "node.log")
    node.wait_ready()
    assert node.stop() == 0, node.text()


def launch_nodes(**launch_args):
    """The Node actions arm.launch.py creates, through python/tests' fakes."""
    sys.path.insert(0, LAUNCH_TESTS)
    try:
        import test_launch as tl
    finally:
        sys.path.remove(LAUNCH_TESTS)
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in tl.FAKE_MODULES}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, tl.FAKES)
    os.environ["VW2_FAKE_SHARE_VW2_POLICY"] = ROOT
    try:
        spec = importlib.util.spec_from_file_location("vw2_arm_launch_live", tl.LAUNCH_FILE)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _, nodes = tl._evaluate(mod, **launch_args)
        return nodes
    finally:
        sys.path.remove(tl.FAKES)
        del os.environ["VW2_FAKE_SHARE_VW2_POLICY"]
        for k in [k for k in sys.modules if k.split(".")[0] in tl.FAKE_MODULES]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.mark.parametrize("launch_args", [
    {"policy": POLICY},
    {"policy": POLICY, "robot": "ur", "instruction": "open the drawer", "use_sim_time": "true"},
    {"policy": POLICY, "robot": "calvin_sim", "calibration": os.path.join(ROOT, "calibration", "calvin_static.yaml"),
     "command_mode": "servo_twist"},
])
def test_the_launch_files_parameters_are_what_the_real_node_accepts(tmp_path, launch_args):
    nodes = launch_nodes(**launch_args)
    node_action = [n for n in nodes if n.executable == "vw2_policy_node"][0]
    assert node_action.package == "vw2_policy"
    args = ros_args(node_action.parameters)
    node = NodeProcess(executable(node_action.executable), args, tmp_path / "node.log")
    node.wait_ready()
    assert node.stop() == 0, node.text()


def test_a_parameter_file_with_an_unknown_key_is_refused_by_name(tmp_path):
    path = params_file(tmp_path / "typo.yaml", **{"safety.max_linear_sped": 0.2})
    log = tmp_path / "node.log"
    proc = run_node(executable("vw2_policy_node"), ["--params-file", str(path)], log)
    rc = proc.wait(60)
    text = open(log).read()
    assert rc == 2, (rc, text)
    assert "max_linear_sped" in text, text
    assert "parameter" in text, text


def test_a_joint_mode_without_an_ik_is_refused(tmp_path):
    path = params_file(tmp_path / "joint.yaml", command_mode="joint_forward")
    log = tmp_path / "node.log"
    proc = run_node(executable("vw2_policy_node"), ["--params-file", str(path)], log)
    rc = proc.wait(60)
    text = open(log).read()
    assert rc == 2 and "command_mode" in text and "IK" in text, (rc, text)


def test_a_parameter_file_rcl_refuses_is_a_clear_error(tmp_path):
    """`y` is a string to YAML 1.2 (the node's own check) but a boolean to rcl's parser."""
    path = tmp_path / "yaml11.yaml"
    params_file(path, joint_names=["x", "y", "z"])
    text = path.read_text().replace("'y'", "y")
    path.write_text(text)
    log = tmp_path / "node.log"
    proc = run_node(executable("vw2_policy_node"), ["--params-file", str(path)], log)
    rc = proc.wait(60)
    out = open(log).read()
    assert rc == 2, (rc, out)
    assert "rcl refused" in out and "panicked" not in out, out
