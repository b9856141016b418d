#!/usr/bin/env python3
"""calvin_sim bridge: the built-in simulator (PlayTable, python/vw2_sim) as a ROS 2 robot.

Started by `ros2 launch vw2_policy arm.launch.py robot:=calvin_sim policy:=...`. At `rate_hz`
it steps the simulator with the newest commanded twist and publishes what a real arm
would (topics as in config/calvin_sim.yaml):

  out  /calvin_sim/rgb_static    sensor_msgs/Image (rgb8, 200x200, static camera)
  out  /calvin_sim/joint_states  sensor_msgs/JointState (panda_joint1..7 rad, gripper_width m)
  out  /calvin_sim/tcp_pose      geometry_msgs/PoseStamped (TCP in `world`)
  in   /calvin_sim/twist_cmd     geometry_msgs/TwistStamped (m/s, rad/s, world frame)
  in   /calvin_sim/gripper_cmd   std_msgs/Float64 (> 0 open, <= 0 close)

The twist is integrated over one step and turned into a CALVIN relative action
(x, y, z in units of 0.02 m; Euler angles in units of 0.05 rad, clipped to [-1, 1]).
A twist older than 0.2 s counts as zero (the arm stops).

Needs rclpy (sourced ROS 2) plus the simulator's Python packages (numpy, pybullet:
`pip install -r python/requirements.txt` into the Python that runs ROS, or a venv made
with --system-site-packages). Not run in CI (no ROS there).
"""

import math
import os
import sys


def _add_package_python_path():
    """Makes vw2_adapter / vw2_sim importable: installed share/vw2_policy/python, or the source tree."""
    here = os.path.dirname(os.path.realpath(__file__))
    for candidate in (
        os.path.join(here, "..", "..", "share", "vw2_policy", "python"),  # <prefix>/lib/vw2_policy/..
        os.path.join(here, ".."),  # python/vw2_ros/.. in the source tree
    ):
        if os.path.isdir(os.path.join(candidate, "vw2_sim")):
            sys.path.insert(0, os.path.abspath(candidate))
            return


CALVIN_XYZ_M = 0.02
CALVIN_EULER_RAD = 0.05
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]


def quaternion_from_euler(roll, pitch, yaw):
    """(x, y, z, w) of R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return (
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
        cr * cp * cy + sr * sp * sy,
    )


def euler_rates(euler, omega):
    """Euler-angle rates of the angular velocity `omega` (base frame) at `euler` (inverse of the node's map)."""
    import numpy as np

    _, theta, psi = euler
    m = np.array(
        [
            [math.cos(psi) * math.cos(theta), -math.sin(psi), 0.0],
            [math.sin(psi) * math.cos(theta), math.cos(psi), 0.0],
            [-math.sin(theta), 0.0, 1.0],
        ]
    )
    return np.linalg.solve(m, np.asarray(omega, dtype=float))


def relative_action(linear, angular, euler, gripper, dt):
    """One CALVIN relative action from a twist held for `dt` s."""
    rates = euler_rates(euler, angular)
    a = [max(-1.0, min(1.0, v * dt / CALVIN_XYZ_M)) for v in linear]
    a += [max(-1.0, min(1.0, r * dt / CALVIN_EULER_RAD)) for r in rates]
    a.append(1.0 if gripper > 0 else -1.0)
    return a


def main():
    _add_package_python_path()
    import rclpy
    from geometry_msgs.msg import PoseStamped, TwistStamped
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64

    from vw2_adapter.playtable_backend import PlayTableBackend

    class Bridge(Node):
        def __init__(self):
            super().__init__("calvin_sim_bridge")
            self.rate = float(self.declare_parameter("rate_hz", 30.0).value)
            seed = int(self.declare_parameter("seed", 0).value)
            self.env = PlayTableBackend(seed=seed)
            self.obs = self.env.reset()
            self.twist = None  # (receipt time s, linear, angular)
            self.gripper = 1.0
            self.pub_img = self.create_publisher(Image, "/calvin_sim/rgb_static", qos_profile_sensor_data)
            self.pub_js = self.create_publisher(JointState, "/calvin_sim/joint_states", qos_profile_sensor_data)
            self.pub_tcp = self.create_publisher(PoseStamped, "/calvin_sim/tcp_pose", qos_profile_sensor_data)
            self.create_subscription(TwistStamped, "/calvin_sim/twist_cmd", self.on_twist, 10)
            self.create_subscription(Float64, "/calvin_sim/gripper_cmd", self.on_gripper, 10)
            self.create_timer(1.0 / self.rate, self.step)
            self.get_logger().info(f"calvin_sim bridge at {self.rate} Hz (seed {seed})")

        def now_s(self):
            return self.get_clock().now().nanoseconds * 1e-9

        def on_twist(self, m):
            t = m.twist
            self.twist = (self.now_s(), (t.linear.x, t.linear.y, t.linear.z), (t.angular.x, t.angular.y, t.angular.z))

        def on_gripper(self, m):
            self.gripper = m.data

        def step(self):
            ro = [float(v) for v in self.obs["robot_obs"]]
            lin, ang = (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
            if self.twist is not None and self.now_s() - self.twist[0] < 0.2:
                lin, ang = self.twist[1], self.twist[2]
            action = relative_action(lin, ang, ro[3:6], self.gripper, 1.0 / self.rate)
            self.obs = self.env.step(action, relative=True)
            self.publish(self.obs)

        def publish(self, obs):
            stamp = self.get_clock().now().to_msg()
            rgb = obs["rgb_static"]
            img = Image()
            img.header.stamp = stamp
            img.header.frame_id = "calvin_static_camera"
            img.height, img.width = int(rgb.shape[0]), int(rgb.shape[1])
            img.encoding = "rgb8"
            img.step = img.width * 3
            img.data = rgb.tobytes()
            self.pub_img.publish(img)
            ro = [float(v) for v in obs["robot_obs"]]
            js = JointState()
            js.header.stamp = stamp
            js.name = JOINTS + ["gripper_width"]
            js.position = ro[7:14] + [ro[6]]
            self.pub_js.publish(js)
            pose = PoseStamped()
            pose.header.stamp = stamp
            pose.header.frame_id = "world"
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = ro[0:3]
            q = quaternion_from_euler(*ro[3:6])
            o = pose.pose.orientation
            o.x, o.y, o.z, o.w = q
            self.pub_tcp.publish(pose)

    rclpy.init(args=sys.argv)
    node = Bridge()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.env.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
