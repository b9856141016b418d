"""The `calvin` backend against a faithful fake calvin_env (CI has no calvin_env).

python/tests/fakes/calvin/ holds a fake hydra that composes configs the way hydra does
(defaults lists, nested groups, group overrides, interpolations read lazily), a fake
omegaconf, and a fake calvin_env checkout whose conf/ is a copy of the real config tree's
relevant files (mees/calvin_env 797142c) and whose classes have the real signatures. So a
missing override (calvin_env's own camera default is `no_cameras`), a tactile camera
(`tacto` is not there), a missing hydra-colorlog or an absolute action with a float gripper
fail here the way they fail for real.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fakes" / "calvin"
LIBS = FAKES / "libs"
COLORLOG = FAKES / "colorlog"
sys.path.insert(0, str(ROOT))

FAKE_MODULES = ("hydra", "omegaconf", "calvin_env", "hydra_plugins", "tacto")


def _forget_fakes():
    for m in list(sys.modules):
        if m.split(".")[0] in FAKE_MODULES:
            del sys.modules[m]


@pytest.fixture
def fake_calvin(tmp_path):
    """A copy of the fake checkout (outside any git repository) with the fake hydra,
    omegaconf and hydra-colorlog importable; everything is forgotten afterwards."""
    root = tmp_path / "calvin_env"
    shutil.copytree(FAKES / "calvin_env", root)
    added = [str(LIBS), str(COLORLOG)]
    sys.path[:0] = added
    _forget_fakes()
    try:
        yield root
    finally:
        for p in added + [str(root)]:
            while p in sys.path:
                sys.path.remove(p)
        _forget_fakes()


def _compose(root, overrides):
    import hydra

    with hydra.initialize_config_dir(config_dir=str(root / "conf"), version_base=None):
        return hydra.compose(config_name="config_data_collection", overrides=overrides)


def test_fake_hydra_composes_calvins_defaults(fake_calvin):
    sys.path.insert(0, str(fake_calvin))
    cfg = _compose(fake_calvin, ["scene=calvin_scene_D"])
    # calvin_env's own default camera group is empty: this is why the backend must override it.
    assert list(cfg.cameras.keys()) == []
    assert cfg.robot.filename == "franka_panda/panda_longer_finger.urdf"  # panda.yaml, then its own keys
    assert cfg.robot.gripper_joint_ids[1] == 11 and cfg.robot.max_joint_force == 200.0
    assert cfg["_group_"].vr_controller_id == 3  # hydra >= 1.2 takes `# @package _group_` literally
    assert cfg.env.robot_cfg.base_position[0] == -0.34  # interpolations through two nodes
    assert "hydra" not in cfg
    cfg = _compose(fake_calvin, ["cameras=static_gripper_tactile"])
    assert list(cfg.cameras.keys()) == ["static", "gripper", "tactile"]
    assert cfg.env.cameras.gripper.width == 84
    import hydra.errors
    from omegaconf import ConfigTypeError, open_dict

    with pytest.raises(ConfigTypeError):
        del cfg.cameras["tactile"]  # struct mode, as compose returns it
    with open_dict(cfg):
        del cfg.cameras["tactile"]
    assert list(cfg.env.cameras.keys()) == ["static", "gripper"]  # read lazily, so the deletion shows
    with pytest.raises(hydra.errors.MissingConfigException, match="cameras/all_of_them"):
        _compose(fake_calvin, ["cameras=all_of_them"])
    (fake_calvin / "conf" / "lights").mkdir()
    (fake_calvin / "conf" / "lights" / "on.yaml").write_text("enabled: true\n")
    with pytest.raises(hydra.errors.ConfigCompositionException, match="No match in the defaults list"):
        _compose(fake_calvin, ["lights=on"])
    assert _compose(fake_calvin, ["+lights=on"]).lights.enabled is True
    with pytest.raises(hydra.errors.ConfigCompositionException, match="not in struct"):
        _compose(fake_calvin, ["env.no_such_key=1"])
    assert _compose(fake_calvin, ["env.use_egl=false"]).env.use_egl is False


def test_the_old_overrides_fail_as_they_do_for_real(fake_calvin):
    """Scene only (what the backend used to compose): an env without cameras, which fails at
    the first reset; with the tactile camera, instantiation fails on the missing tacto."""
    import hydra
    from vw2_adapter.calvin_backend import CalvinBackend

    sys.path.insert(0, str(fake_calvin))
    (fake_calvin / ".git").mkdir()  # calvin_env logs its git commit (the backend copes without one)
    cfg = _compose(fake_calvin, ["scene=calvin_scene_D"])
    env = hydra.utils.instantiate(cfg.env, show_gui=False, use_vr=False, use_scene_info=True, use_egl=False)
    with pytest.raises(KeyError, match="rgb_static"):
        CalvinBackend(env, None).reset()
    cfg = _compose(fake_calvin, ["cameras=static_gripper_tactile"])
    with pytest.raises(hydra.errors.InstantiationException) as e:
        hydra.utils.instantiate(cfg.env, show_gui=False, use_vr=False, use_scene_info=True, use_egl=False)
    assert "tactile_sensor.TactileSensor" in str(e.value)


def test_build_uses_scene_d_static_and_gripper_cameras_and_keeps_the_defaults(fake_calvin):
    from vw2_adapter.calvin_backend import CalvinBackend, build_calvin_env

    env, tasks = build_calvin_env(fake_calvin, use_egl=False)
    assert [c.name for c in env.cameras] == ["static", "gripper"]
    assert env.render_width == 200
    assert env.robot.filename == "franka_panda/panda_longer_finger.urdf"
    assert env.use_egl is False and env.show_gui is False and env.use_vr is False
    assert env.use_scene_info is True
    assert env.commit.startswith("unknown")  # not a git checkout: calvin_env's commit log is patched
    assert len(tasks.tasks) == 34 and "open_drawer" in tasks.tasks
    b = CalvinBackend(env, tasks)
    obs = b.reset(scene_obs=[0.0] * 24)
    assert set(obs) == {"rgb_static", "rgb_gripper", "robot_obs", "scene_obs"}
    assert obs["rgb_static"].shape == (200, 200, 3) and obs["rgb_gripper"].shape == (84, 84, 3)
    start = b.get_info()
    for _ in range(7):
        b.step([1, 0, 0, 0, 0, 0, 1])
    # Relative actions go to calvin_env as 7-vectors (it scales them itself).
    first = env.robot.actions[0]
    assert len(first) == 7 and not isinstance(first, tuple)
    assert b.task_success(start, ["open_drawer", "turn_off_led"]) == ["open_drawer"]
    # Absolute actions go as (pos, orn, gripper) with an int gripper, which calvin_env requires.
    b.step([0.1, 0.2, 0.3, 0, 0, 0, -1], relative=False)
    last = env.robot.actions[-1]
    assert isinstance(last, tuple) and type(last[2]) is int and last[2] == -1
    assert env.robot.gripper_action == -1
    for bad in ([0] * 6, [0, 0, 0, 0, 0, 0, 0.5]):
        with pytest.raises(ValueError, match="action"):
            b.step(bad)
    b.close()
    assert env.closed == 1 and env.cid == -1
    env.close()  # what PlayTableSimEnv.__del__ does: no second disconnect
    assert env.closed == 1


def test_a_float_gripper_fails_in_calvin_env_as_reported(fake_calvin):
    """What the backend used to send: the robot calls len() on a numpy.float64."""
    from vw2_adapter.calvin_backend import build_calvin_env

    env, _tasks = build_calvin_env(fake_calvin, use_egl=False)
    env.reset()
    with pytest.raises(TypeError, match="numpy.float64' has no len"):
        env.step((np.zeros(3), np.zeros(3), np.float64(1.0)))


def test_missing_hydra_colorlog_is_a_clear_error(fake_calvin):
    from vw2_adapter.calvin_backend import build_calvin_env

    sys.path.remove(str(COLORLOG))
    with pytest.raises(SystemExit, match="pip install hydra-colorlog") as e:
        build_calvin_env(fake_calvin, use_egl=False)
    assert "hydra/job_logging/colorlog" in str(e.value)


def test_a_missing_requirement_is_a_clear_error(fake_calvin):
    from vw2_adapter.calvin_backend import build_calvin_env

    (fake_calvin / "calvin_env" / "envs" / "play_table_env.py").write_text("import gym\n")
    with pytest.raises(SystemExit, match="cannot import calvin_env.*gym.*setup_calvin.sh"):
        build_calvin_env(fake_calvin, use_egl=False)


def test_not_a_checkout_is_a_clear_error(tmp_path):
    from vw2_adapter.calvin_backend import build_calvin_env

    with pytest.raises(SystemExit, match="is not a calvin_env checkout"):
        build_calvin_env(tmp_path, use_egl=False)


def test_the_renderer_is_egl_only_on_a_gpu():
    from vw2_adapter.calvin_backend import choose_renderer

    def probe(gl):
        return lambda: (gl, "ok" if gl else "pybullet's EGL plugin did not load (exit status -11)")

    yes, no = (lambda: True), (lambda: False)
    use, why = choose_renderer("auto", probe("llvmpipe (LLVM 15.0.6, 256 bits)"), yes)
    assert not use and "TinyRenderer" in why and "llvmpipe" in why and "software" in why
    use, why = choose_renderer("auto", probe("NVIDIA H100 80GB HBM3/PCIe/SSE2"), yes)
    assert use and "EGL" in why and "NVIDIA" in why
    use, why = choose_renderer("auto", probe(None), yes)
    assert not use and "did not load" in why
    use, why = choose_renderer("auto", probe("NVIDIA"), no)
    assert not use and "no libEGL" in why
    assert choose_renderer("egl", probe("llvmpipe"), yes)[0] is True
    assert choose_renderer("tiny", probe("NVIDIA"), yes)[0] is False
    with pytest.raises(SystemExit, match="--renderer"):
        choose_renderer("opengl", probe(None), yes)


def test_the_egl_probe_reports_what_the_plugin_printed(tmp_path):
    from vw2_adapter import calvin_backend

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho GL_VENDOR=Mesa\necho 'GL_RENDERER=llvmpipe (LLVM 15.0.6, 256 bits)'\n"
                    "echo VW2_EGL_PLUGIN 0\n")
    fake.chmod(0o755)
    assert calvin_backend.probe_egl(str(fake)) == ("llvmpipe (LLVM 15.0.6, 256 bits)", "ok")
    fake.write_text("#!/bin/sh\necho VW2_EGL_PLUGIN -1\n")
    gl, why = calvin_backend.probe_egl(str(fake))
    assert gl is None and "did not load" in why
    fake.write_text("#!/bin/sh\nkill -SEGV $$\n")
    assert calvin_backend.probe_egl(str(fake))[0] is None


def _server(root, *extra, colorlog=True):
    paths = [str(ROOT), str(LIBS)] + ([str(COLORLOG)] if colorlog else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen(
        [sys.executable, "-m", "vw2_adapter.server", "--backend", "calvin", "--calvin-env", str(root), *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )


def test_server_speaks_the_protocol_with_the_fake_calvin(tmp_path):
    from vw2_adapter.protocol import read_frame, write_frame

    root = tmp_path / "calvin_env"
    shutil.copytree(FAKES / "calvin_env", root)
    p = _server(root, "--renderer", "tiny")
    try:
        def call(op, **kw):
            write_frame(p.stdin, dict(v=1, id=1, op=op, **kw))
            rep = read_frame(p.stdout)
            assert rep["ok"], rep
            return rep

        hello = call("hello")
        assert hello["backend"] == "calvin" and len(hello["tasks"]) == 34 and "turn_off_led" in hello["tasks"]
        obs = call("reset", robot_obs=None, scene_obs=None)["obs"]
        assert obs["rgb_static"]["shape"] == [200, 200, 3] and obs["rgb_gripper"]["shape"] == [84, 84, 3]
        info = call("info")["info"]
        for _ in range(7):
            call("step", action=[1, 0, 0, 0, 0, 0, 1], relative=True)
        assert call("task_success", start_info=info, tasks=["open_drawer"])["completed"] == ["open_drawer"]
        # A start_info that lost its token is rebuilt from the wire copy (lists → arrays).
        wire_only = {"state": info["state"]}
        assert call("task_success", start_info=wire_only, tasks=["open_drawer"])["completed"] == ["open_drawer"]
        call("step", action=[0.1, 0.2, 0.3, 0, 0, 0, -1], relative=False)
        call("close")
        assert p.wait(timeout=10) == 0
    finally:
        p.kill()
        err = p.stderr.read().decode()
        assert "calvin backend: calvin_env at" in err and "renderer TinyRenderer (asked for" in err, err


def test_server_without_colorlog_exits_with_the_hint(tmp_path):
    root = tmp_path / "calvin_env"
    shutil.copytree(FAKES / "calvin_env", root)
    p = _server(root, "--no-egl", colorlog=False)
    _out, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert "hydra-colorlog" in err.decode(), err.decode()


def test_setup_calvin_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    script = ROOT.parent / "scripts" / "setup_calvin.sh"
    r = subprocess.run(["bash", str(script), str(tmp_path), "--venv", str(tmp_path / "venv")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "is not a calvin_env checkout" in r.stderr, r.stderr
    assert not (tmp_path / "venv").exists()
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items() if k != "CALVIN_ENV_ROOT"})
    assert r.returncode == 2 and "give the calvin_env checkout" in r.stderr
