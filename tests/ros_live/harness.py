"""A fake robot cell for vw2_policy_node on a real ROS 2 graph (rclpy).

`Cell` publishes what a robot and its camera publish (camera frames, joint states, the
measured TCP pose) at 30 Hz from a timer, sends operator inputs (instruction, enable,
e-stop), and records everything the node publishes with its receipt time.
"""

import math
import os
import signal
import subprocess
import sys
import threading
import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
from vw2_ros.calvin_sim_bridge import quaternion_from_euler  # noqa: E402  (the bridge's convention)

NODE = "/vw2_policy_node"
PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]
# The measured TCP (m, rad): inside the Franka envelope of config/franka.yaml.
TCP_XYZ = (0.5, 0.0, 0.3)
TCP_RPY = (2.84, 0.0, 0.0)


def stamp_now(clock):
    return clock.now().to_msg()


def stamp_s(stamp):
    return stamp.sec + stamp.nanosec * 1e-9


class Cell:
    """The node's surroundings. All lists hold (receipt time (s, time.monotonic), msg)."""

    def __init__(self, arm_topic, arm_type, joint_names=None, joint_positions=None, base_frame="panda_link0"):
        self.node = rclpy.create_node("vw2_test_cell")
        self.base_frame = base_frame
        self.joint_names = joint_names or PANDA_JOINTS + FINGERS
        self.joint_positions = joint_positions or [0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.8, 0.02, 0.02]
        self.lock = threading.Lock()
        # What the cell publishes each tick.
        self.camera = True
        self.encoding = "rgb8"
        self.bad_size = False
        self.nan_joints = False
        self.frame_times = []  # time.monotonic() of every good frame sent
        self.tick = 0
        n = self.node
        self.pub_image = n.create_publisher(Image, f"{NODE}/image", qos_profile_sensor_data)
        self.pub_joints = n.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.pub_tcp = n.create_publisher(PoseStamped, f"{NODE}/tcp_pose", qos_profile_sensor_data)
        reliable = QoSProfile(depth=10)
        self.pub_instruction = n.create_publisher(String, f"{NODE}/instruction", reliable)
        self.pub_enable = n.create_publisher(Bool, f"{NODE}/enable", reliable)
        self.pub_estop = n.create_publisher(Bool, f"{NODE}/estop", reliable)
        self.commands, self.imagined, self.diagnostics, self.gripper = [], [], [], []
        self.arm_topic = arm_topic
        n.create_subscription(arm_type, arm_topic, self._rec(self.commands), reliable)
        n.create_subscription(Image, f"{NODE}/imagined", self._rec(self.imagined), reliable)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._rec(self.diagnostics), reliable)
        n.create_subscription(Float64, f"{NODE}/gripper_cmd", self._rec(self.gripper), reliable)
        n.create_timer(1.0 / 30.0, self._publish_inputs)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        self._stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _rec(self, into):
        def cb(msg):
            with self.lock:
                into.append((time.monotonic(), msg))

        return cb

    def _spin(self):
        while not self._stop:
            self.executor.spin_once(timeout_sec=0.01)

    def close(self):
        self._stop = True
        self.thread.join()
        self.executor.shutdown()
        self.node.destroy_node()

    # ---------------------------------------------------------------- inputs

    def _publish_inputs(self):
        self.tick += 1
        stamp = stamp_now(self.node.get_clock())
        if self.camera:
            self.pub_image.publish(self._image(stamp))
        js = JointState()
        js.header.stamp = stamp
        js.name = list(self.joint_names)
        pos = list(self.joint_positions)
        if self.nan_joints:
            pos[1] = float("nan")
        js.position = pos
        self.pub_joints.publish(js)
        ps = PoseStamped()
        ps.header.stamp = stamp
        ps.header.frame_id = self.base_frame
        ps.pose.position.x, ps.pose.position.y, ps.pose.position.z = TCP_XYZ
        q = quaternion_from_euler(*TCP_RPY)
        ps.pose.orientation.x, ps.pose.orientation.y, ps.pose.orientation.z, ps.pose.orientation.w = q
        self.pub_tcp.publish(ps)

    def _image(self, stamp):
        w, h = 64, 48
        m = Image()
        m.header.stamp = stamp
        m.header.frame_id = "camera"
        m.height, m.width = h, w
        m.encoding = self.encoding
        m.step = w * 3
        # A moving bar, so consecutive frames differ.
        row = bytearray(w * 3)
        x = (self.tick * 2) % w
        row[x * 3 : x * 3 + 6] = b"\xff\x40\x10\xff\x40\x10"[: max(0, min(6, (w - x) * 3))]
        data = bytes(row) * h
        if self.bad_size:
            data = data[: len(data) // 2]
        m.data = data
        if self.encoding in ("rgb8", "bgr8") and not self.bad_size:
            with self.lock:
                self.frame_times.append(time.monotonic())
        return m

    def send(self, pub, msg_type, value):
        m = msg_type()
        m.data = value
        pub.publish(m)

    def instruction(self, text):
        self.send(self.pub_instruction, String, text)

    def enable(self, on):
        self.send(self.pub_enable, Bool, on)

    def estop(self, on):
        self.send(self.pub_estop, Bool, on)

    # ---------------------------------------------------------------- outputs

    def commands_since(self, t0, t1=None):
        with self.lock:
            return [(t, m) for t, m in self.commands if t >= t0 and (t1 is None or t < t1)]

    def wait_for(self, pred, timeout, what):
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if pred():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def latest_diagnostics(self, since=0.0):
        """{status name: {key: value}} of the newest DiagnosticArray received after `since`."""
        with self.lock:
            arrays = [m for t, m in self.diagnostics if t >= since]
        if not arrays:
            return None
        return {s.name: {kv.key: kv.value for kv in s.values} | {"_message": s.message, "_level": s.level}
                for s in arrays[-1].status}


def is_zero_twist(m):
    t = m.twist
    return all(v == 0.0 for v in (t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z))


class NodeProcess:
    """A node binary started with `--ros-args` + `ros_args` (a parameter file's path alone
    means `--params-file` it), its output kept in a file."""

    def __init__(self, exe, ros_args, log_path):
        if not isinstance(ros_args, (list, tuple)):
            ros_args = ["--params-file", str(ros_args)]
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([exe, "--ros-args", *ros_args],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=os.environ | {"RUST_LOG": "info"})

    def text(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def wait_ready(self, timeout=60.0):
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if "vw2_policy_node ready" in self.text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"node not ready after {timeout} s:\n{self.text()}")

    def stop(self, timeout=10.0):
        """SIGINT (the node holds first, then exits 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"node ignored SIGINT for {timeout} s:\n{self.text()}")
        self.log.close()
        return self.proc.returncode


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(q / 100.0 * (len(xs) - 1)))))
    return xs[k]


__all__ = [
    "Cell", "NodeProcess", "is_zero_twist", "percentile", "quaternion_from_euler", "stamp_s",
    "Float64MultiArray", "JointTrajectory", "TwistStamped", "Time", "NODE", "TCP_XYZ", "TCP_RPY",
]
