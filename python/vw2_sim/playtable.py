"""PlayTableEnv: a CALVIN-like tabletop in pybullet (headless, deterministic).

Observation (dict of numpy arrays), exactly CALVIN's layout:

* ``rgb_static``  uint8 (S, S, 3), S = static_size (200): fixed camera from CALVIN's
  look_from (2.87, -2.17, 2.56), up +z, near 0.01, far 10, framed like CALVIN's static
  view on this scene: the arm from its base, the desk and every object (fov 15 deg,
  look_at (-0.06, -0.09, 0.41); CALVIN's own fov 10 / look_at would cut the arm off here).
* ``rgb_gripper`` uint8 (G, G, 3), G = gripper_size (84): camera in the hand looking along
  the approach axis, fov 75, near 0.01, far 2.
* ``robot_obs``   float64 (15,): tcp xyz, tcp euler xyz, gripper width, 7 arm joints,
  last gripper action (-1 close / 1 open).
* ``scene_obs``   float64 (24,): slider (door) joint, drawer joint, button joint,
  switch joint, lightbulb (0/1), green led (0/1), red block xyz+euler, blue, pink.

With ``render=False`` the two images are all-zero arrays of the right shape.

Control: 30 Hz, 8 physics substeps of 1/240 s.  Relative actions (default): components
are clipped to [-1, 1], xyz scaled by 0.02 m and euler by 0.05 rad and added to the
*current* TCP pose (calvin_env ``relative_to_absolute``); the pose goes through
``calculateInverseKinematics`` (null space around the CALVIN neutral pose) and joint
position control.  Absolute actions: (x, y, z, ex, ey, ez, gripper).  The gripper
component must be exactly -1 (close) or +1 (open).
"""

from __future__ import annotations

import math
import tempfile
import time

import numpy as np
import pybullet as p

from . import scene as S
from .conditions import default_scene_obs, robot_obs_neutral

CONTROL_HZ = 30
SUBSTEPS = 8
PHYSICS_DT = 1.0 / (CONTROL_HZ * SUBSTEPS)
POS_SCALE = 0.02
ORN_SCALE = 0.05

STATIC_CAM = dict(look_from=(2.87, -2.17, 2.56), look_at=(-0.06, -0.09, 0.41),
                  up=(0.0, 0.0, 1.0), fov=15.0, near=0.01, far=10.0)
GRIPPER_CAM = dict(fov=75.0, near=0.01, far=2.0)

ARM_JOINTS = list(range(7))
FINGER_JOINTS = [9, 10]
TCP_LINK = 11
HAND_LINK = 8
ARM_FORCES = [87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0]
ARM_KP = 0.3
FINGER_FORCE = 40.0
CONTACT_TOL = 0.002   # a contact point counts when its distance is below this (m)


def _wrap(a):
    return (a + math.pi) % (2 * math.pi) - math.pi


class PlayTableEnv:
    """CALVIN-style PlayTable.  See module docstring for the observation/action contract.

    ``seed`` seeds ``self.rng`` (used by ``reset_to_condition``); the physics itself is
    deterministic: the same reset vectors and actions give bit-identical observations,
    whatever the env did before.  ``robot_meshes``: "collision" (default; pybullet_data's
    panda collision meshes are also used for rendering, ~3x faster frames) or "visual"
    (the detailed visual meshes)."""

    def __init__(self, seed: int = 0, render: bool = True, static_size: int = 200,
                 gripper_size: int = 84, robot_meshes: str = "collision"):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.render = render
        self.static_size = static_size
        self.gripper_size = gripper_size
        self.cid = p.connect(p.DIRECT)
        self._ik_cid = None
        # URDFs are only read while loading: write them to a temp dir removed right after
        with tempfile.TemporaryDirectory(prefix="vw2_sim_") as tmp:
            self._urdfs = S.write_urdfs(tmp, robot_meshes=robot_meshes)
            self._build()
        self._static_view = p.computeViewMatrix(STATIC_CAM["look_from"], STATIC_CAM["look_at"],
                                                STATIC_CAM["up"])
        self._static_proj = p.computeProjectionMatrixFOV(STATIC_CAM["fov"], 1.0,
                                                         STATIC_CAM["near"], STATIC_CAM["far"])
        self._gripper_proj = p.computeProjectionMatrixFOV(GRIPPER_CAM["fov"], 1.0,
                                                          GRIPPER_CAM["near"], GRIPPER_CAM["far"])
        self.reset()

    # ------------------------------------------------------------------ build
    def _build(self):
        c = self.cid
        p.resetSimulation(physicsClientId=c)
        p.setPhysicsEngineParameter(fixedTimeStep=PHYSICS_DT, numSolverIterations=50,
                                    deterministicOverlappingPairs=1, physicsClientId=c)
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        self.floor = p.loadURDF(self._urdfs["floor"], [0, 0, 0], useFixedBase=True,
                                physicsClientId=c)
        self.table = p.loadURDF(self._urdfs["table"], [0, 0, 0], useFixedBase=True,
                                physicsClientId=c)
        self.robot = p.loadURDF(self._urdfs["panda"], S.ROBOT_BASE_POS,
                                useFixedBase=True, physicsClientId=c)
        self.blocks = {}
        for col in S.BLOCKS:
            self.blocks[col] = p.loadURDF(self._urdfs[f"block_{col}"], [0, 0, 1], physicsClientId=c)
        self.body_names = {self.floor: "floor", self.table: "table", self.robot: "robot"}
        for col, uid in self.blocks.items():
            self.body_names[uid] = f"block_{col}"
        self.link_names = {}
        for uid in (self.floor, self.table, self.robot, *self.blocks.values()):
            names = {-1: "base_link"}
            for j in range(p.getNumJoints(uid, physicsClientId=c)):
                names[j] = p.getJointInfo(uid, j, physicsClientId=c)[12].decode()
            self.link_names[uid] = names
        tj = {p.getJointInfo(self.table, j, physicsClientId=c)[1].decode(): j
              for j in range(p.getNumJoints(self.table, physicsClientId=c))}
        self.j_drawer = tj["base__drawer"]
        self.j_slide = tj["base__slide"]
        self.j_button = tj["base__button"]
        self.j_switch = tj["base__switch"]
        self.l_led = tj["base__led"]
        self.l_bulb = tj["base__lightbulb"]
        # robot IK limits (9 movable dofs: 7 arm + 2 fingers)
        movable = ARM_JOINTS + FINGER_JOINTS
        self._ll = [p.getJointInfo(self.robot, j, physicsClientId=c)[8] for j in movable]
        self._ul = [p.getJointInfo(self.robot, j, physicsClientId=c)[9] for j in movable]
        self._jr = [u - l for l, u in zip(self._ll, self._ul)]
        self._rest = list(S.NEUTRAL_JOINTS) + [0.04, 0.04]
        for j in FINGER_JOINTS:
            p.changeDynamics(self.robot, j, lateralFriction=1.5, spinningFriction=0.001,
                             physicsClientId=c)
        for uid in self.blocks.values():
            p.changeDynamics(uid, -1, lateralFriction=1.2, spinningFriction=0.001,
                             rollingFriction=0.0, linearDamping=0.04, angularDamping=0.04,
                             physicsClientId=c)
        # table links: moderate friction (block-table mu = 1.2 * 0.4 ~ 0.5, so pushed
        # blocks slide instead of tipping over)
        for link in range(-1, p.getNumJoints(self.table, physicsClientId=c)):
            p.changeDynamics(self.table, link, lateralFriction=0.4, physicsClientId=c)
        self._set_table_motors()
        self._saved_state = p.saveState(physicsClientId=c)
        # kinematic shadow of the arm for IK
        if self._ik_cid is None:
            self._ik_cid = p.connect(p.DIRECT)
            self._ik_robot = p.loadURDF(self._urdfs["panda"], S.ROBOT_BASE_POS,
                                        useFixedBase=True, physicsClientId=self._ik_cid)

    def _set_table_motors(self):
        c = self.cid
        # passive joints: velocity motors with a small force act as Coulomb friction
        for j, f in ((self.j_drawer, 4.0), (self.j_slide, 4.0), (self.j_switch, 3.0)):
            p.setJointMotorControl2(self.table, j, p.VELOCITY_CONTROL, targetVelocity=0.0,
                                    force=f, physicsClientId=c)
        # button: a weak spring back to 0 (up)
        p.setJointMotorControl2(self.table, self.j_button, p.POSITION_CONTROL, targetPosition=0.0,
                                positionGain=0.2, velocityGain=1.0, force=4.0, physicsClientId=c)

    # ------------------------------------------------------------------ reset
    def reset(self, robot_obs=None, scene_obs=None):
        c = self.cid
        robot_obs = np.asarray(robot_obs_neutral() if robot_obs is None else robot_obs, float)
        scene_obs = np.asarray(default_scene_obs() if scene_obs is None else scene_obs, float)
        if robot_obs.shape != (15,) or scene_obs.shape != (24,):
            raise ValueError("robot_obs must have 15 values and scene_obs 24")
        p.restoreState(self._saved_state, physicsClientId=c)
        q = robot_obs[7:14]
        for j, v in zip(ARM_JOINTS, q):
            p.resetJointState(self.robot, j, float(v), 0.0, physicsClientId=c)
        self.gripper_action = 1 if robot_obs[14] >= 0 else -1
        width = float(np.clip(robot_obs[6], 0.0, 0.08))
        for j in FINGER_JOINTS:
            p.resetJointState(self.robot, j, width / 2, 0.0, physicsClientId=c)
        self._arm_target = [float(v) for v in q]
        self._apply_arm_control()
        self._apply_gripper_control()
        # articulated scene
        for j, v in ((self.j_slide, scene_obs[0]), (self.j_drawer, scene_obs[1]),
                     (self.j_button, scene_obs[2]), (self.j_switch, scene_obs[3])):
            p.resetJointState(self.table, j, float(v), 0.0, physicsClientId=c)
        self._set_table_motors()
        self.lightbulb = int(round(scene_obs[4]))
        self.led = int(round(scene_obs[5]))
        self._button_latched = scene_obs[2] > S.BUTTON_THRESHOLD
        self._switch_prev = float(scene_obs[3])
        self._update_light_colors(force=True)
        for k, col in enumerate(S.BLOCKS):
            pose = scene_obs[6 + 6 * k: 12 + 6 * k]
            p.resetBasePositionAndOrientation(self.blocks[col], pose[:3].tolist(),
                                              p.getQuaternionFromEuler(pose[3:].tolist()),
                                              physicsClientId=c)
            p.resetBaseVelocity(self.blocks[col], [0, 0, 0], [0, 0, 0], physicsClientId=c)
        self.num_steps = 0
        return self.get_obs()

    def reset_to_condition(self, cond: dict, robot_obs=None):
        """Reset to a random scene satisfying a CALVIN-style condition (uses self.rng)."""
        from .conditions import scene_obs_for_condition
        return self.reset(robot_obs, scene_obs_for_condition(cond, self.rng))

    # ------------------------------------------------------------------ control
    def _apply_arm_control(self):
        p.setJointMotorControlArray(self.robot, ARM_JOINTS, p.POSITION_CONTROL,
                                    targetPositions=self._arm_target, forces=ARM_FORCES,
                                    positionGains=[ARM_KP] * 7, velocityGains=[1.0] * 7,
                                    physicsClientId=self.cid)

    def _apply_gripper_control(self):
        tgt = 0.04 if self.gripper_action > 0 else 0.0
        for j in FINGER_JOINTS:
            p.setJointMotorControl2(self.robot, j, p.POSITION_CONTROL, targetPosition=tgt,
                                    force=FINGER_FORCE, maxVelocity=0.2, physicsClientId=self.cid)

    def _ik(self, pos, quat):
        """Null-space IK (rest pose = CALVIN neutral) solved on a kinematic shadow copy of the
        arm (its own pybullet client, so the simulation itself is untouched): a few
        re-seeded null-space passes, and plain damped least squares from the current joints
        as a fallback when the null-space solution misses the target by more than 1 mm."""
        c, r = self._ik_cid, self._ik_robot
        cur = [s[0] for s in p.getJointStates(self.robot, ARM_JOINTS, physicsClientId=self.cid)]
        pos = [float(v) for v in pos]
        quat = [float(v) for v in quat]

        def seed(q):
            for j, v in zip(ARM_JOINTS, q):
                p.resetJointState(r, j, v, physicsClientId=c)

        def err(q):
            seed(q)
            ls = p.getLinkState(r, TCP_LINK, computeForwardKinematics=True, physicsClientId=c)
            dp = np.linalg.norm(np.subtract(ls[4], pos))
            dq = 1.0 - abs(float(np.dot(ls[5], quat)))
            return dp + dq

        seed(cur)
        best, best_e = cur, None
        for _ in range(3):
            sol = p.calculateInverseKinematics(r, TCP_LINK, pos, quat, lowerLimits=self._ll,
                                               upperLimits=self._ul, jointRanges=self._jr,
                                               restPoses=self._rest, maxNumIterations=50,
                                               residualThreshold=1e-4, physicsClientId=c)
            q = [float(v) for v in sol[:7]]
            e = err(q)
            if best_e is None or e < best_e:
                best, best_e = q, e
            if e < 1e-3:
                return best
        seed(cur)
        sol = p.calculateInverseKinematics(r, TCP_LINK, pos, quat, maxNumIterations=100,
                                           residualThreshold=1e-5, physicsClientId=c)
        q = [float(v) for v in sol[:7]]
        if err(q) < best_e:
            best = q
        return best

    def step(self, action, relative: bool = True):
        a = np.asarray(action, dtype=float).reshape(-1)
        if a.shape != (7,):
            raise ValueError(f"action must have 7 components, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("action contains NaN/Inf")
        g = a[6]
        if g not in (-1.0, 1.0):
            raise ValueError(f"gripper action must be exactly -1 or 1, got {g}")
        if relative:
            d = np.clip(a[:6], -1.0, 1.0)
            pos, euler = self._tcp_pose()
            tgt_pos = pos + d[:3] * POS_SCALE
            tgt_euler = euler + d[3:] * ORN_SCALE
        else:
            tgt_pos, tgt_euler = a[:3], a[3:6]
        quat = p.getQuaternionFromEuler(tgt_euler.tolist())
        self._arm_target = self._ik(tgt_pos, quat)
        self._apply_arm_control()
        self.gripper_action = int(g)
        self._apply_gripper_control()
        for _ in range(SUBSTEPS):
            p.stepSimulation(physicsClientId=self.cid)
            self._update_switches()
        self.num_steps += 1
        return self.get_obs()

    def _update_switches(self):
        c = self.cid
        b = p.getJointState(self.table, self.j_button, physicsClientId=c)[0]
        if not self._button_latched and b > S.BUTTON_THRESHOLD:
            self._button_latched = True
            self.led = 1 - self.led
        elif self._button_latched and b < S.BUTTON_THRESHOLD - 0.004:
            self._button_latched = False
        s = p.getJointState(self.table, self.j_switch, physicsClientId=c)[0]
        if self._switch_prev <= S.SWITCH_THRESHOLD < s:
            self.lightbulb = 1
        elif self._switch_prev >= S.SWITCH_THRESHOLD > s:
            self.lightbulb = 0
        self._switch_prev = s
        self._update_light_colors()

    def _update_light_colors(self, force=False):
        state = (self.led, self.lightbulb)
        if not force and state == getattr(self, "_colors_state", None):
            return
        self._colors_state = state
        p.changeVisualShape(self.table, self.l_led,
                            rgbaColor=S.LED_ON_RGBA if self.led else S.LED_OFF_RGBA,
                            physicsClientId=self.cid)
        p.changeVisualShape(self.table, self.l_bulb,
                            rgbaColor=S.BULB_ON_RGBA if self.lightbulb else S.BULB_OFF_RGBA,
                            physicsClientId=self.cid)

    # ------------------------------------------------------------------ observations
    def _tcp_pose(self):
        ls = p.getLinkState(self.robot, TCP_LINK, computeForwardKinematics=True,
                            physicsClientId=self.cid)
        return np.array(ls[4]), np.array(p.getEulerFromQuaternion(ls[5]))

    def get_robot_obs(self) -> np.ndarray:
        c = self.cid
        pos, euler = self._tcp_pose()
        js = p.getJointStates(self.robot, ARM_JOINTS + FINGER_JOINTS, physicsClientId=c)
        q = [s[0] for s in js]
        width = q[7] + q[8]
        return np.array([*pos, *euler, width, *q[:7], float(self.gripper_action)], dtype=np.float64)

    def get_scene_obs(self) -> np.ndarray:
        c = self.cid
        js = p.getJointStates(self.table, [self.j_slide, self.j_drawer, self.j_button, self.j_switch],
                              physicsClientId=c)
        out = [s[0] for s in js] + [float(self.lightbulb), float(self.led)]
        for col in S.BLOCKS:
            pos, quat = p.getBasePositionAndOrientation(self.blocks[col], physicsClientId=c)
            out += list(pos) + list(p.getEulerFromQuaternion(quat))
        return np.array(out, dtype=np.float64)

    def _render_static(self):
        s = self.static_size
        img = p.getCameraImage(s, s, self._static_view, self._static_proj,
                               renderer=p.ER_TINY_RENDERER, flags=p.ER_NO_SEGMENTATION_MASK,
                               physicsClientId=self.cid)[2]
        return np.asarray(img, dtype=np.uint8).reshape(s, s, 4)[:, :, :3].copy()

    def _render_gripper(self):
        g = self.gripper_size
        ls = p.getLinkState(self.robot, HAND_LINK, computeForwardKinematics=True,
                            physicsClientId=self.cid)
        pos = np.array(ls[4])
        rot = np.array(p.getMatrixFromQuaternion(ls[5])).reshape(3, 3)
        approach, finger_axis, side = rot[:, 2], rot[:, 1], rot[:, 0]
        eye = pos + 0.04 * approach - 0.05 * side
        target = eye + approach + 0.25 * side
        view = p.computeViewMatrix(eye.tolist(), target.tolist(), (-side).tolist())
        img = p.getCameraImage(g, g, view, self._gripper_proj, renderer=p.ER_TINY_RENDERER,
                               flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=self.cid)[2]
        return np.asarray(img, dtype=np.uint8).reshape(g, g, 4)[:, :, :3].copy()

    def get_obs(self) -> dict:
        if self.render:
            rgb_static = self._render_static()
            rgb_gripper = self._render_gripper()
        else:
            rgb_static = np.zeros((self.static_size, self.static_size, 3), np.uint8)
            rgb_gripper = np.zeros((self.gripper_size, self.gripper_size, 3), np.uint8)
        return {"rgb_static": rgb_static, "rgb_gripper": rgb_gripper,
                "robot_obs": self.get_robot_obs(), "scene_obs": self.get_scene_obs()}

    def _contacts(self, uid):
        """[body, link] pairs within CONTACT_TOL of body ``uid`` (closest-point queries, so
        the answer is valid right after a reset and has no side effects on the physics)."""
        out = set()
        for other, name in self.body_names.items():
            if other == uid or (uid == self.robot and other == self.floor):
                continue
            for cp in p.getClosestPoints(uid, other, CONTACT_TOL, physicsClientId=self.cid):
                out.add((name, self.link_names[other].get(cp[4], str(cp[4]))))
        return sorted([list(t) for t in out])

    def get_info(self) -> dict:
        """A JSON/msgpack-serialisable snapshot of the state (see tasks.Tasks)."""
        ro = self.get_robot_obs()
        so = self.get_scene_obs()
        blocks = {}
        for k, col in enumerate(S.BLOCKS):
            pose = so[6 + 6 * k: 12 + 6 * k]
            contacts = self._contacts(self.blocks[col])
            blocks[col] = {"pos": pose[:3].tolist(), "orn": pose[3:].tolist(),
                           "size": list(S.BLOCK_SIZE[col]), "contacts": contacts,
                           "robot_contact": any(c[0] == "robot" for c in contacts)}
        return {
            "robot_obs": ro.tolist(), "scene_obs": so.tolist(),
            "tcp_pos": ro[:3].tolist(), "tcp_orn": ro[3:6].tolist(),
            "gripper_width": float(ro[6]), "gripper_action": int(ro[14]),
            "arm_joints": ro[7:14].tolist(),
            "slider": float(so[0]), "drawer": float(so[1]), "button": float(so[2]),
            "switch": float(so[3]), "lightbulb": int(so[4]), "led": int(so[5]),
            "blocks": blocks,
            "robot_contacts": self._contacts(self.robot),
            "step": self.num_steps,
        }

    def task_success(self, start_info: dict, tasks) -> list:
        from .tasks import Tasks
        done = Tasks.get_task_info_for_set(start_info, self.get_info(), set(tasks))
        return [t for t in tasks if t in done]

    def measure_steps_per_second(self, n: int = 100) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.step([0, 0, 0, 0, 0, 0, 1])
        return n / (time.perf_counter() - t0)

    def close(self):
        if getattr(self, "_ik_cid", None) is not None:
            try:
                p.disconnect(physicsClientId=self._ik_cid)
            except p.error:
                pass
            self._ik_cid = None
        if self.cid is not None:
            try:
                p.disconnect(physicsClientId=self.cid)
            except p.error:
                pass
            self.cid = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
