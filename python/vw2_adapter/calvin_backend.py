"""Backend `calvin`: the real CALVIN simulator from a user's calvin_env checkout.

Use calvin_env at its HEAD, not the commit pinned by mees/calvin (the pinned one breaks
`turn_off_led`). Point the adapter at the checkout with `--calvin-env PATH` or the
environment variable CALVIN_ENV_ROOT; `scripts/setup_calvin.sh` makes a virtualenv with
calvin_env's requirements and checks one reset.

The env is calvin_env's `config_data_collection` composed by hydra with scene D and the
camera group `static_and_gripper` (that config's own default is `no_cameras`); every other
default (robot `panda_longer_finger`, tasks `new_playtable_tasks`, ...) is kept. No tactile
camera, so the `tacto` submodule is not needed.

Renderer (`--renderer auto|egl|tiny`): `auto` (the default) uses pybullet's EGL plugin only
when it renders on a GPU. A probe process loads the plugin and reads the GL_RENDERER it
reports; a software EGL (Mesa llvmpipe / softpipe) is slower than pybullet's TinyRenderer
on the CPU, so TinyRenderer is used there. The choice and its reason go to stderr.
`--no-egl` is `--renderer tiny`.

`CalvinBackend` holds the glue (observation layout, action conversion, task oracle) and
is tested against a fake calvin_env whose hydra composes configs like hydra does;
`build_calvin_env` is the only code that touches calvin_env's hydra configs.
"""

import ctypes.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCENE = "calvin_scene_D"
CAMERAS = "static_and_gripper"
CONFIG = "config_data_collection"
OVERRIDES = [f"scene={SCENE}", f"cameras={CAMERAS}"]
RENDERERS = ("auto", "egl", "tiny")

# GL_RENDERER strings of software OpenGL implementations.
SOFTWARE_GL = re.compile(r"llvmpipe|softpipe|swrast|software|swiftshader", re.IGNORECASE)

# Loads pybullet's EGL plugin in a throw-away process (it may segfault on a misconfigured
# system) and lets it print the GL_VENDOR / GL_RENDERER it got.
_EGL_PROBE = r"""
import pkgutil, sys
import pybullet as p
cid = p.connect(p.DIRECT)
egl = pkgutil.get_loader("eglRenderer")
plugin = p.loadPlugin(egl.get_filename(), "_eglRendererPlugin") if egl else p.loadPlugin("eglRendererPlugin")
sys.stdout.flush()
print("VW2_EGL_PLUGIN", plugin, flush=True)
"""


def egl_available():
    """True when an EGL library can be loaded (pybullet's eglRenderer plugin needs it)."""
    return ctypes.util.find_library("EGL") is not None


def probe_egl(python=None, timeout=60.0):
    """Loads pybullet's EGL plugin in a child process; returns (gl_renderer or None, detail)."""
    try:
        r = subprocess.run(
            [python or sys.executable, "-c", _EGL_PROBE],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"the EGL probe failed ({e})"
    text = r.stdout + r.stderr
    m = re.search(r"VW2_EGL_PLUGIN (-?\d+)", text)
    if r.returncode != 0 or m is None or int(m.group(1)) < 0:
        return None, f"pybullet's EGL plugin did not load (exit status {r.returncode})"
    g = re.search(r"GL_RENDERER=(.*)", text)
    if g is None:
        return None, "pybullet's EGL plugin loaded but reported no GL_RENDERER"
    return g.group(1).strip(), "ok"


def choose_renderer(requested="auto", probe=probe_egl, have_egl=egl_available):
    """Returns (use_egl, reason) for `--renderer requested`."""
    if requested not in RENDERERS:
        raise SystemExit(f"calvin backend: --renderer {requested!r}: expected one of {', '.join(RENDERERS)}")
    if requested == "egl":
        return True, "EGL (asked for with --renderer egl)"
    if requested == "tiny":
        return False, "TinyRenderer (asked for with --renderer tiny)"
    if not have_egl():
        return False, "TinyRenderer (auto: no libEGL found)"
    gl, detail = probe()
    if gl is None:
        return False, f"TinyRenderer (auto: {detail})"
    if SOFTWARE_GL.search(gl):
        return False, (f"TinyRenderer (auto: EGL renders with {gl}, a software renderer, slower than "
                       "TinyRenderer on the CPU; --renderer egl forces it)")
    return True, f"EGL (auto: EGL renders on {gl})"


def _missing_colorlog(e):
    return "colorlog" in str(e) and type(e).__name__ == "MissingConfigException"


def build_calvin_env(root, use_egl):
    """Instantiates calvin_env's PlayTableSimEnv (scene D, static and gripper cameras) and its Tasks oracle."""
    root = Path(root).resolve()
    if not (root / "calvin_env").is_dir():
        raise SystemExit(f"calvin backend: {root} is not a calvin_env checkout (no calvin_env/ package inside)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        import hydra
        from omegaconf import open_dict

        import calvin_env.envs.play_table_env as play_table_env
    except ImportError as e:
        raise SystemExit(
            f"calvin backend: cannot import calvin_env from {root}: {type(e).__name__}: {e}. "
            "Install calvin_env's requirements into the interpreter that runs the adapter "
            "(scripts/setup_calvin.sh does it)"
        ) from e
    if not _in_git_repo(root):
        # calvin_env logs its git commit at construction and fails outside a git checkout
        # (e.g. an unpacked archive); only that log line is lost.
        play_table_env.get_git_commit_hash = lambda _path: "unknown (not a git checkout)"

    try:
        with hydra.initialize_config_dir(config_dir=str(root / "conf"), version_base=None):
            cfg = hydra.compose(config_name=CONFIG, overrides=OVERRIDES)
    except Exception as e:
        if _missing_colorlog(e):
            raise SystemExit(
                f"calvin backend: {type(e).__name__}: {e}. calvin_env's configs use hydra's colorlog "
                "logging: pip install hydra-colorlog (scripts/setup_calvin.sh installs it)"
            ) from e
        raise
    with open_dict(cfg):
        # Never the tactile sensor (it needs the tacto submodule), whatever the group holds.
        if "tactile" in cfg.cameras:
            del cfg.cameras["tactile"]
    missing = [c for c in ("static", "gripper") if c not in cfg.cameras]
    if missing:
        raise SystemExit(
            f"calvin backend: {CONFIG} with {OVERRIDES} has no {' and no '.join(missing)} camera "
            f"(cameras: {sorted(cfg.cameras.keys())})"
        )
    env = hydra.utils.instantiate(
        cfg.env, show_gui=False, use_vr=False, use_scene_info=True, use_egl=use_egl
    )
    tasks = hydra.utils.instantiate(cfg.tasks)
    return env, tasks


def _in_git_repo(path):
    return any((p / ".git").exists() for p in [path, *path.parents])


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
        missing = [k for k in ("rgb_static", "rgb_gripper") if k not in rgb]
        if missing:
            raise KeyError(f"calvin_env returned no {' and no '.join(missing)} (its cameras: {sorted(rgb)})")
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
            # calvin_env's robot wants the gripper of an absolute (pos, orn, gripper) tuple
            # as an int (it calls len() on anything else).
            cmd = (a[0:3], a[3:6], int(a[6]))
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
            # PlayTableSimEnv.__del__ closes again and raises on the dead client.
            if getattr(self.env, "cid", None) is not None:
                self.env.cid = -1


def _root(args):
    root = args.calvin_env or os.environ.get("CALVIN_ENV_ROOT")
    if not root:
        raise SystemExit("calvin backend: pass --calvin-env PATH or set CALVIN_ENV_ROOT to a calvin_env checkout")
    return root


def make(args):
    root = _root(args)
    requested = "tiny" if getattr(args, "no_egl", False) else (getattr(args, "renderer", None) or "auto")
    use_egl, reason = choose_renderer(requested)
    print(f"calvin backend: calvin_env at {root}, scene D, cameras {CAMERAS}, renderer {reason}", file=sys.stderr)
    env, tasks = build_calvin_env(root, use_egl)
    backend = CalvinBackend(env, tasks)
    # Said in `hello`, so the evaluation's log names the renderer at its default level.
    backend.notes = [f"calvin_env at {root}, scene D, renderer {reason}"]
    return backend, _task_names(tasks)


def main(argv=None):
    """`python -m vw2_adapter.calvin_backend --calvin-env PATH [--renderer R] [--steps N]`:
    builds the env, resets it, takes N random relative steps and prints the speed."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--calvin-env", default=None, help="path of a calvin_env checkout (default $CALVIN_ENV_ROOT)")
    p.add_argument("--renderer", default="auto", choices=RENDERERS)
    p.add_argument("--steps", type=int, default=1)
    args = p.parse_args(argv)
    root = _root(args)
    t0 = time.perf_counter()
    use_egl, reason = choose_renderer(args.renderer)
    env, tasks = build_calvin_env(root, use_egl)
    b = CalvinBackend(env, tasks)
    t1 = time.perf_counter()
    obs = b.reset()
    t2 = time.perf_counter()
    rng = np.random.default_rng(0)
    for _ in range(args.steps):
        a = np.concatenate([rng.uniform(-1, 1, 6), [rng.choice([-1.0, 1.0])]])
        obs = b.step(a)
    t3 = time.perf_counter()
    info = b.get_info()
    b.task_success(info, _task_names(tasks))
    shapes = {k: list(np.shape(v)) for k, v in obs.items()}
    print(f"calvin_env at {root}: renderer {reason}")
    print(f"built in {t1 - t0:.1f} s, reset in {t2 - t1:.2f} s, {len(_task_names(tasks))} tasks, obs {shapes}")
    if args.steps:
        print(f"{args.steps} steps in {t3 - t2:.2f} s: {args.steps / (t3 - t2):.1f} steps/s")
    b.close()


if __name__ == "__main__":
    main()
