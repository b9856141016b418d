"""CALVIN's 34 PlayTable tasks and their success conditions (after calvin_env's
``new_playtable_tasks.yaml`` / ``tasks.py``), evaluated on ``PlayTableEnv.get_info()``
snapshots.

Contacts in an info are ``[body, link]`` pairs: bodies ``robot``, ``table``, ``floor``,
``block_red``/``block_blue``/``block_pink``; table links ``base_link`` (desk top and
cabinet walls), ``plank_link`` (sliding-cabinet shelf), ``drawer_link``, ``slide_link``,
``button_link``, ``switch_link``.
"""

from __future__ import annotations

import math

import numpy as np

COLORS = ("red", "blue", "pink")

TABLE = ("table", "base_link")
PLANK = ("table", "plank_link")
DRAWER = ("table", "drawer_link")


def _build_specs():
    specs = {}
    for c in COLORS:
        specs[f"rotate_{c}_block_right"] = ("rotate", c, -60.0)
        specs[f"rotate_{c}_block_left"] = ("rotate", c, 60.0)
        specs[f"push_{c}_block_right"] = ("push", c, 0.1)
        specs[f"push_{c}_block_left"] = ("push", c, -0.1)
        specs[f"lift_{c}_block_table"] = ("lift", c, TABLE)
        specs[f"lift_{c}_block_slider"] = ("lift", c, PLANK)
        specs[f"lift_{c}_block_drawer"] = ("lift", c, DRAWER)
    specs["move_slider_left"] = ("door", "slider", 0.15)
    specs["move_slider_right"] = ("door", "slider", -0.15)
    specs["open_drawer"] = ("door", "drawer", 0.12)
    specs["close_drawer"] = ("door", "drawer", -0.12)
    specs["place_in_slider"] = ("place", PLANK)
    specs["place_in_drawer"] = ("place", DRAWER)
    specs["push_into_drawer"] = ("push_into", TABLE, DRAWER)
    specs["stack_block"] = ("stack", True)
    specs["unstack_block"] = ("stack", False)
    specs["turn_on_lightbulb"] = ("light", "lightbulb", 0, 1)
    specs["turn_off_lightbulb"] = ("light", "lightbulb", 1, 0)
    specs["turn_on_led"] = ("light", "led", 0, 1)
    specs["turn_off_led"] = ("light", "led", 1, 0)
    return specs


TASK_SPECS = _build_specs()
TASK_NAMES = sorted(TASK_SPECS)
assert len(TASK_NAMES) == 34

# one sentence per task, after CALVIN's new_playtable_validation.yaml
VALIDATION_SENTENCES = {
    "rotate_red_block_right": "take the red block and rotate it to the right",
    "rotate_red_block_left": "take the red block and rotate it to the left",
    "rotate_blue_block_right": "take the blue block and rotate it to the right",
    "rotate_blue_block_left": "take the blue block and rotate it to the left",
    "rotate_pink_block_right": "take the pink block and rotate it to the right",
    "rotate_pink_block_left": "take the pink block and rotate it to the left",
    "push_red_block_right": "go push the red block right",
    "push_red_block_left": "go push the red block left",
    "push_blue_block_right": "go push the blue block right",
    "push_blue_block_left": "go push the blue block left",
    "push_pink_block_right": "go push the pink block right",
    "push_pink_block_left": "go push the pink block left",
    "move_slider_left": "push the sliding door to the left side",
    "move_slider_right": "push the sliding door to the right side",
    "open_drawer": "pull the handle to open the drawer",
    "close_drawer": "push the handle to close the drawer",
    "lift_red_block_table": "grasp and lift the red block",
    "lift_blue_block_table": "grasp and lift the blue block",
    "lift_pink_block_table": "grasp and lift the pink block",
    "lift_red_block_slider": "lift the red block from the sliding cabinet",
    "lift_blue_block_slider": "lift the blue block from the sliding cabinet",
    "lift_pink_block_slider": "lift the pink block from the sliding cabinet",
    "lift_red_block_drawer": "Take the red block from the drawer",
    "lift_blue_block_drawer": "Take the blue block from the drawer",
    "lift_pink_block_drawer": "Take the pink block from the drawer",
    "place_in_slider": "store the grasped block in the sliding cabinet",
    "place_in_drawer": "store the grasped block in the drawer",
    "push_into_drawer": "slide the block that it falls into the drawer",
    "stack_block": "stack the grasped block",
    "unstack_block": "remove the stacked block",
    "turn_on_lightbulb": "use the switch to turn on the light bulb",
    "turn_off_lightbulb": "use the switch to turn off the light bulb",
    "turn_on_led": "press the button to turn on the led light",
    "turn_off_led": "press the button to turn off the led light",
}
assert sorted(VALIDATION_SENTENCES) == TASK_NAMES


# ---------------------------------------------------------------- helpers
def _contacts(info, color):
    return {tuple(c) for c in info["blocks"][color]["contacts"]}


def _bodies(contacts):
    return {c[0] for c in contacts}


def _rot(euler):
    a, b, g = euler
    ca, sa, cb, sb, cg, sg = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(g), math.sin(g)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cg, -sg, 0], [sg, cg, 0], [0, 0, 1]])
    return rz @ ry @ rx   # extrinsic xyz == pybullet's euler convention


def relative_rotation_deg(start_euler, end_euler):
    """(x, y, z) extrinsic euler angles, in degrees, of end * start^-1 (like scipy 'xyz')."""
    r = _rot(end_euler) @ _rot(start_euler).T
    x = math.atan2(r[2, 1], r[2, 2])
    y = -math.asin(max(-1.0, min(1.0, r[2, 0])))
    z = math.atan2(r[1, 0], r[0, 0])
    return math.degrees(x), math.degrees(y), math.degrees(z)


def is_grasped(info, color):
    """Block touching the robot and nothing else."""
    cs = _contacts(info, color)
    return len(cs) > 0 and _bodies(cs) == {"robot"}


def is_stacked(info, color):
    """Block resting only on other blocks (no robot, no table), above the one it touches."""
    cs = _contacts(info, color)
    bodies = _bodies(cs)
    if not bodies or not all(b.startswith("block_") for b in bodies):
        return False
    z = info["blocks"][color]["pos"][2]
    return all(z > info["blocks"][b[len("block_"):]]["pos"][2] + 0.02 for b in bodies)


# ---------------------------------------------------------------- conditions
def _rotate(start, end, color, deg, xy_threshold=30.0):
    x, y, z = relative_rotation_deg(start["blocks"][color]["orn"], end["blocks"][color]["orn"])
    end_bodies = _bodies(_contacts(end, color))
    if "table" not in end_bodies:          # lifted / not resting on the table at the end
        return False
    if abs(x) > xy_threshold or abs(y) > xy_threshold:
        return False
    return z > deg if deg > 0 else z < deg


def _push(start, end, color, dx):
    s_c = {c for c in _contacts(start, color) if c[0] != "robot"}
    e_c = {c for c in _contacts(end, color) if c[0] != "robot"}
    if TABLE not in s_c or TABLE not in e_c:
        return False
    diff = end["blocks"][color]["pos"][0] - start["blocks"][color]["pos"][0]
    return diff > dx if dx > 0 else diff < dx


def _lift(start, end, color, surface, dz=0.05):
    s_c = _contacts(start, color)
    e_c = _contacts(end, color)
    z_diff = end["blocks"][color]["pos"][2] - start["blocks"][color]["pos"][2]
    return (z_diff > dz and "robot" not in _bodies(s_c) and surface in s_c
            and len(e_c) > 0 and _bodies(e_c) == {"robot"})


def _door(start, end, name, delta):
    d = end[name] - start[name]
    return d > delta if delta > 0 else d < delta


def _place(start, end, dest):
    held = [c for c in COLORS if is_grasped(start, c)]
    if len(held) != 1:
        return False
    c = held[0]
    e_c = _contacts(end, c)
    return "robot" not in _bodies(e_c) and dest in e_c


def _push_into(start, end, src, dest):
    for c in COLORS:
        if _contacts(start, c) == {src} and _contacts(end, c) == {dest}:
            return True
    return False


def _stack(start, end, stack):
    for c in COLORS:
        if stack:
            if is_stacked(end, c) and not is_stacked(start, c):
                return True
        else:
            s_c = {x for x in _contacts(start, c) if x[0] != "robot"}
            stacked = bool(s_c) and all(b.startswith("block_") for b in _bodies(s_c))
            if stacked and _contacts(end, c) == {TABLE}:
                return True
    return False


def _light(start, end, name, a, b):
    return int(start[name]) == a and int(end[name]) == b


class Tasks:
    """Oracle: which tasks were completed between two info snapshots."""

    names = TASK_NAMES

    @staticmethod
    def check(task: str, start_info: dict, end_info: dict) -> bool:
        spec = TASK_SPECS[task]
        kind = spec[0]
        if kind == "rotate":
            return _rotate(start_info, end_info, spec[1], spec[2])
        if kind == "push":
            return _push(start_info, end_info, spec[1], spec[2])
        if kind == "lift":
            return _lift(start_info, end_info, spec[1], spec[2])
        if kind == "door":
            return _door(start_info, end_info, spec[1], spec[2])
        if kind == "place":
            return _place(start_info, end_info, spec[1])
        if kind == "push_into":
            return _push_into(start_info, end_info, spec[1], spec[2])
        if kind == "stack":
            return _stack(start_info, end_info, spec[1])
        if kind == "light":
            return _light(start_info, end_info, spec[1], spec[2], spec[3])
        raise KeyError(task)

    @classmethod
    def get_task_info(cls, start_info: dict, end_info: dict) -> set:
        return {t for t in TASK_NAMES if cls.check(t, start_info, end_info)}

    @classmethod
    def get_task_info_for_set(cls, start_info: dict, end_info: dict, task_filter) -> set:
        unknown = set(task_filter) - set(TASK_SPECS)
        if unknown:
            raise KeyError(f"unknown tasks: {sorted(unknown)}")
        return {t for t in task_filter if cls.check(t, start_info, end_info)}


def condition_from_info(info: dict) -> dict:
    """The CALVIN-style condition of a state (the inverse of scene_obs_for_condition).
    Block locations: table, slider_left, slider_right, drawer, on_<color>, grasped, other."""
    from . import scene as S
    cond = {"led": int(info["led"]), "lightbulb": int(info["lightbulb"]),
            "slider": "left" if info["slider"] > (S.SLIDER_LEFT + S.SLIDER_RIGHT) / 2 else "right",
            "drawer": "open" if info["drawer"] > 0.1 else "closed", "grasped": 0}
    for c in COLORS:
        cs = _contacts(info, c)
        if is_grasped(info, c):
            loc = "grasped"
            cond["grasped"] = 1
        elif is_stacked(info, c):
            below = min((b for b in _bodies(cs)),
                        key=lambda b: info["blocks"][b[len("block_"):]]["pos"][2])
            loc = "on_" + below[len("block_"):]
        elif PLANK in cs:
            x = info["blocks"][c]["pos"][0]
            loc = "slider_left" if x < (S.SLOT_X["slider_left"] + S.SLOT_X["slider_right"]) / 2 \
                else "slider_right"
        elif DRAWER in cs:
            loc = "drawer"
        elif TABLE in cs:
            loc = "table"
        else:
            loc = "other"
        cond[f"{c}_block"] = loc
    return cond


def feasible(task: str, cond: dict) -> bool:
    """Whether ``task`` can be solved from a scene built by scene_obs_for_condition(cond)
    (or from a state whose condition_from_info is ``cond``).

    Tasks that need a grasped block (place_in_*): when some block is "grasped" they are
    feasible if the destination is free; when none is, they count as feasible if a block
    lies on the table (the episode then starts with a scripted lift, as in expert_eval).
    While a block is held only place_in_* and stack_block are feasible."""
    spec = TASK_SPECS[task]
    kind = spec[0]
    loc = {c: cond.get(f"{c}_block", "table") for c in COLORS}
    held = [c for c in COLORS if loc[c] == "grasped"]
    if held and kind not in ("place", "stack"):
        return False
    on_table = [c for c in COLORS if loc[c] == "table"
                and not any(v == f"on_{c}" for v in loc.values())]
    slider_left = cond.get("slider", "right") == "left"
    drawer_open = cond.get("drawer", "closed") == "open"
    if kind in ("rotate", "push"):
        return spec[1] in on_table
    if kind == "lift":
        c, surf = spec[1], spec[2]
        if surf == TABLE:
            return c in on_table
        if surf == DRAWER:
            return loc[c] == "drawer" and drawer_open and not any(
                v == f"on_{c}" for v in loc.values())
        # slider: the slot must be uncovered (door on the other side)
        return (loc[c] == "slider_left" and not slider_left) or (loc[c] == "slider_right" and slider_left)
    if kind == "door":
        if spec[1] == "slider":
            return (not slider_left) if spec[2] > 0 else slider_left
        return (not drawer_open) if spec[2] > 0 else drawer_open
    if kind == "light":
        return int(cond.get(spec[1], 0)) == spec[2]
    if kind == "place":
        if not on_table and not held:
            return False
        if spec[1] == DRAWER:
            return drawer_open
        free = "slider_right" if slider_left else "slider_left"
        return free not in loc.values()
    if kind == "push_into":
        return drawer_open and bool(on_table)
    if kind == "stack":
        if spec[1]:
            return len(on_table) >= (1 if held else 2)
        return any(v.startswith("on_") for v in loc.values())
    return False
