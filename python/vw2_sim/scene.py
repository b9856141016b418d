"""Geometry of the CALVIN-like PlayTable and the URDF text that builds it.

Frame (all numbers in metres / radians, world frame == table frame):

* ``+x`` points to the robot's right (CALVIN: "right"), ``+y`` away from the robot
  towards the back of the desk, ``+z`` up.  Origin on the floor below the desk.
* Desk top surface at ``z = TABLE_Z = 0.44``; desk slab spans x in [-0.55, 0.45],
  y in [-0.30, 0.28].
* Franka Panda base at ``ROBOT_BASE_POS = (-0.34, -0.46, 0.24)`` (CALVIN scene D), so the
  CALVIN neutral joint pose puts the TCP at about (0.02, -0.23, 0.61).
* Drawer under the front of the desk, centred at x = 0.15, opening towards -y
  (joint 0 = closed, 0.22 = fully open).  Knob sticks out of its front panel.
* Sliding cabinet at the back left: shelf ("plank") top at z = 0.50 spanning
  x in [-0.50, 0.06], y in [0.09, 0.28], split in two slots, left (x = -0.36) and right
  (x = -0.08).  The sliding door (front panel + lid) covers one slot; its joint
  moves it along -x: 0.0 = door on the right (covers the right slot, "slider right"),
  0.28 = door on the left ("slider left").  A block in a slot is reachable from
  above only when the door is on the other side.
* Push button on the desk at (-0.44, -0.04) (joint 0 = up, pressing moves it down,
  joint value grows to 0.02); it toggles the green LED (front face of the cabinet shelf,
  between the two slots).
* Switch: a knob on the front of the switch housing at x = 0.14 that slides up
  (joint 0 = down .. 0.08 = up); the lightbulb (on top of the housing) is on above 0.04.
* Blocks: red 0.07x0.045x0.045, blue 0.05 cube, pink 0.08x0.045x0.035 (local x is the
  long side), 0.1 kg.
"""

from __future__ import annotations

import os
import tempfile
import zlib

TABLE_Z = 0.44
DESK_X = (-0.55, 0.45)
DESK_Y = (-0.30, 0.28)
ROBOT_BASE_POS = (-0.34, -0.46, 0.24)
NEUTRAL_JOINTS = [-1.21779206, 1.03987646, 2.11978261, -2.34205014, -0.87015947,
                  1.64119353, 0.55344866]

# region of the desk where blocks are sampled (block centres)
TABLE_REGION_X = (-0.22, 0.22)
TABLE_REGION_Y = (-0.22, -0.06)

# drawer
DRAWER_ORIGIN = (0.15, -0.20, 0.35)   # link frame at joint value 0 (interior centre)
DRAWER_RANGE = (0.0, 0.22)
DRAWER_OPEN = 0.20
DRAWER_FLOOR_Z = 0.31                 # world z of the drawer floor's top
DRAWER_HALF_IN = 0.12                 # interior half-size in x and y
DRAWER_KNOB_Y = -0.17                 # knob centre y in link frame (world = -0.20 - q - 0.17)
DRAWER_KNOB_Z = 0.35

# slider cabinet
PLANK_TOP = 0.50
SLOT_X = {"slider_left": -0.36, "slider_right": -0.08}
SLOT_Y = 0.175
SLIDER_ORIGIN_X = -0.08               # door centre x at joint value 0
SLIDER_RANGE = (0.0, 0.28)
SLIDER_LEFT = 0.28
SLIDER_RIGHT = 0.0
SLIDER_KNOB_Y = 0.04
SLIDER_KNOB_Z = 0.57

# button / led
BUTTON_XY = (-0.44, -0.04)
BUTTON_TOP_Z = 0.49                   # cap top at joint 0
BUTTON_RANGE = (0.0, 0.02)
BUTTON_THRESHOLD = 0.012
LED_POS = (-0.22, 0.083, 0.472)      # on the front face of the cabinet shelf

# switch / lightbulb
SWITCH_X = 0.14
SWITCH_KNOB_Y = 0.09                  # knob centre y (knob spans y in [0.06, 0.12])
SWITCH_KNOB_Z0 = 0.52                 # knob centre z at joint 0
SWITCH_RANGE = (0.0, 0.08)
SWITCH_THRESHOLD = 0.04
LIGHTBULB_POS = (0.14, 0.18, 0.75)

BLOCKS = ("red", "blue", "pink")
BLOCK_SIZE = {"red": (0.07, 0.045, 0.045), "blue": (0.05, 0.05, 0.05),
              "pink": (0.08, 0.045, 0.035)}
BLOCK_RGBA = {"red": (0.85, 0.1, 0.1, 1), "blue": (0.1, 0.25, 0.85, 1),
              "pink": (0.95, 0.45, 0.75, 1)}
BLOCK_MASS = 0.1

LED_ON_RGBA = (0.1, 1.0, 0.1, 1)
LED_OFF_RGBA = (0.05, 0.25, 0.05, 1)
BULB_ON_RGBA = (1.0, 0.95, 0.4, 1)
BULB_OFF_RGBA = (0.55, 0.55, 0.5, 1)

WOOD = "0.62 0.45 0.3 1"
DARK = "0.35 0.25 0.18 1"
GREY = "0.6 0.6 0.62 1"
METAL = "0.25 0.25 0.27 1"


def _mat(rgba):
    # pybullet merges materials by name: one name per colour
    return f'<material name="c{zlib.crc32(rgba.encode())}"><color rgba="{rgba}"/></material>'


def _box(lo, hi, rgba=WOOD, collision=True, visual=True):
    """URDF visual+collision of an axis-aligned box given its min/max corners (link frame)."""
    c = [(a + b) / 2 for a, b in zip(lo, hi)]
    s = [b - a for a, b in zip(lo, hi)]
    geom = (f'<origin xyz="{c[0]:.5f} {c[1]:.5f} {c[2]:.5f}" rpy="0 0 0"/>'
            f'<geometry><box size="{s[0]:.5f} {s[1]:.5f} {s[2]:.5f}"/></geometry>')
    out = ""
    if visual:
        out += f"<visual>{geom}{_mat(rgba)}</visual>"
    if collision:
        out += f"<collision>{geom}</collision>"
    return out


def _sphere(c, r, rgba):
    return (f'<visual><origin xyz="{c[0]} {c[1]} {c[2]}"/><geometry><sphere radius="{r}"/>'
            f'</geometry>{_mat(rgba)}</visual>')


def _inertial(mass=1.0, i=0.01):
    return (f'<inertial><origin xyz="0 0 0"/><mass value="{mass}"/>'
            f'<inertia ixx="{i}" ixy="0" ixz="0" iyy="{i}" iyz="0" izz="{i}"/></inertial>')


def table_urdf() -> str:
    t = TABLE_Z
    base = ""
    # desk slab
    base += _box((DESK_X[0], DESK_Y[0], t - 0.04), (DESK_X[1], DESK_Y[1], t))
    # legs (visual only)
    for lx in (DESK_X[0] + 0.03, DESK_X[1] - 0.03):
        for ly in (DESK_Y[0] + 0.03, DESK_Y[1] - 0.03):
            base += _box((lx - 0.025, ly - 0.025, 0.0), (lx + 0.025, ly + 0.025, t - 0.04),
                         DARK, collision=False)
    # robot pedestal (visual only)
    bx, by, bz = ROBOT_BASE_POS
    base += _box((bx - 0.12, by - 0.12, 0.0), (bx + 0.12, by + 0.12, bz), METAL, collision=False)
    # cabinet walls (shelf itself is the 'plank' link)
    base += _box((-0.52, 0.26, PLANK_TOP), (0.08, 0.28, 0.70))          # back wall
    base += _box((-0.52, 0.12, t), (-0.50, 0.28, 0.70))                 # left side wall
    base += _box((0.06, 0.12, t), (0.08, 0.28, 0.70))                   # right side wall
    # switch housing
    base += _box((SWITCH_X - 0.05, 0.12, t), (SWITCH_X + 0.05, 0.26, 0.72), DARK)
    base += _box((SWITCH_X - 0.004, 0.118, 0.50), (SWITCH_X + 0.004, 0.12, 0.62), METAL,
                 collision=False)                                        # switch slot
    # button housing
    bxx, byy = BUTTON_XY
    base += _box((bxx - 0.04, byy - 0.04, t), (bxx + 0.04, byy + 0.04, t + 0.03), DARK)
    # led / lightbulb sockets (visual only)
    base += _box((LED_POS[0] - 0.028, LED_POS[1] + 0.004, LED_POS[2] - 0.014),
                 (LED_POS[0] + 0.028, LED_POS[1] + 0.007, LED_POS[2] + 0.014), METAL, collision=False)

    links = []
    joints = []

    def link(name, body, mass=0.0, inertia=0.001):
        links.append(f'<link name="{name}">{_inertial(mass, inertia)}{body}</link>')

    def joint(name, jtype, child, xyz, axis="1 0 0", lim=None, parent="base_link"):
        s = f'<joint name="{name}" type="{jtype}"><parent link="{parent}"/><child link="{child}"/>'
        s += f'<origin xyz="{xyz[0]} {xyz[1]} {xyz[2]}" rpy="0 0 0"/><axis xyz="{axis}"/>'
        if lim is not None:
            s += f'<limit lower="{lim[0]}" upper="{lim[1]}" effort="1000" velocity="10"/>'
            s += '<dynamics damping="1.0" friction="0.0"/>'
        s += "</joint>"
        joints.append(s)

    # plank (shelf of the sliding cabinet)
    link("plank_link", _box((-0.50, 0.09, t), (0.06, 0.28, PLANK_TOP), WOOD))
    joint("base__plank", "fixed", "plank_link", (0, 0, 0))

    # sliding door: frame origin at (SLIDER_ORIGIN_X, 0, 0), moves along -x
    door = ""
    door += _box((-0.14, 0.07, PLANK_TOP), (0.14, 0.09, 0.66), GREY)           # front panel
    door += _box((-0.14, 0.07, 0.64), (0.14, 0.26, 0.66), GREY)                # lid
    door += _box((-0.0125, 0.01, SLIDER_KNOB_Z - 0.025), (0.0125, 0.07, SLIDER_KNOB_Z + 0.025), METAL)
    link("slide_link", door, mass=0.5, inertia=0.01)
    joint("base__slide", "prismatic", "slide_link", (SLIDER_ORIGIN_X, 0, 0), "-1 0 0", SLIDER_RANGE)

    # drawer: frame at DRAWER_ORIGIN, moves along -y
    h = DRAWER_HALF_IN
    fz = DRAWER_FLOOR_Z - DRAWER_ORIGIN[2]    # floor top in link frame
    top = 0.39 - DRAWER_ORIGIN[2]
    dr = ""
    dr += _box((-h - 0.02, -h - 0.02, fz - 0.01), (h + 0.02, h + 0.02, fz), WOOD)   # floor
    dr += _box((-h - 0.02, -h - 0.02, fz - 0.01), (h + 0.02, -h, top), WOOD)        # front
    low = 0.345 - DRAWER_ORIGIN[2]     # low side/back walls leave room for the hand
    dr += _box((-h - 0.02, h, fz), (h + 0.02, h + 0.02, low), WOOD)                # back
    dr += _box((-h - 0.02, -h, fz), (-h, h, low), WOOD)                           # left
    dr += _box((h, -h, fz), (h + 0.02, h, low), WOOD)                             # right
    kz = DRAWER_KNOB_Z - DRAWER_ORIGIN[2]
    dr += _box((-0.0125, DRAWER_KNOB_Y - 0.03, kz - 0.015), (0.0125, -h - 0.02, kz + 0.015), METAL)
    link("drawer_link", dr, mass=1.0, inertia=0.02)
    joint("base__drawer", "prismatic", "drawer_link", DRAWER_ORIGIN, "0 -1 0", DRAWER_RANGE)

    # button: cap moves along -z
    cap = _box((-0.025, -0.025, BUTTON_TOP_Z - 0.02), (0.025, 0.025, BUTTON_TOP_Z), "0.9 0.9 0.9 1")
    link("button_link", cap, mass=0.05, inertia=0.0001)
    joint("base__button", "prismatic", "button_link", (BUTTON_XY[0], BUTTON_XY[1], 0), "0 0 -1",
          BUTTON_RANGE)

    # switch: knob moves along +z
    knob = _box((-0.0125, SWITCH_KNOB_Y - 0.03, SWITCH_KNOB_Z0 - 0.01),
                (0.0125, SWITCH_KNOB_Y + 0.03, SWITCH_KNOB_Z0 + 0.01), METAL)
    link("switch_link", knob, mass=0.1, inertia=0.0005)
    joint("base__switch", "prismatic", "switch_link", (SWITCH_X, 0, 0), "0 0 1", SWITCH_RANGE)

    # lights (visual only)
    led = _box((-0.02, -0.004, -0.009), (0.02, 0.004, 0.009), " ".join(map(str, LED_OFF_RGBA)),
               collision=False)
    link("led_link", led)
    joint("base__led", "fixed", "led_link", LED_POS)
    bulb = _sphere((0, 0, 0), 0.03, " ".join(map(str, BULB_OFF_RGBA)))
    link("lightbulb_link", bulb)
    joint("base__lightbulb", "fixed", "lightbulb_link", LIGHTBULB_POS)

    return ('<?xml version="1.0"?><robot name="playtable">'
            f'<link name="base_link">{_inertial(0.0, 0.0)}{base}</link>'
            + "".join(links) + "".join(joints) + "</robot>")


def block_urdf(color: str) -> str:
    sx, sy, sz = BLOCK_SIZE[color]
    m = BLOCK_MASS
    ixx = m * (sy * sy + sz * sz) / 12
    iyy = m * (sx * sx + sz * sz) / 12
    izz = m * (sx * sx + sy * sy) / 12
    rgba = " ".join(map(str, BLOCK_RGBA[color]))
    geom = f'<geometry><box size="{sx} {sy} {sz}"/></geometry>'
    return ('<?xml version="1.0"?>'
            f'<robot name="block_{color}"><link name="base_link">'
            '<contact><lateral_friction value="1.2"/><spinning_friction value="0.001"/>'
            '<rolling_friction value="0.0"/></contact>'
            f'<inertial><origin xyz="0 0 0"/><mass value="{m}"/>'
            f'<inertia ixx="{ixx}" ixy="0" ixz="0" iyy="{iyy}" iyz="0" izz="{izz}"/></inertial>'
            f'<visual>{geom}<material name=""><color rgba="{rgba}"/></material></visual>'
            f'<collision>{geom}</collision></link></robot>')


def floor_urdf() -> str:
    """A plain grey floor slab (cheaper to render than pybullet_data's textured plane)."""
    return ('<?xml version="1.0"?><robot name="floor"><link name="base_link">'
            f'{_inertial(0.0, 0.0)}'
            + _box((-2.5, -2.5, -0.02), (2.5, 2.5, 0.0), "0.55 0.55 0.57 1") + "</link></robot>")


def panda_urdf(meshes: str = "visual") -> str:
    """pybullet_data's panda.urdf with absolute mesh paths; ``meshes="collision"`` also uses
    the (much lighter) collision meshes for rendering, ~2x faster TinyRenderer frames."""
    import pybullet_data
    root = os.path.join(pybullet_data.getDataPath(), "franka_panda")
    with open(os.path.join(root, "panda.urdf")) as f:
        text = f.read()
    if meshes == "collision":
        text = text.replace("package://meshes/visual/", "package://meshes/collision/")
    elif meshes != "visual":
        raise ValueError("meshes must be 'visual' or 'collision'")
    return text.replace("package://meshes/", root + "/meshes/")


def write_urdfs(directory: str | None = None, robot_meshes: str = "visual") -> dict:
    """Write table, floor, robot and block URDFs into ``directory`` (a fresh temp dir by
    default) and return their paths."""
    directory = directory or tempfile.mkdtemp(prefix="vw2_sim_")
    paths = {}
    items = [("table", table_urdf()), ("floor", floor_urdf()), ("panda", panda_urdf(robot_meshes))]
    for name, text in items + [(f"block_{c}", block_urdf(c)) for c in BLOCKS]:
        path = os.path.join(directory, f"{name}.urdf")
        with open(path, "w") as f:
            # pybullet's URDF reader chokes on very long lines
            f.write(text.replace("><", ">\n<"))
        paths[name] = path
    return paths
