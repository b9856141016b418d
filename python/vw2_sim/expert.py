"""Scripted expert for the PlayTable tasks.

Waypoint state machines in TCP space that read privileged state (block poses, joint
values) from ``env.get_info()`` and emit CALVIN relative actions (7 floats, first six in
[-1, 1], gripper exactly -1 or 1).

    expert = ScriptedExpert(env)
    expert.reset("open_drawer")          # plans from the current state
    while ...:
        obs = env.step(expert.act())

Tasks that start with a block in the gripper (``place_in_slider`` / ``place_in_drawer``)
need the block grasped first: ``expert.reset("lift_red_block_table")``, run it until
``expert.done``, then capture the start info and ``expert.reset("place_in_slider")``
(see expert_eval.run_episode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np

from . import scene as S
from .tasks import COLORS, TASK_SPECS, feasible, is_grasped  # noqa: F401  (feasible re-exported)

NEUTRAL_YAW = 1.5
OPEN, CLOSE = 1.0, -1.0
SAFE_Z = 0.72          # clears the cabinet walls and the door lid
LATERAL = 0.1          # max sideways action while pushing (the fingers drag the block)

Vec = Union[np.ndarray, Callable[[dict], np.ndarray]]


def _wrap(a):
    return (a + math.pi) % (2 * math.pi) - math.pi


@dataclass
class Waypoint:
    pos: Vec                       # TCP target (or a function of the live info)
    yaw: Union[float, Callable[[dict], float]]
    grip: float                    # gripper command while moving to this waypoint
    tol: float = 0.01              # position tolerance to count as reached
    hold: int = 0                  # steps to stay once reached (e.g. gripper settling)
    max_steps: int = 60            # give up on the waypoint after this many steps
    speed: float = 1.0             # max |action| for the xyz components
    yaw_tol: float = 0.08
    until: Optional[Callable[[dict], bool]] = None   # advance as soon as this holds
    axis_speed: Optional[tuple] = None  # per-axis max |action| (x, y, z), on top of speed
    name: str = ""
    _steps: int = field(default=0, repr=False)
    _held: int = field(default=0, repr=False)


def _grasp_yaw(theta: float, color: str, center: float = NEUTRAL_YAW) -> float:
    """TCP yaw that puts the fingers across the block's short side (local y), nearest
    to ``center``: yaw == theta (mod pi), or (mod pi/2) for the cube."""
    period = math.pi / 2 if color == "blue" else math.pi
    k = round((center - theta) / period)
    return theta + k * period


def _footprint_half(color: str, theta: float, axis: int) -> float:
    sx, sy, _ = S.BLOCK_SIZE[color]
    c, s = abs(math.cos(theta)), abs(math.sin(theta))
    if axis == 0:
        return sx / 2 * c + sy / 2 * s
    return sx / 2 * s + sy / 2 * c


def _grasp_z(color: str, support_z: float) -> float:
    """TCP height to grasp a block resting on a surface at support_z."""
    h = S.BLOCK_SIZE[color][2]
    return max(support_z + h / 2 - 0.003, support_z + 0.013)


class ScriptedExpert:
    def __init__(self, env, pos_gain: float = 1.0):
        self.env = env
        self.pos_gain = pos_gain
        self.task = None
        self.plan: list[Waypoint] = []
        self.i = 0
        self.grip = OPEN

    # ------------------------------------------------------------ public API
    def reset(self, task: str, info: Optional[dict] = None):
        if task not in TASK_SPECS:
            raise KeyError(task)
        info = info if info is not None else self.env.get_info()
        self.task = task
        self.grip = float(info["gripper_action"])
        self.plan = self._liftoff(info, self._make_plan(task, info))
        self.i = 0
        return self

    def _liftoff(self, info, plan):
        """When starting low and far from the first waypoint (e.g. in a chain, after the
        previous task), rise vertically first so the transit clears the furniture."""
        if not plan:
            return plan
        tcp = np.array(info["tcp_pos"])
        yaw = info["tcp_orn"][2]
        first = plan[0].pos(info) if callable(plan[0].pos) else np.asarray(plan[0].pos, float)
        holding = any(is_grasped(info, c) for c in COLORS)
        pre = []
        grip = self.grip
        touching_table = any(c[0] == "table" for c in info["robot_contacts"])
        if grip < 0 and not holding and touching_table:
            # e.g. still gripping a handle: let go before moving away
            pre.append(Waypoint(tcp.copy(), yaw, OPEN, tol=1.0, yaw_tol=9, hold=5, name="let_go"))
            grip = OPEN
        if tcp[2] < 0.56 and np.linalg.norm(first[:2] - tcp[:2]) > 0.08:
            pre.append(Waypoint([tcp[0], tcp[1], 0.60], yaw, grip, tol=0.015, yaw_tol=9,
                                speed=0.7, name="liftoff"))
        return pre + plan

    @property
    def done(self) -> bool:
        return self.i >= len(self.plan)

    def act(self, obs_or_info=None) -> np.ndarray:
        info = obs_or_info if isinstance(obs_or_info, dict) and "blocks" in obs_or_info \
            else self.env.get_info()
        tcp = np.array(info["tcp_pos"])
        euler = np.array(info["tcp_orn"])
        while self.i < len(self.plan):
            wp = self.plan[self.i]
            tgt = wp.pos(info) if callable(wp.pos) else np.asarray(wp.pos, float)
            yaw = wp.yaw(info) if callable(wp.yaw) else wp.yaw
            err = tgt - tcp
            yaw_err = _wrap(yaw - euler[2])
            reached = np.linalg.norm(err) < wp.tol and abs(yaw_err) < wp.yaw_tol
            if wp.until is not None and wp.until(info):
                self.i += 1
                continue
            if reached:
                wp._held += 1
            if (reached and wp._held > wp.hold) or wp._steps >= wp.max_steps:
                self.i += 1
                continue
            wp._steps += 1
            self.grip = wp.grip
            a = np.zeros(7)
            a[:3] = np.clip(err / 0.02 * self.pos_gain, -wp.speed, wp.speed)
            if wp.axis_speed is not None:
                lim = np.asarray(wp.axis_speed, float)
                a[:3] = np.clip(a[:3], -lim, lim)
            rot_err = np.array([_wrap(math.pi - euler[0]), -euler[1], yaw_err])
            a[3:6] = np.clip(rot_err / 0.05, -1.0, 1.0)
            a[6] = wp.grip
            return a
        a = np.zeros(7)
        a[6] = self.grip
        return a

    # ------------------------------------------------------------ planning
    def _make_plan(self, task, info):
        spec = TASK_SPECS[task]
        kind = spec[0]
        if kind == "door":
            return self._plan_slider(info, spec[2] > 0) if spec[1] == "slider" \
                else self._plan_drawer(info, spec[2] > 0)
        if kind == "light":
            return self._plan_led(info) if spec[1] == "led" else self._plan_switch(info, spec[3] == 1)
        if kind == "lift":
            return self._plan_lift(info, spec[1])
        if kind == "rotate":
            return self._plan_rotate(info, spec[1], spec[2])
        if kind == "push":
            return self._plan_push(info, spec[1], spec[2])
        if kind == "place":
            return self._plan_place(info, "drawer" if spec[1][1] == "drawer_link" else "slider")
        if kind == "push_into":
            return self._plan_push_into(info)
        if kind == "stack":
            return self._plan_stack(info) if spec[1] else self._plan_unstack(info)
        raise KeyError(task)

    @staticmethod
    def _bpos(color):
        return lambda info: np.array(info["blocks"][color]["pos"])

    def _grasp(self, info, color, support_z, yaw, approach_z=None, name="grasp"):
        """Approach from above, descend, close the gripper."""
        bp = self._bpos(color)
        gz = _grasp_z(color, support_z)
        az = approach_z if approach_z is not None else gz + 0.10

        def above(i):
            p = bp(i)
            return np.array([p[0], p[1], az])

        def at(i):
            p = bp(i)
            return np.array([p[0], p[1], gz])
        return [
            Waypoint(above, yaw, OPEN, tol=0.012, name=f"{name}:above"),
            Waypoint(at, yaw, OPEN, tol=0.006, speed=0.6, max_steps=40, name=f"{name}:descend"),
            Waypoint(at, yaw, CLOSE, tol=1.0, hold=7, yaw_tol=9, name=f"{name}:close"),
        ]

    def _block_support(self, info, color):
        cs = {tuple(c) for c in info["blocks"][color]["contacts"]}
        if ("table", "plank_link") in cs:
            return S.PLANK_TOP
        if ("table", "drawer_link") in cs:
            return S.DRAWER_FLOOR_Z
        h = S.BLOCK_SIZE[color][2]
        return info["blocks"][color]["pos"][2] - h / 2

    # --- articulated objects
    def _plan_drawer(self, info, opening):
        q = info["drawer"]
        x, z = S.DRAWER_ORIGIN[0], S.DRAWER_KNOB_Z
        ky = S.DRAWER_ORIGIN[1] - q + S.DRAWER_KNOB_Y - 0.012   # grasp the knob's outer part
        yaw = math.pi / 2
        dy = -0.21 if opening else (q + 0.005)
        return [
            Waypoint([x, ky, z + 0.10], yaw, OPEN, tol=0.012, name="above"),
            Waypoint([x, ky, z + 0.002], yaw, OPEN, tol=0.006, speed=0.6, name="descend"),
            Waypoint([x, ky, z + 0.002], yaw, CLOSE, tol=1.0, hold=6, yaw_tol=9, name="close"),
            Waypoint([x, ky + dy, z + 0.002], yaw, CLOSE, tol=0.01, speed=0.5, max_steps=80,
                     name="pull" if opening else "push"),
            Waypoint([x, ky + dy, z + 0.002], yaw, OPEN, tol=1.0, hold=5, yaw_tol=9, name="release"),
            Waypoint([x, ky + dy - 0.02, z + 0.12], yaw, OPEN, tol=0.02, name="retreat"),
        ]

    def _plan_slider(self, info, to_left):
        q = info["slider"]
        kx = S.SLIDER_ORIGIN_X - q
        y, z = S.SLIDER_KNOB_Y, S.SLIDER_KNOB_Z + 0.005
        yaw = math.pi / 2
        target_q = S.SLIDER_LEFT if to_left else S.SLIDER_RIGHT
        tx = S.SLIDER_ORIGIN_X - target_q
        return [
            Waypoint([kx, y - 0.03, z + 0.10], yaw, OPEN, tol=0.015, name="above"),
            Waypoint([kx, y, z + 0.10], yaw, OPEN, tol=0.012, name="above2"),
            Waypoint([kx, y, z], yaw, OPEN, tol=0.006, speed=0.6, name="descend"),
            Waypoint([kx, y, z], yaw, CLOSE, tol=1.0, hold=6, yaw_tol=9, name="close"),
            Waypoint([tx, y, z], yaw, CLOSE, tol=0.01, speed=0.5, max_steps=80, name="slide"),
            Waypoint([tx, y, z], yaw, OPEN, tol=1.0, hold=5, yaw_tol=9, name="release"),
            Waypoint([tx, y - 0.04, z + 0.10], yaw, OPEN, tol=0.02, name="retreat"),
        ]

    def _plan_led(self, info):
        x, y = S.BUTTON_XY
        top = S.BUTTON_TOP_Z
        yaw = math.pi / 2
        return [
            Waypoint([x, y, top + 0.08], yaw, CLOSE, tol=0.012, name="above"),
            Waypoint([x, y, top - 0.028], yaw, CLOSE, tol=0.006, speed=0.5, max_steps=25,
                     name="press"),
            Waypoint([x, y, top + 0.08], yaw, CLOSE, tol=0.015, name="up"),
        ]

    def _plan_switch(self, info, up):
        q = info["switch"]
        x, y = S.SWITCH_X, S.SWITCH_KNOB_Y - 0.018
        z = S.SWITCH_KNOB_Z0 + q
        yaw = math.pi / 2
        dz = (S.SWITCH_RANGE[1] - q + 0.01) if up else -(q + 0.01)
        return [
            Waypoint([x, y - 0.03, z + 0.10], yaw, OPEN, tol=0.015, name="above"),
            Waypoint([x, y, z + 0.10], yaw, OPEN, tol=0.012, name="above2"),
            Waypoint([x, y, z], yaw, OPEN, tol=0.006, speed=0.6, name="descend"),
            Waypoint([x, y, z], yaw, CLOSE, tol=1.0, hold=6, yaw_tol=9, name="close"),
            Waypoint([x, y, z + dz], yaw, CLOSE, tol=0.008, speed=0.5, max_steps=40, name="move"),
            Waypoint([x, y, z + dz], yaw, OPEN, tol=1.0, hold=5, yaw_tol=9, name="release"),
            Waypoint([x, y - 0.04, z + dz + 0.10], yaw, OPEN, tol=0.02, name="retreat"),
        ]

    # --- blocks
    def _plan_lift(self, info, color):
        b = info["blocks"][color]
        support = self._block_support(info, color)
        yaw = _grasp_yaw(b["orn"][2], color)
        pre = []
        if support == S.PLANK_TOP:
            pre = [Waypoint(lambda i: np.array([*i["blocks"][color]["pos"][:2], SAFE_Z]), yaw, OPEN,
                            tol=0.02, name="over_cabinet")]
        wps = pre + self._grasp(info, color, support, yaw)
        gz = _grasp_z(color, support)
        p0 = np.array(b["pos"])
        wps.append(Waypoint(lambda i: np.array([p0[0], p0[1], gz + 0.12]), yaw, CLOSE, tol=0.01,
                            speed=0.6, hold=10, name="lift"))
        return wps

    def _plan_rotate(self, info, color, deg):
        b = info["blocks"][color]
        support = self._block_support(info, color)
        delta = math.radians(80.0) * (1 if deg > 0 else -1)
        yaw0 = _grasp_yaw(b["orn"][2], color, center=NEUTRAL_YAW - delta / 2)
        yaw1 = yaw0 + delta
        gz = _grasp_z(color, support)
        p0 = np.array(b["pos"])
        wps = self._grasp(info, color, support, yaw0)
        # while turning, the hand sweeps +-0.11 m around the block: blocks close to the
        # cabinet are first carried a few cm towards the robot (clear of the door knob)
        y1 = min(p0[1], -0.12) if abs(support - S.TABLE_Z) < 0.01 else p0[1]
        up0 = np.array([p0[0], p0[1], gz + 0.02])
        up = np.array([p0[0], y1, gz + 0.02])
        down = np.array([p0[0], y1, gz + 0.004])
        wps += [
            Waypoint(up0, yaw0, CLOSE, tol=0.008, speed=0.5, name="lift"),
            Waypoint(up, yaw0, CLOSE, tol=0.008, speed=0.5, name="shift"),
            Waypoint(up, yaw1, CLOSE, tol=0.01, yaw_tol=0.05, max_steps=60, name="rotate"),
            Waypoint(down, yaw1, CLOSE, tol=0.006, speed=0.5, max_steps=20, name="lower"),
            Waypoint(down, yaw1, OPEN, tol=1.0, hold=5, yaw_tol=9, name="release"),
            Waypoint(down + [0, 0, 0.1], yaw1, OPEN, tol=0.02, name="retreat"),
        ]
        return wps

    def _plan_push(self, info, color, dx):
        b = info["blocks"][color]
        p0 = np.array(b["pos"])
        sgn = 1.0 if dx > 0 else -1.0
        half = _footprint_half(color, b["orn"][2], 0)
        z = S.TABLE_Z + 0.015
        x0 = p0[0] - sgn * (half + 0.03)
        x1 = p0[0] + sgn * 0.17 - sgn * (half + 0.03)
        yaw = math.pi / 2
        return [
            Waypoint([x0, p0[1], z + 0.08], yaw, CLOSE, tol=0.012, name="above"),
            Waypoint([x0, p0[1], z], yaw, CLOSE, tol=0.006, speed=0.6, max_steps=40, name="descend"),
            Waypoint([x1, p0[1], z], yaw, CLOSE, tol=0.01, speed=0.5, max_steps=60, name="push"),
            Waypoint([x1, p0[1], z + 0.1], yaw, CLOSE, tol=0.02, name="retreat"),
        ]

    def _carry_and_release(self, color, dest_xy, dest_support, yaw, via_z):
        h = S.BLOCK_SIZE[color][2]
        # TCP height that puts the block's bottom 1 cm above the destination support
        def rel_z(i):
            b = i["blocks"][color]["pos"][2]
            return i["tcp_pos"][2] - b    # tcp - block centre while held

        state = {}

        def over(i):
            if "dz" not in state:
                state["dz"] = rel_z(i)
            return np.array([dest_xy[0], dest_xy[1], via_z])

        def low(i):
            dz = state.get("dz", 0.0)
            return np.array([dest_xy[0], dest_xy[1], dest_support + h / 2 + 0.012 + dz])
        return [
            Waypoint(over, yaw, CLOSE, tol=0.015, speed=0.7, max_steps=80, name="carry"),
            Waypoint(low, yaw, CLOSE, tol=0.006, speed=0.5, max_steps=40, name="lower"),
            Waypoint(low, yaw, OPEN, tol=1.0, hold=6, yaw_tol=9, name="release"),
            Waypoint(lambda i: np.array([dest_xy[0], dest_xy[1], via_z]), yaw, OPEN, tol=0.02,
                     name="retreat"),
        ]

    def _held_color(self, info):
        for c in COLORS:
            if is_grasped(info, c):
                return c
        # fall back to the block closest to the TCP
        tcp = np.array(info["tcp_pos"])
        return min(COLORS, key=lambda c: np.linalg.norm(np.array(info["blocks"][c]["pos"]) - tcp))

    def _plan_place(self, info, where):
        color = self._held_color(info)
        yaw = info["tcp_orn"][2]
        yaw = _grasp_yaw(yaw, "red")      # keep the current (mod pi) yaw near neutral
        if where == "drawer":
            q = info["drawer"]
            xy = (S.DRAWER_ORIGIN[0], S.DRAWER_ORIGIN[1] - q - 0.04)
            return self._carry_and_release(color, xy, S.DRAWER_FLOOR_Z, yaw, 0.50)
        slot = "slider_right" if info["slider"] > 0.15 else "slider_left"
        xy = (S.SLOT_X[slot], S.SLOT_Y)
        tcp = np.array(info["tcp_pos"])
        pre = [Waypoint([tcp[0], tcp[1], SAFE_Z], yaw, CLOSE, tol=0.02, speed=0.7, name="up")]
        return pre + self._carry_and_release(color, xy, S.PLANK_TOP, yaw, SAFE_Z)

    def _plan_stack(self, info):
        free = [c for c in COLORS
                if {tuple(x) for x in info["blocks"][c]["contacts"]} == {("table", "base_link")}]
        area = {c: S.BLOCK_SIZE[c][0] * S.BLOCK_SIZE[c][1] for c in COLORS}
        held = [c for c in COLORS if is_grasped(info, c)]
        if held:            # already holding a block (e.g. after a lift in a chain)
            top = held[0]
            if not free:
                return []
            base = max(free, key=lambda c: area[c])
            bb = info["blocks"][base]
            yaw = _grasp_yaw(info["tcp_orn"][2], "red")
            yaw2 = yaw + _wrap_period(bb["orn"][2] - info["blocks"][top]["orn"][2], math.pi / 2)
            base_top = bb["pos"][2] + S.BLOCK_SIZE[base][2] / 2
            tcp = np.array(info["tcp_pos"])
            pre = [Waypoint([tcp[0], tcp[1], max(tcp[2], base_top + 0.12)], yaw, CLOSE, tol=0.015,
                            speed=0.6, name="up")]
            return pre + self._carry_and_release(top, bb["pos"][:2], base_top, yaw2, base_top + 0.12)
        if len(free) < 2:
            return []
        base = max(free, key=lambda c: area[c])
        top = min([c for c in free if c != base], key=lambda c: area[c])
        bt = info["blocks"][top]
        bb = info["blocks"][base]
        yaw = _grasp_yaw(bt["orn"][2], top)
        # rotate the top block so its axes align with the base block's
        yaw2 = yaw + _wrap_period(bb["orn"][2] - bt["orn"][2], math.pi / 2)
        wps = self._grasp(info, top, self._block_support(info, top), yaw)
        gz = _grasp_z(top, self._block_support(info, top))
        pt = np.array(bt["pos"])
        wps.append(Waypoint([pt[0], pt[1], gz + 0.08], yaw, CLOSE, tol=0.012, speed=0.6, name="lift"))
        base_top = bb["pos"][2] + S.BLOCK_SIZE[base][2] / 2
        wps += self._carry_and_release(top, bb["pos"][:2], base_top, yaw2, base_top + 0.12)
        return wps

    def _plan_unstack(self, info):
        top = None
        for c in COLORS:
            cs = {tuple(x) for x in info["blocks"][c]["contacts"] if x[0] != "robot"}
            if cs and all(x[0].startswith("block_") for x in cs):
                top = c
        if top is None:
            return []
        bt = info["blocks"][top]
        yaw = _grasp_yaw(bt["orn"][2], top)
        support = bt["pos"][2] - S.BLOCK_SIZE[top][2] / 2
        wps = self._grasp(info, top, support, yaw)
        gz = _grasp_z(top, support)
        pt = np.array(bt["pos"])
        wps.append(Waypoint([pt[0], pt[1], gz + 0.06], yaw, CLOSE, tol=0.012, speed=0.6, name="lift"))
        dest = self._free_spot(info, top, pt[:2])
        wps += self._carry_and_release(top, dest, S.TABLE_Z, yaw, gz + 0.06)
        return wps

    def _free_spot(self, info, color, near):
        others = [np.array(info["blocks"][c]["pos"][:2]) for c in COLORS if c != color]
        best, best_d = None, -1
        for ang in np.linspace(0, 2 * math.pi, 16, endpoint=False):
            cand = np.asarray(near) + 0.13 * np.array([math.cos(ang), math.sin(ang)])
            if not (S.TABLE_REGION_X[0] - 0.05 <= cand[0] <= S.TABLE_REGION_X[1] + 0.05
                    and S.TABLE_REGION_Y[0] - 0.03 <= cand[1] <= S.TABLE_REGION_Y[1] + 0.02):
                continue
            d = min(np.linalg.norm(cand - o) for o in others)
            if d > best_d:
                best, best_d = cand, d
        return best if best is not None else np.asarray(near) + [0.0, -0.12]

    def _pusher(self, color, direction, z, lead=0.02, goal=None):
        """Closed-loop push target: keep the closed fingers behind the block's centre and
        ``lead`` metres into it.  The push direction is ``direction`` or, with ``goal``
        (an xy point), the live direction from the block to the goal, which steers a block
        that drifts sideways back onto the line."""
        d0 = np.array([direction[0], direction[1]], float)
        d0 /= np.linalg.norm(d0)

        def target(info):
            b = info["blocks"][color]
            bxy = np.array(b["pos"][:2])
            d = d0
            if goal is not None:
                g = np.asarray(goal, float) - bxy
                if np.linalg.norm(g) > 1e-6:
                    d = g / np.linalg.norm(g)
                    # never push backwards relative to the nominal direction
                    if float(np.dot(d, d0)) < 0.3:
                        d = d0
            # half extent of the (rotated) block along d
            sx, sy, _ = S.BLOCK_SIZE[color]
            th = b["orn"][2]
            half = abs(sx / 2 * (d[0] * math.cos(th) + d[1] * math.sin(th))) + \
                abs(sy / 2 * (-d[0] * math.sin(th) + d[1] * math.cos(th)))
            xy = bxy - d * (half + 0.012 - lead)
            return np.array([xy[0], xy[1], z])
        return target

    def _plan_push_into(self, info):
        q = info["drawer"]
        cands = [c for c in COLORS if {tuple(x) for x in info["blocks"][c]["contacts"]} == {("table", "base_link")}]
        if not cands:
            return []
        dx0, dx1 = S.DRAWER_ORIGIN[0] - 0.06, S.DRAWER_ORIGIN[0] + 0.06
        # prefer the block closest (in x) to the drawer
        color = min(cands, key=lambda c: abs(info["blocks"][c]["pos"][0] - S.DRAWER_ORIGIN[0]))
        b = info["blocks"][color]
        p0 = np.array(b["pos"])
        z = S.TABLE_Z + 0.015
        yaw = math.pi / 2      # closed fingers side by side along x
        wps = []
        x = p0[0]
        if not dx0 <= x <= dx1:
            tx = S.DRAWER_ORIGIN[0]
            sgn = 1.0 if tx > x else -1.0
            half = _footprint_half(color, b["orn"][2], 0)
            xs = x - sgn * (half + 0.035)
            bx = lambda i: i["blocks"][color]["pos"][0]
            wps += [
                Waypoint([xs, p0[1], z + 0.08], yaw, CLOSE, tol=0.012, name="side_above"),
                Waypoint([xs, p0[1], z], yaw, CLOSE, tol=0.006, speed=0.6, max_steps=40, name="side_descend"),
                Waypoint(self._pusher(color, (sgn, 0.0), z, goal=(tx, p0[1])), yaw, CLOSE, tol=0.0,
                         speed=0.4, axis_speed=(1.0, LATERAL, 1.0),
                         max_steps=60, until=lambda i: sgn * (bx(i) - tx) > -0.01, name="side_push"),
                Waypoint(lambda i: np.array([i["tcp_pos"][0] - sgn * 0.01, i["tcp_pos"][1], z + 0.08]),
                         yaw, CLOSE, tol=0.015, name="side_up"),
            ]
        half_y = _footprint_half(color, b["orn"][2], 1)
        bp = self._bpos(color)

        def behind(i, dz=0.08):
            p = bp(i)
            return np.array([p[0], p[1] + half_y + 0.035, z + dz])

        def fallen(i):
            p = bp(i)
            return p[1] < S.DESK_Y[0] - 0.03 or p[2] < S.TABLE_Z - 0.01
        wps += [
            Waypoint(lambda i: behind(i), yaw, CLOSE, tol=0.012, name="behind_above"),
            Waypoint(lambda i: behind(i, 0.0), yaw, CLOSE, tol=0.006, speed=0.6, max_steps=40,
                     name="behind_descend"),
            Waypoint(self._pusher(color, (0.0, -1.0), z,
                                  goal=(S.DRAWER_ORIGIN[0], S.DRAWER_ORIGIN[1] - q - 0.05)),
                     yaw, CLOSE, tol=0.0, speed=0.4, max_steps=80, until=fallen, name="push",
                     axis_speed=(LATERAL, 1.0, 1.0)),
            Waypoint(lambda i: np.array([i["tcp_pos"][0], i["tcp_pos"][1] + 0.01, z + 0.12]), yaw,
                     CLOSE, tol=0.02, name="retreat"),
        ]
        return wps


def _wrap_period(a, period):
    return (a + period / 2) % period - period / 2
