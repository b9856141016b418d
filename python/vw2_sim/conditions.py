"""CALVIN-style initial conditions -> concrete robot_obs / scene_obs vectors.

A condition is a dict like CALVIN's evaluation ``initial_condition``::

    {"led": 0|1, "lightbulb": 0|1, "slider": "left"|"right", "drawer": "open"|"closed",
     "red_block": LOC, "blue_block": LOC, "pink_block": LOC, "grasped": 0}

with LOC in {"table", "slider_left", "slider_right"} (CALVIN) plus two extensions used
to make every task startable from a reset: "drawer" (lying in the drawer) and
"on_red" / "on_blue" / "on_pink" (stacked on that block, which must be on the table).
"""

from __future__ import annotations

import math

import numpy as np

from . import scene as S

# TCP pose of the neutral joint configuration with this scene's robot base
# (forward kinematics of pybullet_data's panda, link panda_grasptarget).
_NEUTRAL_TCP = (0.024012519046664238, -0.23220057785511017, 0.6062202453613281,
                3.0904541144129642, -0.029085960666757865, 1.5001357080720992)

LOCATIONS = ("table", "slider_left", "slider_right", "drawer", "on_red", "on_blue", "on_pink")

DEFAULT_CONDITION = {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed",
                     "red_block": "table", "blue_block": "table", "pink_block": "slider_left",
                     "grasped": 0}


def robot_obs_neutral() -> np.ndarray:
    """robot_obs of the neutral pose, gripper open (width 0.08, last action +1)."""
    return np.array([*_NEUTRAL_TCP, 0.08, *S.NEUTRAL_JOINTS, 1.0], dtype=np.float64)


def default_scene_obs() -> np.ndarray:
    return scene_obs_for_condition(DEFAULT_CONDITION, np.random.default_rng(0))


def _yaw(rng):
    return math.pi / 2 + rng.uniform(-math.pi / 8, math.pi / 8)


def scene_obs_for_condition(cond: dict, rng=None) -> np.ndarray:
    """A valid scene_obs for a CALVIN-style condition (random block placement from ``rng``)."""
    if rng is None:
        rng = np.random.default_rng()
    elif isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(int(rng))
    cond = {**DEFAULT_CONDITION, **cond}
    slider = {"left": S.SLIDER_LEFT, "right": S.SLIDER_RIGHT}[cond["slider"]]
    drawer = {"open": S.DRAWER_OPEN, "closed": 0.0}[cond["drawer"]]
    lightbulb = int(cond["lightbulb"])
    led = int(cond["led"])
    switch = S.SWITCH_RANGE[1] if lightbulb else S.SWITCH_RANGE[0]
    out = [slider, drawer, 0.0, switch, float(lightbulb), float(led)]

    locs = {c: cond[f"{c}_block"] for c in S.BLOCKS}
    for c, loc in locs.items():
        if loc not in LOCATIONS:
            raise ValueError(f"unknown location {loc!r} for {c}_block")
        if loc.startswith("on_"):
            base = loc[3:]
            if base == c or locs.get(base) != "table":
                raise ValueError(f"{c}_block {loc}: the base block must be another block on the table")
        if loc == "drawer" and cond["drawer"] != "open":
            raise ValueError("a block in the drawer needs the drawer open")
    poses = {}
    # table blocks: rejection sampling of non-overlapping centres
    placed = []
    for c in S.BLOCKS:
        if locs[c] != "table":
            continue
        for _ in range(1000):
            x = rng.uniform(*S.TABLE_REGION_X)
            y = rng.uniform(*S.TABLE_REGION_Y)
            if all(math.hypot(x - px, y - py) > 0.11 for px, py in placed):
                break
        placed.append((x, y))
        poses[c] = [x, y, S.TABLE_Z + S.BLOCK_SIZE[c][2] / 2, 0.0, 0.0, _yaw(rng)]
    # slots / drawer: blocks sharing a place are spread along x
    for place in ("slider_left", "slider_right", "drawer"):
        members = [c for c in S.BLOCKS if locs[c] == place]
        n = len(members)
        for i, c in enumerate(members):
            off = (i - (n - 1) / 2) * 0.085
            h = S.BLOCK_SIZE[c][2]
            if place == "drawer":
                x = S.DRAWER_ORIGIN[0] + off + (rng.uniform(-0.03, 0.03) if n == 1 else 0.0)
                y = S.DRAWER_ORIGIN[1] - drawer - 0.03 + rng.uniform(-0.02, 0.02)
                z = S.DRAWER_FLOOR_Z + h / 2
            else:
                x = S.SLOT_X[place] + off + (rng.uniform(-0.02, 0.02) if n == 1 else 0.0)
                y = S.SLOT_Y + rng.uniform(-0.01, 0.01)
                z = S.PLANK_TOP + h / 2
            poses[c] = [x, y, z, 0.0, 0.0, _yaw(rng)]
    for c in S.BLOCKS:
        loc = locs[c]
        if loc.startswith("on_"):
            b = poses[loc[3:]]
            z = b[2] + S.BLOCK_SIZE[loc[3:]][2] / 2 + S.BLOCK_SIZE[c][2] / 2
            poses[c] = [b[0], b[1], z, 0.0, 0.0, b[5] + rng.uniform(-0.2, 0.2)]
    for c in S.BLOCKS:
        out += poses[c]
    return np.array(out, dtype=np.float64)


def sample_condition(rng) -> dict:
    """A random CALVIN-like condition (blocks on table or in a slot, never stacked)."""
    cond = {"led": int(rng.integers(2)), "lightbulb": int(rng.integers(2)),
            "slider": str(rng.choice(["left", "right"])),
            "drawer": str(rng.choice(["open", "closed"])), "grasped": 0}
    slots = ["slider_left", "slider_right"]
    used = set()
    for c in S.BLOCKS:
        loc = str(rng.choice(["table", "table", "slider_left", "slider_right"]))
        if loc in used:
            loc = "table"
        if loc in slots:
            used.add(loc)
        cond[f"{c}_block"] = loc
    return cond
