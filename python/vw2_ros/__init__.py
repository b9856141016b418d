"""ROS 2 helpers of vw2_policy (the calvin_sim bridge). Needs rclpy (a sourced ROS 2)."""
