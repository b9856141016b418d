"""Backend `calvin`: the real CALVIN simulator from a user's calvin_env checkout.

Use calvin_env at its HEAD, not the commit pinned by mees/calvin (the pinned one breaks
`turn_off_led`). Point the adapter at the checkout with `--calvin-env PATH` or the
environment variable CALVIN_ENV_ROOT. The scene is D, the tactile camera is dropped, and
rendering uses EGL when it is available (the dataset was rendered that way); pass
`--no-egl` to force the CPU renderer.

`CalvinBackend` holds the glue (observation layout, action conversion, task oracle) and
is tested against a fake calvin_env; `build_calvin_env` is the only code that touches
calvin_env's hydra configs.
"""

import ctypes.util
import os
import sys
from pathlib import Path

import numpy as np

SCENE = "calvin_scene_D"
CALVIN_TASKS_FILE = Path("conf") / "tasks" / "new_playtable_tasks.yaml"


def egl_available():
    """True when an EGL library can be loaded (pybullet's eglRenderer plugin needs it)."""
    return ctypes.util.find_library("EGL") is not None


def build_calvin_env(root, use_egl):
    """Instantiates calvin_env's PlayTableSimEnv (scene D, no tactile camera) and its Tasks oracle."""
    root = Path(root).resolve()
    if not (root / "calvin_env").is_dir():
        raise SystemExit(f"calvin backend: {root} is not a calvin_env checkout (no calvin_env/ package inside)")
    sys.path.insert(0, str(root))
    import hydra
    from omegaconf import OmegaConf, open_dict

    conf_dir = root / "conf"
    with hydra.initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        cfg = hydra.compose(config_name="config_data_collection", overrides=[f"scene={SCENE}"])
    with open_dict(cfg):
        if "tactile" in cfg.cameras:
            del cfg.cameras["tactile"]
    env = hydra.utils.instantiate(
        cfg.env, show_gui=False, use_vr=False, use_scene_info=True, use_egl=use_egl
    )
    tasks = hydra.utils.instantiate(OmegaConf.load(root / CALVIN_TASKS_FILE))
    return env, tasks


def _task_names(tasks):
    names = getattr(tasks, "tasks", None)
    if isinstance(names, dict):
        return sorted(names.keys())
    return []


class CalvinBackend:
    """Adapts calvin_env's PlayTableSimEnv and Tasks to the adapter's env interface."""

    def __init__(self, env, tasks):
        self.env = env
        self.tasks = tasks

    @staticmethod
    def _obs(o):
        rgb = o["rgb_obs"]
        return {
            "rgb_static": np.asarray(rgb["rgb_static"], dtype=np.uint8),
            "rgb_gripper": np.asarray(rgb["rgb_gripper"], dtype=np.uint8),
            "robot_obs": np.asarray(o["robot_obs"], dtype=float),
            "scene_obs": np.asarray(o["scene_obs"], dtype=float),
        }

    def reset(self, robot_obs=None, scene_obs=None):
        ro = None if robot_obs is None else np.asarray(robot_obs, dtype=float)
        so = None if scene_obs is None else np.asarray(scene_obs, dtype=float)
        return self._obs(self.env.reset(robot_obs=ro, scene_obs=so))

    def step(self, action, relative=True):
        a = np.asarray(action, dtype=float)
        if a.shape != (7,):
            raise ValueError(f"action: expected 7 values, found {a.size}")
        if a[6] not in (-1.0, 1.0):
            raise ValueError(f"action[6] (gripper): expected exactly -1 or 1, found {a[6]}")
        if relative:
            # calvin_env scales relative actions by 0.02 m / 0.05 rad itself.
            cmd = a
        else:
            cmd = (a[0:3], a[3:6], a[6])
        o, _reward, _done, _info = self.env.step(cmd)
        return self._obs(o)

    def get_info(self):
        return self.env.get_info()

    def task_success(self, start_info, tasks):
        end_info = self.env.get_info()
        done = self.tasks.get_task_info_for_set(start_info, end_info, set(tasks))
        return sorted(done)

    def close(self):
        close = getattr(self.env, "close", None)
        if close is not None:
            close()


def make(args):
    root = args.calvin_env or os.environ.get("CALVIN_ENV_ROOT")
    if not root:
        raise SystemExit("calvin backend: pass --calvin-env PATH or set CALVIN_ENV_ROOT to a calvin_env checkout")
    use_egl = (not args.no_egl) and egl_available()
    print(f"calvin backend: calvin_env at {root}, scene D, EGL {'on' if use_egl else 'off'}", file=sys.stderr)
    env, tasks = build_calvin_env(root, use_egl)
    backend = CalvinBackend(env, tasks)
    return backend, _task_names(tasks)
