"""The `calvin` backend's glue, tested against a fake calvin_env (CI has no calvin_env).

The fake mimics the interfaces the backend uses: hydra's initialize_config_dir /
compose / utils.instantiate, OmegaConf.load / open_dict, PlayTableSimEnv's
reset / step / get_info, and Tasks.get_task_info_for_set.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAKE_HYDRA = '''
import contextlib
calls = []

class _Node(dict):
    __getattr__ = dict.__getitem__

@contextlib.contextmanager
def initialize_config_dir(config_dir, version_base=None):
    calls.append(("initialize_config_dir", config_dir))
    yield

def compose(config_name, overrides=()):
    calls.append(("compose", config_name, list(overrides)))
    cameras = _Node(static=_Node(name="static"), gripper=_Node(name="gripper"), tactile=_Node(name="tactile"))
    return _Node(cameras=cameras, env=_Node(_target_="calvin_env.envs.play_table_env.PlayTableSimEnv", cameras=cameras))

class utils:
    @staticmethod
    def instantiate(cfg, **kwargs):
        calls.append(("instantiate", cfg.get("_target_"), kwargs))
        if cfg.get("_target_") == "calvin_env.envs.play_table_env.PlayTableSimEnv":
            from calvin_env.envs.play_table_env import PlayTableSimEnv
            return PlayTableSimEnv(cameras=list(cfg["cameras"].keys()), **kwargs)
        from calvin_env.envs.tasks import Tasks
        return Tasks(cfg["tasks"])
'''

FAKE_OMEGACONF = '''
import contextlib

class OmegaConf:
    @staticmethod
    def load(path):
        import hydra
        hydra.calls.append(("load", str(path)))
        return {"_target_": "calvin_env.envs.tasks.Tasks", "tasks": {"open_drawer": [], "turn_off_led": []}}

@contextlib.contextmanager
def open_dict(cfg):
    yield cfg
'''

FAKE_ENV = '''
import numpy as np

class PlayTableSimEnv:
    def __init__(self, cameras, **kwargs):
        self.cameras = cameras
        self.kwargs = kwargs
        self.actions = []
        self.drawer = 0.0

    def _obs(self):
        rgb = {"rgb_static": np.zeros((200, 200, 3), np.uint8), "rgb_gripper": np.ones((84, 84, 3), np.uint8)}
        if "tactile" in self.cameras:
            rgb["rgb_tactile"] = np.zeros((160, 120, 6), np.uint8)
        robot = np.arange(15, dtype=float)
        scene = np.zeros(24)
        scene[1] = self.drawer
        return {"rgb_obs": rgb, "depth_obs": {}, "robot_obs": robot, "scene_obs": scene}

    def reset(self, robot_obs=None, scene_obs=None):
        if scene_obs is not None:
            self.drawer = float(scene_obs[1])
        return self._obs()

    def step(self, action):
        self.actions.append(action)
        if not isinstance(action, tuple):
            self.drawer += 0.02 * float(action[0])
        return self._obs(), 0.0, False, self.get_info()

    def get_info(self):
        return {"scene_info": {"doors": {"base__drawer": {"current_state": np.array([self.drawer])}}}}
'''

FAKE_TASKS = '''
import numpy as np

class Tasks:
    def __init__(self, tasks):
        self.tasks = tasks

    def get_task_info_for_set(self, start_info, end_info, task_filter):
        assert isinstance(task_filter, set)
        s = start_info["scene_info"]["doors"]["base__drawer"]["current_state"]
        e = end_info["scene_info"]["doors"]["base__drawer"]["current_state"]
        assert isinstance(s, np.ndarray), type(s)
        done = set()
        if "open_drawer" in task_filter and float(e[0] - s[0]) > 0.12:
            done.add("open_drawer")
        return done
'''


def make_fakes(tmp):
    libs = tmp / "libs"
    (libs / "omegaconf").mkdir(parents=True)
    (libs / "hydra").mkdir(parents=True)
    (libs / "hydra" / "__init__.py").write_text(FAKE_HYDRA)
    (libs / "omegaconf" / "__init__.py").write_text(FAKE_OMEGACONF)
    root = tmp / "calvin_env_checkout"
    pkg = root / "calvin_env" / "envs"
    pkg.mkdir(parents=True)
    (root / "calvin_env" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "play_table_env.py").write_text(FAKE_ENV)
    (pkg / "tasks.py").write_text(FAKE_TASKS)
    (root / "conf" / "tasks").mkdir(parents=True)
    return libs, root


def test_build_uses_scene_d_drops_tactile_and_passes_egl(tmp_path):
    libs, root = make_fakes(tmp_path)
    sys.path.insert(0, str(libs))
    try:
        import hydra
        from vw2_adapter.calvin_backend import CalvinBackend, build_calvin_env

        env, tasks = build_calvin_env(root, use_egl=False)
        compose = [c for c in hydra.calls if c[0] == "compose"][0]
        assert compose[1] == "config_data_collection"
        assert "scene=calvin_scene_D" in compose[2]
        assert "tactile" not in env.cameras and "static" in env.cameras
        assert env.kwargs["use_egl"] is False and env.kwargs["show_gui"] is False
        assert env.kwargs["use_scene_info"] is True
        b = CalvinBackend(env, tasks)
        obs = b.reset(scene_obs=[0.0] * 24)
        assert set(obs) == {"rgb_static", "rgb_gripper", "robot_obs", "scene_obs"}
        assert obs["rgb_static"].shape == (200, 200, 3) and obs["rgb_gripper"].shape == (84, 84, 3)
        start = b.get_info()
        for _ in range(7):
            b.step([1, 0, 0, 0, 0, 0, 1])
        # Relative actions go to calvin_env as 7-vectors (it scales them itself).
        assert len(env.actions[0]) == 7 and not isinstance(env.actions[0], tuple)
        assert b.task_success(start, ["open_drawer", "turn_off_led"]) == ["open_drawer"]
        # Absolute actions go as (pos, orn, gripper).
        b.step([0.1, 0.2, 0.3, 0, 0, 0, -1], relative=False)
        assert isinstance(env.actions[-1], tuple) and env.actions[-1][2] == -1
        for bad in ([0] * 6, [0, 0, 0, 0, 0, 0, 0.5]):
            try:
                b.step(bad)
            except ValueError as e:
                assert "action" in str(e)
            else:
                raise AssertionError(f"{bad} was accepted")
    finally:
        sys.path.remove(str(libs))
        for m in ["hydra", "omegaconf"]:
            sys.modules.pop(m, None)


def test_not_a_checkout_is_a_clear_error(tmp_path):
    from vw2_adapter.calvin_backend import build_calvin_env

    try:
        build_calvin_env(tmp_path, use_egl=False)
    except SystemExit as e:
        assert "is not a calvin_env checkout" in str(e)
    else:
        raise AssertionError("accepted an empty folder")


def test_server_speaks_the_protocol_with_the_fake_calvin(tmp_path):
    from vw2_adapter.protocol import read_frame, write_frame

    libs, root = make_fakes(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(libs)]), PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.Popen(
        [sys.executable, "-m", "vw2_adapter.server", "--backend", "calvin", "--calvin-env", str(root), "--no-egl"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        def call(op, **kw):
            write_frame(p.stdin, dict(v=1, id=1, op=op, **kw))
            rep = read_frame(p.stdout)
            assert rep["ok"], rep
            return rep

        hello = call("hello")
        assert hello["backend"] == "calvin" and hello["tasks"] == ["open_drawer", "turn_off_led"]
        obs = call("reset", robot_obs=None, scene_obs=None)["obs"]
        assert obs["rgb_static"]["shape"] == [200, 200, 3]
        info = call("info")["info"]
        for _ in range(7):
            call("step", action=[1, 0, 0, 0, 0, 0, 1], relative=True)
        assert call("task_success", start_info=info, tasks=["open_drawer"])["completed"] == ["open_drawer"]
        # A start_info that lost its token is rebuilt from the wire copy (lists → arrays).
        wire_only = {"state": info["state"]}
        assert call("task_success", start_info=wire_only, tasks=["open_drawer"])["completed"] == ["open_drawer"]
        call("close")
        assert p.wait(timeout=10) == 0
    finally:
        p.kill()
        err = p.stderr.read().decode()
        assert "calvin backend: calvin_env at" in err, err
