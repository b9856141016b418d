"""A tiny deterministic stand-in simulator for protocol tests (no physics, no rendering).

Its observations follow CALVIN's layout; images encode the step count so a test can
check that frames arrive in order. Fault-injection flags make it crash, hang or
write garbage after N steps, or refuse every reset after the first N of the process (as
calvin_env without cameras does), so the Rust side's error handling can be tested.
"""

import os
import sys
import time

import numpy as np

TASKS = ["open_drawer", "close_drawer", "turn_on_led", "turn_off_led"]


class FakeEnv:
    # What `hello` reports as the backend's start-up choices (a real backend names its renderer).
    notes = ["fake backend: synthetic frames, no renderer"]

    def __init__(self, crash_after=None, hang_after=None, garbage_after=None, refuse_reset_after=None):
        self.refuse_reset_after = refuse_reset_after
        self.resets = 0
        self.crash_after = crash_after
        self.hang_after = hang_after
        self.garbage_after = garbage_after
        self.steps = 0
        self.total_steps = 0  # fault injection counts steps over the whole session
        self.robot_obs = np.zeros(15)
        self.scene_obs = np.zeros(24)
        self.z0 = 0.0

    def reset(self, robot_obs=None, scene_obs=None):
        self.resets += 1
        if self.refuse_reset_after is not None and self.resets > self.refuse_reset_after:
            raise KeyError("rgb_static")
        self.steps = 0
        self.robot_obs = np.zeros(15) if robot_obs is None else np.asarray(robot_obs, dtype=float)
        self.scene_obs = np.zeros(24) if scene_obs is None else np.asarray(scene_obs, dtype=float)
        if robot_obs is None:
            self.robot_obs[14] = 1.0
        self.z0 = float(self.robot_obs[2])
        return self.obs()

    def obs(self):
        v = self.steps % 256
        return {
            "rgb_static": np.full((200, 200, 3), v, dtype=np.uint8),
            "rgb_gripper": np.full((84, 84, 3), v, dtype=np.uint8),
            "robot_obs": self.robot_obs.copy(),
            "scene_obs": self.scene_obs.copy(),
        }

    def step(self, action, relative=True):
        self.steps += 1
        self.total_steps += 1
        if self.crash_after is not None and self.total_steps > self.crash_after:
            os._exit(3)
        if self.hang_after is not None and self.total_steps > self.hang_after:
            time.sleep(3600)
        if self.garbage_after is not None and self.total_steps > self.garbage_after:
            out = os.fdopen(int(os.environ["VW2_ADAPTER_FD"]), "wb", closefd=False)
            body = b"\xc1 is never valid msgpack"
            out.write(len(body).to_bytes(4, "little") + body)
            out.flush()
            time.sleep(3600)
        a = np.asarray(action, dtype=float)
        if relative:
            self.robot_obs[0:3] += np.clip(a[0:3], -1, 1) * 0.02
            self.robot_obs[3:6] += np.clip(a[3:6], -1, 1) * 0.05
        else:
            self.robot_obs[0:6] = a[0:6]
        self.robot_obs[14] = a[6]
        # The drawer follows the tcp's x, so "open_drawer" can be completed.
        self.scene_obs[1] = max(0.0, self.robot_obs[0])
        # The LED follows the tcp's height since the reset: 0.1 m up turns it on,
        # 0.1 m down turns it off ("turn_on_led" / "turn_off_led").
        dz = self.robot_obs[2] - self.z0
        if dz > 0.1:
            self.scene_obs[5] = 1.0
        elif dz < -0.1:
            self.scene_obs[5] = 0.0
        return self.obs()

    def get_info(self):
        return {"drawer": float(self.scene_obs[1]), "led": float(self.scene_obs[5])}

    def task_success(self, start_info, tasks):
        now = self.get_info()
        done = []
        for t in tasks:
            if t == "open_drawer" and now["drawer"] - start_info["drawer"] > 0.12:
                done.append(t)
            if t == "close_drawer" and start_info["drawer"] - now["drawer"] > 0.12:
                done.append(t)
            if t == "turn_on_led" and start_info["led"] < 0.5 and now["led"] > 0.5:
                done.append(t)
            if t == "turn_off_led" and start_info["led"] > 0.5 and now["led"] < 0.5:
                done.append(t)
        return done

    def sample_task(self, seed, tasks):
        task = (tasks or ["open_drawer"])[0]
        robot = [0.0] * 15
        robot[14] = 1.0
        return {"task": task, "instruction": "pull the handle to open the drawer",
                "robot_obs": robot, "scene_obs": [0.0] * 24}

    def expert_action(self, task):
        # Moves +x so the fake drawer opens after 7 steps (every task but the
        # three below); -x closes it, +z / -z switch the LED on / off.
        if task == "close_drawer":
            return [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        if task == "turn_on_led":
            return [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        if task == "turn_off_led":
            return [0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]
        return [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]

    def close(self):
        pass


def make(args):
    def opt(name):
        v = getattr(args, name, None)
        return None if v is None else int(v)

    print("fake env ready", file=sys.stderr)
    return FakeEnv(opt("crash_after"), opt("hang_after"), opt("garbage_after"), opt("refuse_reset_after"))

