"""Tests of the PlayTable simulator (vw2_sim).  Run: python -m pytest python/tests -q"""

import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from vw2_sim import scene as S  # noqa: E402
from vw2_sim.conditions import (robot_obs_neutral, sample_condition,  # noqa: E402
                                scene_obs_for_condition)
from vw2_sim.expert import ScriptedExpert  # noqa: E402
from vw2_sim.expert_eval import condition_for_task, run_episode  # noqa: E402
from vw2_sim.playtable import PlayTableEnv  # noqa: E402
from vw2_sim.tasks import (TASK_NAMES, TASK_SPECS, VALIDATION_SENTENCES, Tasks,  # noqa: E402
                           feasible, relative_rotation_deg)


@pytest.fixture(scope="module")
def env():
    e = PlayTableEnv(seed=0, render=False)
    yield e
    e.close()


@pytest.fixture(scope="module")
def render_env():
    e = PlayTableEnv(seed=0, render=True)
    yield e
    e.close()


COND = {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed",
        "red_block": "table", "blue_block": "table", "pink_block": "slider_left", "grasped": 0}


# ---------------------------------------------------------------- observations
def test_observation_shapes_and_dtypes(render_env):
    obs = render_env.reset()
    assert set(obs) == {"rgb_static", "rgb_gripper", "robot_obs", "scene_obs"}
    assert obs["rgb_static"].shape == (200, 200, 3) and obs["rgb_static"].dtype == np.uint8
    assert obs["rgb_gripper"].shape == (84, 84, 3) and obs["rgb_gripper"].dtype == np.uint8
    assert obs["robot_obs"].shape == (15,) and obs["robot_obs"].dtype == np.float64
    assert obs["scene_obs"].shape == (24,) and obs["scene_obs"].dtype == np.float64
    # images are not blank
    assert obs["rgb_static"].std() > 10 and obs["rgb_gripper"].std() > 5
    obs2 = render_env.step([0, 0, 0, 0, 0, 0, 1])
    assert obs2["rgb_static"].shape == (200, 200, 3)
    ro = obs2["robot_obs"]
    assert 0.0 <= ro[6] <= 0.081 and ro[14] == 1.0


def test_no_render_gives_zero_images(env):
    obs = env.reset()
    assert obs["rgb_static"].shape == (200, 200, 3) and not obs["rgb_static"].any()
    assert obs["rgb_gripper"].shape == (84, 84, 3)


def test_led_visible_in_static_camera(render_env):
    imgs = []
    for led in (0, 1):
        so = scene_obs_for_condition({**COND, "led": led}, 0)
        imgs.append(render_env.reset(scene_obs=so)["rgb_static"].astype(int))
    assert np.abs(imgs[0] - imgs[1]).sum() > 0


def test_neutral_robot_obs_matches_fk(env):
    obs = env.reset()
    assert np.allclose(obs["robot_obs"], robot_obs_neutral(), atol=1e-4)


# ---------------------------------------------------------------- reset round trip
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reset_round_trip(env, seed):
    rng = np.random.default_rng(seed)
    cond = sample_condition(rng)
    so = scene_obs_for_condition(cond, rng)
    ro = robot_obs_neutral()
    ro[7:14] += rng.uniform(-0.2, 0.2, 7)
    ro[14] = -1.0
    ro[6] = 0.03
    obs = env.reset(robot_obs=ro, scene_obs=so)
    assert np.abs(obs["robot_obs"][7:14] - ro[7:14]).max() < 1e-3
    assert abs(obs["robot_obs"][6] - 0.03) < 1e-3 and obs["robot_obs"][14] == -1.0
    s = obs["scene_obs"]
    assert np.abs(s[:6] - so[:6]).max() < 1e-3
    assert np.abs(s[6:] - so[6:]).max() < 1e-2
    # still true after settling a few steps with the gripper closed (nothing falls/jumps)
    for _ in range(5):
        obs = env.step([0, 0, 0, 0, 0, 0, -1])
    assert np.abs(obs["scene_obs"][6:] - so[6:]).max() < 1e-2


def test_scene_obs_for_condition_semantics():
    rng = np.random.default_rng(0)
    so = scene_obs_for_condition({"slider": "left", "drawer": "open", "lightbulb": 1, "led": 1,
                                  "red_block": "slider_right", "blue_block": "table",
                                  "pink_block": "drawer"}, rng)
    assert so[0] > 0.15 and so[1] > 0.12 and so[3] > S.SWITCH_THRESHOLD
    assert so[4] == 1 and so[5] == 1
    red, blue, pink = so[6:12], so[12:18], so[18:24]
    assert abs(red[0] - S.SLOT_X["slider_right"]) < 0.03 and red[2] > S.PLANK_TOP
    assert S.TABLE_REGION_X[0] <= blue[0] <= S.TABLE_REGION_X[1]
    assert abs(blue[5] - math.pi / 2) <= math.pi / 8 + 1e-9
    assert pink[1] < S.DESK_Y[0] and pink[2] < S.TABLE_Z
    # table blocks never overlap
    for seed in range(20):
        so = scene_obs_for_condition({"red_block": "table", "blue_block": "table",
                                      "pink_block": "table"}, seed)
        xy = so[[6, 7, 12, 13, 18, 19]].reshape(3, 2)
        d = [np.linalg.norm(xy[i] - xy[j]) for i in range(3) for j in range(i + 1, 3)]
        assert min(d) > 0.1


# ---------------------------------------------------------------- determinism
def _rollout(e, so, actions):
    e.reset(robot_obs_neutral(), so)
    return [e.step(a) for a in actions]


def test_determinism_same_actions_same_obs():
    so = scene_obs_for_condition(COND, 5)
    rng = np.random.default_rng(0)
    actions = [np.concatenate([rng.uniform(-1, 1, 6), [1.0 if i < 10 else -1.0]]) for i in range(20)]
    e1 = PlayTableEnv(seed=3, render=True)
    e2 = PlayTableEnv(seed=3, render=True)
    try:
        # e1 first runs something else: reset must not depend on history
        _rollout(e1, scene_obs_for_condition({**COND, "drawer": "open"}, 9), actions[:8])
        o1 = _rollout(e1, so, actions)
        o2 = _rollout(e2, so, actions)
    finally:
        e1.close()
        e2.close()
    for a, b in zip(o1, o2):
        for k in a:
            assert np.array_equal(a[k], b[k]), k


# ---------------------------------------------------------------- actions
def test_gripper_action_must_be_pm1(env):
    env.reset()
    for bad in (0.0, 0.5, -0.99, float("nan")):
        with pytest.raises(ValueError):
            env.step([0, 0, 0, 0, 0, 0, bad])
    with pytest.raises(ValueError):
        env.step([0, 0, 0, 0, 0, 1])


def test_relative_action_is_clipped_and_moves_tcp(env):
    env.reset()
    p0 = env.get_info()["tcp_pos"]
    for _ in range(5):
        obs = env.step([5.0, 0, 0, 0, 0, 0, 1])       # clipped to 1 -> <= 2 cm/step
    dx = obs["robot_obs"][0] - p0[0]
    assert 0.05 < dx <= 0.1 + 1e-3
    assert abs(obs["robot_obs"][1] - p0[1]) < 0.01 and abs(obs["robot_obs"][2] - p0[2]) < 0.01


def test_absolute_action(env):
    env.reset()
    target = np.array([0.05, -0.15, 0.55])
    for _ in range(30):
        obs = env.step([*target, math.pi, 0.0, math.pi / 2, 1.0], relative=False)
    assert np.linalg.norm(obs["robot_obs"][:3] - target) < 0.01


def test_gripper_closes_and_opens(env):
    env.reset()
    for _ in range(10):
        obs = env.step([0, 0, 0, 0, 0, 0, -1])
    assert obs["robot_obs"][6] < 0.005 and obs["robot_obs"][14] == -1
    for _ in range(10):
        obs = env.step([0, 0, 0, 0, 0, 0, 1])
    assert obs["robot_obs"][6] > 0.075 and obs["robot_obs"][14] == 1


# ---------------------------------------------------------------- oracle
def test_task_names_and_sentences():
    assert len(TASK_NAMES) == 34 and TASK_NAMES == sorted(TASK_NAMES)
    assert set(VALIDATION_SENTENCES) == set(TASK_NAMES)
    assert VALIDATION_SENTENCES["open_drawer"] == "pull the handle to open the drawer"


def test_info_is_serialisable(env):
    env.reset()
    info = env.get_info()
    json.dumps(info)
    import msgpack
    assert msgpack.unpackb(msgpack.packb(info), strict_map_key=False)["drawer"] == info["drawer"]
    assert ["table", "base_link"] in info["blocks"]["red"]["contacts"]
    assert ["table", "plank_link"] in info["blocks"]["pink"]["contacts"]


def test_open_drawer_oracle(env):
    closed = scene_obs_for_condition(COND, 0)
    env.reset(scene_obs=closed)
    start = env.get_info()
    small = closed.copy()
    small[1] = 0.08
    env.reset(scene_obs=small)
    assert env.task_success(start, ["open_drawer", "close_drawer"]) == []
    opened = closed.copy()
    opened[1] = S.DRAWER_OPEN
    env.reset(scene_obs=opened)
    assert env.task_success(start, ["open_drawer", "close_drawer"]) == ["open_drawer"]
    assert Tasks.get_task_info_for_set(start, env.get_info(), {"open_drawer"}) == {"open_drawer"}
    # and back
    start2 = env.get_info()
    env.reset(scene_obs=closed)
    assert env.task_success(start2, ["open_drawer", "close_drawer"]) == ["close_drawer"]


def test_slider_oracle(env):
    so = scene_obs_for_condition(COND, 0)
    env.reset(scene_obs=so)
    start = env.get_info()
    so2 = so.copy()
    so2[0] = S.SLIDER_LEFT
    env.reset(scene_obs=so2)
    assert env.task_success(start, ["move_slider_left", "move_slider_right"]) == ["move_slider_left"]


def test_turn_on_led_by_pressing_button(env):
    env.reset(scene_obs=scene_obs_for_condition(COND, 0))
    start = env.get_info()
    assert start["led"] == 0
    x, y = S.BUTTON_XY
    # press the button with the closed gripper (absolute actions, 1 cm per step)
    press = list(np.linspace(0.58, 0.46, 13)) + [0.46] * 3 + list(np.linspace(0.47, 0.58, 12))
    for z in [0.58] * 25 + press:
        env.step([x, y, z, math.pi, 0, math.pi / 2, -1], relative=False)
    info = env.get_info()
    assert info["led"] == 1
    assert env.task_success(start, ["turn_on_led", "turn_off_led"]) == ["turn_on_led"]
    # a second press toggles it off
    start2 = info
    for z in press:
        env.step([x, y, z, math.pi, 0, math.pi / 2, -1], relative=False)
    assert env.get_info()["led"] == 0
    assert env.task_success(start2, ["turn_on_led", "turn_off_led"]) == ["turn_off_led"]


def test_lightbulb_oracle_from_switch_state(env):
    so = scene_obs_for_condition(COND, 0)
    env.reset(scene_obs=so)
    start = env.get_info()
    so2 = scene_obs_for_condition({**COND, "lightbulb": 1}, 0)
    env.reset(scene_obs=so2)
    assert env.task_success(start, ["turn_on_lightbulb", "turn_off_lightbulb"]) == ["turn_on_lightbulb"]


def test_block_oracles_from_states(env):
    base = scene_obs_for_condition(COND, 0)
    env.reset(scene_obs=base)
    start = env.get_info()
    # push red right by 0.12 on the table
    so = base.copy()
    so[6] += 0.12
    env.reset(scene_obs=so)
    done = Tasks.get_task_info(start, env.get_info())
    assert "push_red_block_right" in done and "push_red_block_left" not in done
    # rotate blue by -70 degrees (right)
    so = base.copy()
    so[17] -= math.radians(70)
    env.reset(scene_obs=so)
    done = Tasks.get_task_info(start, env.get_info())
    assert "rotate_blue_block_right" in done and "rotate_blue_block_left" not in done
    # a block floating in the air is not "rotated" (must rest on the table)
    so[14] += 0.1
    env.reset(scene_obs=so)
    assert "rotate_blue_block_right" not in Tasks.get_task_info(start, env.get_info())
    # stacked: red on blue
    so = scene_obs_for_condition({**COND, "red_block": "on_blue"}, 0)
    env.reset(scene_obs=so)
    assert "stack_block" in Tasks.get_task_info(start, env.get_info())
    stacked = env.get_info()
    env.reset(scene_obs=base)
    assert "unstack_block" in Tasks.get_task_info(stacked, env.get_info())


def test_relative_rotation():
    x, y, z = relative_rotation_deg([0, 0, 3.0], [0, 0, -3.0])
    assert abs(z - math.degrees(2 * math.pi - 6.0)) < 1e-6 and abs(x) < 1e-9 and abs(y) < 1e-9


def test_feasible():
    assert feasible("open_drawer", {**COND, "drawer": "closed"})
    assert not feasible("open_drawer", {**COND, "drawer": "open"})
    assert feasible("lift_pink_block_slider", COND)          # slot left, door right
    assert not feasible("lift_pink_block_slider", {**COND, "slider": "left"})
    assert not feasible("unstack_block", COND)
    for task in TASK_NAMES:
        assert feasible(task, condition_for_task(task, np.random.default_rng(0)))
    assert set(TASK_SPECS) == set(TASK_NAMES)


# ---------------------------------------------------------------- expert
@pytest.mark.parametrize("task", ["open_drawer", "move_slider_left", "turn_on_led",
                                  "turn_off_lightbulb", "lift_red_block_table",
                                  "rotate_blue_block_left", "push_pink_block_right",
                                  "place_in_drawer", "stack_block"])
def test_expert_solves(env, task):
    expert = ScriptedExpert(env)
    rng = np.random.default_rng(1)
    cond = condition_for_task(task, rng)
    ok, steps, _ = run_episode(env, expert, task, cond, rng, max_steps=360)
    assert ok, (task, cond)
    assert steps < 200


def test_expert_actions_are_valid(env):
    expert = ScriptedExpert(env)
    env.reset(scene_obs=scene_obs_for_condition(COND, 0))
    expert.reset("lift_blue_block_table")
    for _ in range(40):
        a = expert.act()
        assert a.shape == (7,) and np.all(np.abs(a[:6]) <= 1.0) and a[6] in (-1.0, 1.0)
        env.step(a)


def test_condition_from_info_round_trip(env):
    from vw2_sim.tasks import condition_from_info
    rng = np.random.default_rng(7)
    for _ in range(5):
        cond = sample_condition(rng)
        env.reset(scene_obs=scene_obs_for_condition(cond, rng))
        got = condition_from_info(env.get_info())
        assert got == cond
    cond = {**COND, "drawer": "open", "red_block": "drawer", "blue_block": "on_pink",
            "pink_block": "table"}
    env.reset(scene_obs=scene_obs_for_condition(cond, rng))
    got = condition_from_info(env.get_info())
    assert got == {**cond, "grasped": 0}


def test_reset_to_condition_uses_env_rng():
    a, b = PlayTableEnv(seed=11, render=False), PlayTableEnv(seed=11, render=False)
    try:
        oa, ob = a.reset_to_condition(COND), b.reset_to_condition(COND)
        assert np.array_equal(oa["scene_obs"], ob["scene_obs"])
    finally:
        a.close()
        b.close()


def test_expert_chain(env):
    from vw2_sim.expert_eval import run_chain
    res = run_chain(env, ScriptedExpert(env), np.random.default_rng(3), length=3)
    assert len(res) >= 1 and res[0][1]


def test_expert_eval_cli(tmp_path):
    from vw2_sim import expert_eval
    out = tmp_path / "r.json"
    assert expert_eval.main(["--episodes-per-task", "1", "--tasks", "close_drawer,turn_off_led",
                             "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["tasks"]) == {"close_drawer", "turn_off_led"}
    assert all(v["rate"] == 1.0 for v in r["tasks"].values())
