"""Measure the scripted expert's per-task success rate.

    cd python && ../.venv/bin/python -m vw2_sim.expert_eval --episodes-per-task 10 --seed 0 \
        --out /tmp/expert.json [--tasks open_drawer,turn_on_led] [--render]

Each episode: a random CALVIN-style condition in which the task is feasible
(``condition_for_task``), reset to the neutral robot pose, run the expert for at most
``--max-steps`` (360) steps and check the task with the oracle after every step.
place_in_slider / place_in_drawer start after a scripted lift of a table block (the start
info is taken once the block is held, like a CALVIN chain lift -> place).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .conditions import robot_obs_neutral, sample_condition, scene_obs_for_condition
from .expert import ScriptedExpert
from .playtable import PlayTableEnv
from .tasks import (COLORS, TASK_NAMES, TASK_SPECS, condition_from_info, feasible,
                    is_grasped)

SLOTS = ("slider_left", "slider_right")


def condition_for_task(task: str, rng) -> dict:
    """A random condition (CALVIN-like) adjusted so that ``task`` is feasible."""
    cond = sample_condition(rng)
    spec = TASK_SPECS[task]
    kind = spec[0]

    def put(color, loc):
        # keep at most one block per slot
        if loc in SLOTS:
            for c in COLORS:
                if c != color and cond[f"{c}_block"] == loc:
                    cond[f"{c}_block"] = "table"
        cond[f"{color}_block"] = loc

    if kind in ("rotate", "push"):
        put(spec[1], "table")
    elif kind == "lift":
        c, surf = spec[1], spec[2][1]
        if surf == "base_link":
            put(c, "table")
        elif surf == "drawer_link":
            cond["drawer"] = "open"
            put(c, "drawer")
        else:
            slot = str(rng.choice(SLOTS))
            put(c, slot)
            cond["slider"] = "right" if slot == "slider_left" else "left"
    elif kind == "door":
        if spec[1] == "slider":
            cond["slider"] = "right" if spec[2] > 0 else "left"
        else:
            cond["drawer"] = "closed" if spec[2] > 0 else "open"
    elif kind == "light":
        cond[spec[1]] = spec[2]
    elif kind == "place":
        if spec[1][1] == "drawer_link":
            cond["drawer"] = "open"
        else:
            free = "slider_right" if cond["slider"] == "left" else "slider_left"
            for c in COLORS:
                if cond[f"{c}_block"] == free:
                    cond[f"{c}_block"] = "table"
        if not any(cond[f"{c}_block"] == "table" for c in COLORS):
            put(str(rng.choice(COLORS)), "table")
    elif kind == "push_into":
        cond["drawer"] = "open"
        if not any(cond[f"{c}_block"] == "table" for c in COLORS):
            put(str(rng.choice(COLORS)), "table")
    elif kind == "stack":
        if spec[1]:
            on = [c for c in COLORS if cond[f"{c}_block"] == "table"]
            for c in COLORS:
                if len(on) >= 2:
                    break
                if c not in on:
                    put(c, "table")
                    on.append(c)
        else:
            a, b = [str(x) for x in rng.choice(COLORS, size=2, replace=False)]
            put(b, "table")
            put(a, f"on_{b}")
    assert feasible(task, cond), (task, cond)
    return cond


def run_episode(env, expert, task, cond, rng, max_steps=360, trace=False):
    """Returns (success, steps, info_dict)."""
    env.reset(robot_obs_neutral(), scene_obs_for_condition(cond, rng))
    extra = {}
    if TASK_SPECS[task][0] == "place":
        on_table = [c for c in COLORS if cond[f"{c}_block"] == "table"]
        color = on_table[int(rng.integers(len(on_table)))]
        lift = f"lift_{color}_block_table"
        expert.reset(lift)
        start = env.get_info()
        for t in range(200):
            env.step(expert.act())
            if expert.done or lift in env.task_success(start, [lift]):
                # let the lift finish so the block is well clear of the table
                if expert.done:
                    break
        extra["pre_lift_ok"] = is_grasped(env.get_info(), color)
        extra["held"] = color
    start = env.get_info()
    expert.reset(task, start)
    for t in range(max_steps):
        a = expert.act()
        env.step(a)
        if trace:
            wp = expert.plan[expert.i].name if not expert.done else "done"
            print(t, wp, np.round(a, 2), np.round(env.get_info()["tcp_pos"], 3))
        if env.task_success(start, [task]):
            return True, t + 1, extra
    return False, max_steps, extra


def _can_follow_lift(task, cond, done):
    """After lifting, some place_in_* / stack_block must be possible (else the chain stalls)."""
    after = {**cond, f"{TASK_SPECS[task][1]}_block": "grasped", "grasped": 1}
    return any(t not in done and feasible(t, after)
               for t in ("place_in_slider", "place_in_drawer", "stack_block"))


def run_chain(env, expert, rng, length=5, max_steps=360):
    """CALVIN-style chain: a random initial condition, then ``length`` subtasks, each
    drawn at random among the tasks feasible in the *current* state (no repeats; place_in_*
    only while a block is held), run without resets; after a success the expert finishes
    its plan (release / retreat) before the next subtask.  Returns the list of
    (task, success, steps) until the first failure."""
    cond = sample_condition(rng)
    env.reset(robot_obs_neutral(), scene_obs_for_condition(cond, rng))
    done, out = set(), []
    for _ in range(length):
        info = env.get_info()
        cur = condition_from_info(info)
        cands = [t for t in TASK_NAMES if t not in done and feasible(t, cur)
                 and (TASK_SPECS[t][0] != "place" or cur["grasped"])
                 and (TASK_SPECS[t][0] != "lift" or _can_follow_lift(t, cur, done))]
        if not cands:
            break
        task = cands[int(rng.integers(len(cands)))]
        done.add(task)
        expert.reset(task, info)
        ok = False
        for t in range(max_steps):
            env.step(expert.act())
            if env.task_success(info, [task]):
                ok = True
                break
        out.append((task, ok, t + 1))
        # unlike a policy under CALVIN's protocol, the expert finishes its motion (release,
        # retreat) before the next subtask starts; this is not counted in the steps
        for _ in range(80):
            if expert.done:
                break
            env.step(expert.act())
        if not ok:
            break
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes-per-task", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=360)
    ap.add_argument("--tasks", default="", help="comma-separated subset (default: all 34)")
    ap.add_argument("--render", action="store_true", help="render cameras (slower)")
    ap.add_argument("--out", default="")
    ap.add_argument("--chains", type=int, default=0,
                    help="instead of per-task episodes, run this many CALVIN-style 5-task chains")
    args = ap.parse_args(argv)
    if args.chains:
        return main_chains(args)
    tasks = [t for t in args.tasks.split(",") if t] or TASK_NAMES
    env = PlayTableEnv(seed=args.seed, render=args.render)
    expert = ScriptedExpert(env)
    results = {}
    t0 = time.time()
    for ti, task in enumerate(tasks):
        rng = np.random.default_rng([args.seed, TASK_NAMES.index(task)])
        succ, lens = 0, []
        for ep in range(args.episodes_per_task):
            cond = condition_for_task(task, rng)
            ok, n, _ = run_episode(env, expert, task, cond, rng, args.max_steps)
            succ += ok
            if ok:
                lens.append(n)
        rate = succ / args.episodes_per_task
        results[task] = {"success": succ, "episodes": args.episodes_per_task, "rate": rate,
                         "mean_steps_success": float(np.mean(lens)) if lens else None}
        print(f"{task:28s} {succ:3d}/{args.episodes_per_task:<3d} {rate:5.0%}"
              f"  mean steps {results[task]['mean_steps_success'] or float('nan'):.0f}", flush=True)
    n80 = sum(r["rate"] >= 0.8 for r in results.values())
    total = sum(r["success"] for r in results.values()) / max(1, sum(r["episodes"] for r in results.values()))
    print(f"tasks >= 80%: {n80}/{len(results)}   overall success {total:.1%}   "
          f"({time.time() - t0:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"seed": args.seed, "episodes_per_task": args.episodes_per_task,
                       "max_steps": args.max_steps, "tasks": results,
                       "tasks_at_least_80pct": n80, "overall": total}, f, indent=1)
    env.close()
    return 0


def main_chains(args):
    env = PlayTableEnv(seed=args.seed, render=args.render)
    expert = ScriptedExpert(env)
    rng = np.random.default_rng([args.seed, 1000])
    lens, fails = [], {}
    t0 = time.time()
    for i in range(args.chains):
        res = run_chain(env, expert, rng, 5, args.max_steps)
        n = sum(1 for _, ok, _ in res if ok)
        lens.append(n)
        if res and not res[-1][1]:
            fails[res[-1][0]] = fails.get(res[-1][0], 0) + 1
        print(f"chain {i:3d}: {n}/5  " + " -> ".join(f"{t}{'' if ok else ' (FAIL)'}" for t, ok, _ in res),
              flush=True)
    lens = np.array(lens)
    rates = [float((lens >= k).mean()) for k in range(1, 6)]
    print("success rate for k tasks in a row: " + "  ".join(f"{k}: {r:.0%}" for k, r in enumerate(rates, 1))
          + f"   avg len {lens.mean():.2f}   ({time.time() - t0:.0f} s)")
    print("failures by task:", dict(sorted(fails.items(), key=lambda kv: -kv[1])))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"seed": args.seed, "chains": args.chains, "rates": rates,
                       "avg_len": float(lens.mean()), "failures": fails}, f, indent=1)
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
