"""Launches vw2_policy_node on a robot arm (see docs/ros.md).

    ros2 launch vw2_policy arm.launch.py policy:=/path/to/policy calibration:=/path/to/cam.yaml
    ros2 launch vw2_policy arm.launch.py robot:=ur policy:=... command_mode:=servo_twist
    ros2 launch vw2_policy arm.launch.py robot:=calvin_sim \\
        policy:=$(ros2 pkg prefix vw2_policy)/share/vw2_policy/policies/tiny-policy

Arguments:
  policy        policy bundle folder (required)
  calibration   camera calibration YAML ("" keeps the params file's)
  command_mode  servo_twist | joint_forward | joint_trajectory ("" keeps the params file's)
  robot         franka | calvin_sim | ur: selects share/vw2_policy/config/<robot>.yaml;
                calvin_sim also starts the simulator bridge
  params_file   parameter file ("" = share/vw2_policy/config/<robot>.yaml)
  instruction   task instruction ("" keeps the params file's)
  use_sim_time  true | false

The node starts disabled: `ros2 topic pub --once /vw2_policy_node/enable std_msgs/msg/Bool "{data: true}"`.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "vw2_policy"
EXECUTABLE = "vw2_policy_node"
NODE_NAME = "vw2_policy_node"
ROBOTS = ("franka", "calvin_sim", "ur")
COMMAND_MODES = ("servo_twist", "joint_forward", "joint_trajectory")


def _arguments():
    return [
        DeclareLaunchArgument("policy", description="Policy bundle folder (with policy.yaml)."),
        DeclareLaunchArgument("calibration", default_value="", description="Camera calibration YAML."),
        DeclareLaunchArgument(
            "command_mode",
            default_value="",
            description="servo_twist | joint_forward | joint_trajectory ('' = from the params file).",
        ),
        DeclareLaunchArgument("robot", default_value="franka", choices=list(ROBOTS), description="Robot preset."),
        DeclareLaunchArgument(
            "params_file", default_value="", description="Parameter file ('' = config/<robot>.yaml)."
        ),
        DeclareLaunchArgument("instruction", default_value="", description="Task instruction."),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", choices=["true", "false"], description="Use /clock."
        ),
    ]


def launch_setup(context, *args, **kwargs):
    """Builds the nodes from the evaluated launch arguments."""

    def arg(name):
        return LaunchConfiguration(name).perform(context).strip()

    robot = arg("robot")
    if robot not in ROBOTS:
        raise RuntimeError(f"robot:={robot!r}: expected one of {', '.join(ROBOTS)}")
    policy = arg("policy")
    if not policy:
        raise RuntimeError("policy:= is required (a policy bundle folder with policy.yaml)")
    command_mode = arg("command_mode")
    if command_mode and command_mode not in COMMAND_MODES:
        raise RuntimeError(f"command_mode:={command_mode!r}: expected one of {', '.join(COMMAND_MODES)}")
    use_sim_time = arg("use_sim_time").lower() == "true"

    share = get_package_share_directory(PACKAGE)
    params_file = arg("params_file") or os.path.join(share, "config", f"{robot}.yaml")
    # Launch arguments override the file; empty ones leave the file's value.
    overrides = {"policy": policy, "use_sim_time": use_sim_time}
    for name, value in (("calibration", arg("calibration")), ("command_mode", command_mode), ("instruction", arg("instruction"))):
        if value:
            overrides[name] = value

    nodes = [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            output="screen",
            emulate_tty=True,
            parameters=[params_file, overrides],
        )
    ]
    if robot == "calvin_sim":
        # The built-in simulator behind a small rclpy bridge (python/vw2_ros/calvin_sim_bridge.py).
        nodes.append(
            Node(
                package=PACKAGE,
                executable="calvin_sim_bridge",
                name="calvin_sim_bridge",
                output="screen",
                parameters=[{"use_sim_time": use_sim_time, "rate_hz": 30.0, "seed": 0}],
            )
        )
    return nodes


def generate_launch_description():
    return LaunchDescription(_arguments() + [OpaqueFunction(function=launch_setup)])
