"""Fake `launch.actions`."""


class DeclareLaunchArgument:
    def __init__(self, name, *, default_value=None, description="", choices=None, **kwargs):
        self.name = name
        self.default_value = default_value
        self.description = description
        self.choices = choices
        self.kwargs = kwargs


class OpaqueFunction:
    def __init__(self, *, function, args=None, kwargs=None):
        self.function = function
        self.args = args or []
        self.kwargs = kwargs or {}

    def execute(self, context):
        return self.function(context, *self.args, **self.kwargs)
