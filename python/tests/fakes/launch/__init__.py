"""Fake `launch`: records what a launch file builds (python/tests/test_launch.py)."""


class LaunchDescription:
    def __init__(self, entities=None):
        self.entities = list(entities or [])


class LaunchContext:
    """Holds evaluated launch configurations, as launch's context does."""

    def __init__(self, launch_configurations=None):
        self.launch_configurations = dict(launch_configurations or {})
