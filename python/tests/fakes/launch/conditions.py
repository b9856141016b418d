"""Fake `launch.conditions`."""


class IfCondition:
    def __init__(self, predicate):
        self.predicate = predicate


class UnlessCondition(IfCondition):
    pass
