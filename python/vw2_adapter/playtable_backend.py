"""Backend `playtable`: the built-in CALVIN-like PlayTable (python/vw2_sim), with its
task oracle and scripted expert (served through the `expert_action` op)."""

import sys


class PlayTableBackend:
    """Adapts vw2_sim.PlayTableEnv to the adapter's env interface and adds the expert."""

    def __init__(self, seed=0, render=True):
        from vw2_sim.expert import ScriptedExpert
        from vw2_sim.playtable import PlayTableEnv

        self.env = PlayTableEnv(seed=seed, render=render)
        self.expert = ScriptedExpert(self.env)
        self.expert_task = None

    def reset(self, robot_obs=None, scene_obs=None):
        self.expert_task = None
        return self.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)

    def step(self, action, relative=True):
        return self.env.step(action, relative=relative)

    def get_info(self):
        return self.env.get_info()

    def task_success(self, start_info, tasks):
        return self.env.task_success(start_info, tasks)

    def expert_action(self, task):
        """The scripted expert's next relative action for `task`; it plans when the task changes."""
        info = self.env.get_info()
        if task != self.expert_task:
            self.expert.reset(task, info)
            self.expert_task = task
        return self.expert.act(info)

    def close(self):
        self.env.close()


def make(args):
    from vw2_sim.tasks import TASK_NAMES

    print(f"playtable backend: seed {args.seed}", file=sys.stderr)
    return PlayTableBackend(seed=args.seed), list(TASK_NAMES)
