"""Env throughput, single process.

    cd python && ../.venv/bin/python -m vw2_sim.bench [--steps 300] [--robot-meshes visual]

Runs the scripted expert on a few tasks (so the arm moves and touches things) and
reports env.step() calls per second with both cameras rendered and with render=False.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .conditions import robot_obs_neutral, scene_obs_for_condition
from .expert import ScriptedExpert
from .playtable import PlayTableEnv

TASKS = ("open_drawer", "lift_red_block_table", "turn_on_led", "move_slider_left")


def measure(render: bool, steps: int, seed: int = 0, robot_meshes: str = "collision") -> dict:
    env = PlayTableEnv(seed=seed, render=render, robot_meshes=robot_meshes)
    expert = ScriptedExpert(env)
    rng = np.random.default_rng(seed)
    cond = {"drawer": "closed", "slider": "right", "led": 0, "red_block": "table"}
    n, t_step, t_expert = 0, 0.0, 0.0
    while n < steps:
        for task in TASKS:
            env.reset(robot_obs_neutral(), scene_obs_for_condition(cond, rng))
            expert.reset(task)
            for _ in range(steps // (2 * len(TASKS)) + 1):
                t0 = time.perf_counter()
                a = expert.act()
                t1 = time.perf_counter()
                env.step(a)
                t2 = time.perf_counter()
                t_expert += t1 - t0
                t_step += t2 - t1
                n += 1
    env.close()
    return {"render": render, "steps": n, "env_steps_per_s": n / t_step,
            "with_expert_steps_per_s": n / (t_step + t_expert)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--robot-meshes", default="collision", choices=["collision", "visual"])
    args = ap.parse_args(argv)
    for render in (True, False):
        r = measure(render, args.steps, robot_meshes=args.robot_meshes)
        print(f"robot_meshes={args.robot_meshes}  render={str(render):5s}  steps={r['steps']:4d}  env.step: {r['env_steps_per_s']:7.1f} /s"
              f"   env.step + expert.act (incl. get_info): {r['with_expert_steps_per_s']:7.1f} /s")


if __name__ == "__main__":
    main()
