"""vw2_policy_node against a real ROS 2 Jazzy (rcl, Fast DDS) on a loopback graph.

A fake robot cell (harness.Cell, rclpy) publishes camera frames, joint states and the TCP
pose at 30 Hz and listens to every output of the installed node (colcon build), which runs
the bundled tiny test policy. Run by scripts/test-ros.sh inside `unshare -n`.
"""

import math
import os
import re
import time

import pytest

from conftest import POLICY, ROOT, executable, params_file
from harness import (NODE, TCP_RPY, TCP_XYZ, Cell, Float64MultiArray, JointTrajectory, NodeProcess,
                     TwistStamped, is_zero_twist, percentile, stamp_s)

RATE_HZ = 30.0  # the tiny policy's control_rate_hz
STALE_S = 0.25  # safety.stale_timeout_s of config/franka.yaml
HOLDS = 3  # safety.hold_repeats
TWIST_TOPIC = "/servo_node/delta_twist_cmds"
CARTESIAN_JOINTS = ["gantry_x", "gantry_y", "gantry_z", "wrist_roll", "wrist_pitch", "wrist_yaw"]


def wait_discovery(cell, topic, timeout=10.0):
    cell.wait_for(lambda: cell.node.count_publishers(topic) >= 1
                  and cell.node.count_subscribers(f"{NODE}/image") >= 1, timeout, f"the node's {topic}")
    time.sleep(0.3)


def start_run(cell, instruction="open the drawer", timeout=10.0):
    """Instruction + enable; returns the receipt time of the first command."""
    t0 = time.monotonic()
    cell.instruction(instruction)
    time.sleep(0.05)
    cell.enable(True)
    cell.wait_for(lambda: cell.commands_since(t0), timeout, "the first command after enable")
    return cell.commands_since(t0)[0][0]


def stop_and_quiet(cell):
    cell.enable(False)
    time.sleep(0.8)
    t = time.monotonic()
    time.sleep(0.3)
    assert not cell.commands_since(t), "the node still publishes after enable:false"


def assert_holds_then_silence(cmds, t0, quiet_after, what):
    """Commands received after `t0`: the last HOLDS are zero twists, and none arrives after
    `quiet_after` (s, monotonic)."""
    assert cmds, f"{what}: no hold published"
    late = [t - t0 for t, _ in cmds if t > quiet_after]
    assert not late, f"{what}: commands {late} s after the event (expected silence)"
    tail = [m for _, m in cmds[-HOLDS:]]
    assert len(tail) == HOLDS and all(is_zero_twist(m) for m in tail), \
        f"{what}: the last {HOLDS} commands must be holds, got {[(m.twist.linear.x, m.twist.linear.y) for m in tail]}"


# ------------------------------------------------------------------------- servo_twist


@pytest.fixture(scope="module")
def servo(tmp_path_factory):
    d = tmp_path_factory.mktemp("servo")
    node = NodeProcess(executable("vw2_policy_node"), params_file(d / "params.yaml"), d / "node.log")
    node.wait_ready()
    cell = Cell(TWIST_TOPIC, TwistStamped)
    wait_discovery(cell, TWIST_TOPIC)
    yield cell, node
    cell.close()
    rc = node.stop()
    assert rc == 0, f"node exit status {rc} after SIGINT:\n{node.text()}"


def test_starts_disabled_and_publishes_nothing(servo):
    cell, _ = servo
    t0 = time.monotonic()
    cell.instruction("open the drawer")
    time.sleep(1.0)
    assert not cell.commands_since(t0), "commands before enable"
    diag = cell.latest_diagnostics(since=t0)
    assert diag is not None, "no /diagnostics"
    assert diag["vw2_policy: node"]["enabled"] == "false"


def test_twists_flow_at_the_control_rate_in_rgb8_and_bgr8(servo):
    cell, _ = servo
    t_first = start_run(cell)
    time.sleep(1.2)
    cell.encoding = "bgr8"
    t_switch = time.monotonic()
    time.sleep(1.2)
    t_end = time.monotonic()
    cmds = cell.commands_since(t_first + 0.3, t_end)
    span = cmds[-1][0] - cmds[0][0]
    rate = (len(cmds) - 1) / span
    assert 0.8 * RATE_HZ <= rate <= 1.2 * RATE_HZ, f"command rate {rate:.1f} Hz, control rate {RATE_HZ}"
    after_switch = cell.commands_since(t_switch + 0.3, t_end)
    assert len(after_switch) >= 0.7 * RATE_HZ * 0.9, f"bgr8 frames: only {len(after_switch)} commands in 0.9 s"
    for t, m in cmds:
        assert m.header.frame_id == "panda_link0"
        # The stamp is the command's time on the ROS clock (the system clock here).
        age = time.time() - stamp_s(m.header.stamp) - (time.monotonic() - t)
        assert -0.05 < age < 0.5, f"twist stamped {age:.3f} s before its receipt"
        for v in (m.twist.linear.x, m.twist.linear.y, m.twist.linear.z):
            assert math.isfinite(v) and abs(v) <= 0.25 + 1e-9, f"linear speed {v} m/s beyond the envelope"
        for v in (m.twist.angular.x, m.twist.angular.y, m.twist.angular.z):
            assert math.isfinite(v)
    stamps = [stamp_s(m.header.stamp) for _, m in cmds]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), "twist stamps must increase"
    assert any(not is_zero_twist(m) for _, m in cmds), "the policy never moved"

    # Image → command latency: for each good frame sent, the first command received after it.
    with cell.lock:
        frames = [t for t in cell.frame_times if t_first + 0.3 <= t <= t_end - 0.2]
    times = [t for t, _ in cmds]
    lat = []
    j = 0
    for tf in frames:
        while j < len(times) and times[j] < tf:
            j += 1
        if j < len(times):
            lat.append(times[j] - tf)
    diag = cell.latest_diagnostics(since=t_switch + 0.3)
    print(f"\n[ros_live] servo_twist: {len(cmds)} twists at {rate:.1f} Hz; image->next command "
          f"p50 {percentile(lat, 50) * 1e3:.1f} ms, p99 {percentile(lat, 99) * 1e3:.1f} ms over {len(lat)} frames")
    assert diag["vw2_policy: watchdog"]["frames_refused"] == "0", diag["vw2_policy: watchdog"]
    assert diag["vw2_policy: watchdog"]["last_input_error"] == "", diag["vw2_policy: watchdog"]


def test_enable_false_holds_then_goes_silent(servo):
    cell, _ = servo
    t0 = time.monotonic()
    cell.enable(False)
    time.sleep(1.0)
    cmds = cell.commands_since(t0)
    assert_holds_then_silence(cmds, t0, t0 + 0.5, "enable:false")
    diag = cell.latest_diagnostics(since=t0 + 0.5)
    lat = diag["vw2_policy: latency"]
    print(f"[ros_live] node's own obs->command p50 {lat.get('last_run.obs_to_command_p50_ms')} ms, "
          f"p99 {lat.get('last_run.obs_to_command_p99_ms')} ms; plan p99 {lat.get('last_run.plan_time_p99_ms')} ms")
    assert "last_run.obs_to_command_p99_ms" in lat, lat


def test_stale_camera_holds_then_silence_and_no_restart_without_enable(servo):
    cell, _ = servo
    start_run(cell)
    time.sleep(0.5)
    cell.camera = False
    t0 = time.monotonic()
    time.sleep(1.2)
    cmds = cell.commands_since(t0)
    # The watchdog: moves may go on only while the last frame is younger than the timeout.
    moves_late = [t - t0 for t, m in cmds if not is_zero_twist(m) and t > t0 + STALE_S + 0.1]
    assert not moves_late, f"moves {moves_late} s after the camera stopped"
    assert_holds_then_silence(cmds, t0, t0 + STALE_S + 0.5, "stale camera")
    diag = cell.latest_diagnostics(since=t0 + 0.8)
    last_end = diag["vw2_policy: node"]["last_end"]
    assert last_end.startswith("camera silent for") and "safety silent" in last_end, last_end
    # The camera comes back: no motion without a new enable.
    cell.camera = True
    t1 = time.monotonic()
    time.sleep(1.5)
    assert not cell.commands_since(t1), "motion restarted without a new enable"
    assert cell.latest_diagnostics(since=t1 + 0.5)["vw2_policy: node"]["enabled"] == "false"
    start_run(cell)
    stop_and_quiet(cell)


def test_estop_latches_until_reset_and_a_new_enable(servo):
    cell, _ = servo
    start_run(cell)
    time.sleep(0.4)
    t0 = time.monotonic()
    cell.estop(True)
    time.sleep(1.0)
    assert_holds_then_silence(cell.commands_since(t0), t0, t0 + 0.5, "estop:true")
    t1 = time.monotonic()
    cell.enable(True)  # refused while the button is pressed
    time.sleep(0.8)
    cell.estop(False)  # releasing the button does not move
    time.sleep(0.8)
    assert not cell.commands_since(t1), "moved while the e-stop was latched or only released"
    diag = cell.latest_diagnostics(since=t1 + 1.2)["vw2_policy: node"]
    assert diag["estop_latched"] == "true" and diag["enabled"] == "false", diag
    start_run(cell)  # a new enable clears the latch
    stop_and_quiet(cell)


@pytest.mark.parametrize("fault", ["encoding", "size"])
def test_malformed_frames_give_an_error_never_a_command(servo, fault):
    cell, _ = servo
    try:
        malformed_frames(cell, fault)
    finally:
        cell.encoding, cell.bad_size = "rgb8", False
    stop_and_quiet(cell)


def malformed_frames(cell, fault):
    if fault == "encoding":
        cell.encoding = "yuv422"
    else:
        cell.bad_size = True
    time.sleep(2 * STALE_S)  # the last good frame is stale
    t0 = time.monotonic()
    cell.instruction("open the drawer")
    cell.enable(True)
    time.sleep(1.5)
    assert not cell.commands_since(t0), f"commands from malformed frames ({fault})"
    wd = cell.latest_diagnostics(since=t0 + 0.8)["vw2_policy: watchdog"]
    assert int(wd["frames_refused"]) > 0, wd
    err = wd["last_input_error"]
    assert err.startswith(f"{NODE}/image") or "image" in err, err
    assert ("yuv422" in err) if fault == "encoding" else re.search(r"\d+ bytes", err), err
    print(f"[ros_live] {fault}: {err}")
    # Mid-run: good frames start the run; malformed ones then hold like a lost camera.
    cell.encoding, cell.bad_size = "rgb8", False
    cell.wait_for(lambda: cell.commands_since(t0), 5.0, "a run on good frames")
    time.sleep(0.4)
    if fault == "encoding":
        cell.encoding = "yuv422"
    else:
        cell.bad_size = True
    t1 = time.monotonic()
    time.sleep(1.2)
    assert_holds_then_silence(cell.commands_since(t1), t1, t1 + STALE_S + 0.5, f"malformed frames ({fault})")


def test_nan_joint_state_is_refused_by_name(servo):
    cell, _ = servo
    start_run(cell)
    cell.nan_joints = True
    t0 = time.monotonic()
    time.sleep(0.8)
    for _, m in cell.commands_since(t0):
        t = m.twist
        assert all(math.isfinite(v) for v in (t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z))
    cell.nan_joints = False
    err = cell.latest_diagnostics(since=t0 + 0.3)["vw2_policy: watchdog"]["last_input_error"]
    assert "/joint_states" in err and "panda_joint2" in err, err
    stop_and_quiet(cell)


def test_imagined_futures_and_diagnostics_are_published(servo):
    cell, _ = servo
    t0 = time.monotonic()
    start_run(cell)
    time.sleep(1.5)
    with cell.lock:
        imagined = [m for t, m in cell.imagined if t >= t0]
    assert imagined, "no ~/imagined image during a run"
    m = imagined[-1]
    assert m.encoding == "rgb8" and m.width > 0 and m.height > 0 and len(m.data) == m.step * m.height
    assert m.step == 3 * m.width
    diag = cell.latest_diagnostics(since=t0 + 1.0)
    assert set(diag) == {"vw2_policy: node", "vw2_policy: watchdog", "vw2_policy: latency"}, set(diag)
    assert diag["vw2_policy: node"]["state"] == "running", diag["vw2_policy: node"]
    assert diag["vw2_policy: watchdog"]["watchdog"] == "moving", diag["vw2_policy: watchdog"]
    assert float(diag["vw2_policy: watchdog"]["camera_rate_hz"]) > 20.0
    stop_and_quiet(cell)


def documented_qos():
    """{topic: (reliability, durability)} from the topic table of docs/ros.md."""
    out = {}
    with open(os.path.join(ROOT, "docs", "ros.md")) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4 and cells[0].startswith("`") and "msg" not in cells[0]:
                qos = cells[3].lower()
                rel = "best_effort" if "best effort" in qos else "reliable" if "reliable" in qos else None
                dur = "transient_local" if "transient local" in qos else "volatile" if "volatile" in qos else None
                if rel:
                    for name in re.findall(r"`([^`]+)`", cells[0]):
                        out[name] = (rel, dur, cells[2])
    return out


def test_qos_matches_the_docs(servo):
    cell, _ = servo
    doc = documented_qos()
    assert len(doc) >= 10, doc
    checked = 0
    for name, (rel, dur, direction) in doc.items():
        topic = name.replace("~", NODE) if name.startswith("~") else name
        if topic.startswith(NODE + "/teleop") or topic in ("/forward_position_controller/commands",
                                                           "/joint_trajectory_controller/joint_trajectory"):
            continue  # not created in servo_twist mode with teleop off
        infos = (cell.node.get_subscriptions_info_by_topic(topic) if direction.startswith("in")
                 else cell.node.get_publishers_info_by_topic(topic))
        mine = [i for i in infos if i.node_name == "vw2_policy_node"]
        assert mine, f"{topic}: the node has no {'subscription' if direction.startswith('in') else 'publisher'}"
        q = mine[0].qos_profile
        assert q.reliability.name.lower() == rel, f"{topic}: {q.reliability.name}, docs say {rel}"
        if dur:
            assert q.durability.name.lower() == dur, f"{topic}: {q.durability.name}, docs say {dur}"
        checked += 1
    assert checked >= 10, checked


# ------------------------------------------------------------------------- joint modes


def joint_params(path, mode):
    return params_file(path, command_mode=mode, joint_names=CARTESIAN_JOINTS,
                       gripper_joint_names=["finger"], max_joint_speed=1.0)


def cartesian_cell(topic, msg_type):
    return Cell(topic, msg_type, joint_names=CARTESIAN_JOINTS + ["finger"],
                joint_positions=[*TCP_XYZ, *TCP_RPY, 0.04])


@pytest.mark.parametrize("mode", ["joint_forward", "joint_trajectory"])
def test_joint_modes_with_the_cartesian_ik(tmp_path, mode):
    topic, msg_type = {
        "joint_forward": ("/forward_position_controller/commands", Float64MultiArray),
        "joint_trajectory": ("/joint_trajectory_controller/joint_trajectory", JointTrajectory),
    }[mode]
    node = NodeProcess(executable("vw2_policy_node_cartesian_ik"), joint_params(tmp_path / "p.yaml", mode),
                       tmp_path / "node.log")
    try:
        node.wait_ready()
        cell = cartesian_cell(topic, msg_type)
        try:
            wait_discovery(cell, topic)
            t_first = start_run(cell)
            time.sleep(1.5)
            cmds = cell.commands_since(t_first + 0.2)
            rate = (len(cmds) - 1) / (cmds[-1][0] - cmds[0][0])
            assert 0.8 * RATE_HZ <= rate <= 1.2 * RATE_HZ, f"{mode}: {rate:.1f} Hz"
            for _, m in cmds:
                if mode == "joint_forward":
                    q = list(m.data)
                    assert m.layout.dim[0].size == 6
                else:
                    assert list(m.joint_names) == CARTESIAN_JOINTS
                    assert len(m.points) == 1
                    p = m.points[0]
                    q = list(p.positions)
                    assert len(p.velocities) == 6
                    assert abs(p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 - 0.1) < 1e-9
                assert len(q) == 6 and all(math.isfinite(v) for v in q)
                # The Cartesian arm's joints are the TCP pose: inside the envelope.
                assert 0.25 <= q[0] <= 0.75 and -0.4 <= q[1] <= 0.4 and 0.02 <= q[2] <= 0.6, q
                assert 2.2 <= q[3] <= 4.1, q
            print(f"\n[ros_live] {mode}: {len(cmds)} commands at {rate:.1f} Hz")
            # A NaN joint state: refused by name; the joints go stale, so the arm holds, then silence.
            cell.nan_joints = True
            t0 = time.monotonic()
            time.sleep(1.2)
            late = [t - t0 for t, _ in cell.commands_since(t0 + STALE_S + 0.5)]
            assert not late, f"{mode}: commands {late} s after the joint states turned NaN"
            err = cell.latest_diagnostics(since=t0 + 0.5)["vw2_policy: watchdog"]["last_input_error"]
            assert "/joint_states" in err and "gantry_y" in err, err
        finally:
            cell.close()
    finally:
        rc = node.stop()
    assert rc == 0, node.text()
