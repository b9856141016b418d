from functools import partial


class Tasks:
    def __init__(self, tasks):
        # As the real one: every task names a function of this class.
        self.tasks = {name: partial(getattr(self, args[0]), *args[1:]) for name, args in dict(tasks).items()}

    def get_task_info_for_set(self, start_info, end_info, task_filter):
        assert isinstance(task_filter, set)
        return {n for n, f in self.tasks.items() if n in task_filter and f(start_info=start_info, end_info=end_info)}

    @staticmethod
    def move_door_rel(joint_name, threshold, start_info, end_info):
        start = start_info["scene_info"]["doors"][joint_name]["current_state"]
        end = end_info["scene_info"]["doors"][joint_name]["current_state"]
        return bool(0 < threshold < end - start or 0 > threshold > end - start)

    @staticmethod
    def _never(*args, start_info=None, end_info=None, **kwargs):
        return False

    rotate_object = push_object = lift_object = place_object = push_object_into = _never
    toggle_light = stack_objects = unstack_objects = _never
