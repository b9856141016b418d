"""Fake `launch_ros.actions`: a Node that records its arguments."""


class Node:
    def __init__(self, *, executable, package=None, name=None, namespace=None, parameters=None,
                 remappings=None, arguments=None, output=None, emulate_tty=False, condition=None, **kwargs):
        self.executable = executable
        self.package = package
        self.name = name
        self.namespace = namespace
        self.parameters = list(parameters or [])
        self.remappings = list(remappings or [])
        self.arguments = list(arguments or [])
        self.output = output
        self.emulate_tty = emulate_tty
        self.condition = condition
        self.kwargs = kwargs
