"""Fake `launch_ros`."""
