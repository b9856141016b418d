"""Backend `playtable`: the built-in CALVIN-like PlayTable (python/vw2_sim), with its
task oracle and scripted expert (served through the `expert_action` op)."""

import sys

# Where CALVIN's scene D keeps blocks in the sliding cabinet (world frame, m): the
# official evaluation states put slot blocks there. PlayTable's cabinet is its own
# design, so reset moves such blocks into the matching PlayTable slot.
CALVIN_SLOTS = {"slider_left": (-0.241, 0.092), "slider_right": (0.07, 0.092)}
CALVIN_SLOT_Z = 0.461


def adapt_calvin_scene_obs(scene_obs):
    """Maps a CALVIN scene D `scene_obs` onto PlayTable's geometry, keeping its meaning.

    Blocks in a CALVIN slider slot go to the same PlayTable slot, blocks on the table
    keep x, y and yaw with z on PlayTable's desk, and joint values are clipped to
    PlayTable's ranges. Vectors already in PlayTable's geometry pass unchanged."""
    import numpy as np
    from vw2_sim import scene as S

    so = np.asarray(scene_obs, dtype=float).copy()
    so[0] = np.clip(so[0], *S.SLIDER_RANGE)
    so[1] = np.clip(so[1], *S.DRAWER_RANGE)
    so[3] = np.clip(so[3], *S.SWITCH_RANGE)
    for i, color in enumerate(S.BLOCKS):
        p = so[6 + 6 * i: 9 + 6 * i]
        h = S.BLOCK_SIZE[color][2]
        for slot, (x, y) in CALVIN_SLOTS.items():
            if abs(p[0] - x) < 0.05 and abs(p[1] - y) < 0.03 and abs(p[2] - CALVIN_SLOT_Z) < 0.03:
                p[0], p[1], p[2] = S.SLOT_X[slot], S.SLOT_Y, S.PLANK_TOP + h / 2
                break
        else:
            if abs(p[2] - CALVIN_SLOT_Z) < 0.03 and S.DESK_Y[0] < p[1] < S.DESK_Y[1]:
                p[2] = S.TABLE_Z + h / 2
    return so


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
        if scene_obs is not None:
            scene_obs = adapt_calvin_scene_obs(scene_obs)
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

    def sample_task(self, seed, tasks):
        """A task and an initial state (neutral robot) in which it is feasible, drawn from `seed`.

        With no `tasks`, any task that can start from a reset (every task but place_in_*,
        which start from a held block) is drawn."""
        import numpy as np
        from vw2_sim.conditions import robot_obs_neutral, scene_obs_for_condition
        from vw2_sim.expert_eval import condition_for_task
        from vw2_sim.tasks import TASK_NAMES, VALIDATION_SENTENCES

        candidates = list(tasks) or [t for t in TASK_NAMES if not t.startswith("place_in_")]
        unknown = [t for t in candidates if t not in VALIDATION_SENTENCES]
        if unknown:
            raise ValueError(f"tasks: unknown task names {unknown}")
        rng = np.random.default_rng(seed)
        task = candidates[int(rng.integers(len(candidates)))]
        cond = condition_for_task(task, rng)
        return {
            "task": task,
            "instruction": VALIDATION_SENTENCES[task],
            "condition": cond,
            "robot_obs": [float(v) for v in robot_obs_neutral()],
            "scene_obs": [float(v) for v in scene_obs_for_condition(cond, rng)],
        }

    def close(self):
        self.env.close()


def make(args):
    from vw2_sim.tasks import TASK_NAMES

    print(f"playtable backend: seed {args.seed}", file=sys.stderr)
    return PlayTableBackend(seed=args.seed), list(TASK_NAMES)
