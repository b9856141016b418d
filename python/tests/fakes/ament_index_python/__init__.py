"""Fake `ament_index_python`."""
