"""The official CALVIN evaluation states (../shared) make sense in PlayTable: after the
adapter maps them onto PlayTable's geometry and the scene settles, the inferred
condition equals the chain's initial condition."""

import json
from pathlib import Path

import numpy as np
import pytest

from vw2_adapter.playtable_backend import PlayTableBackend, adapt_calvin_scene_obs
from vw2_sim.tasks import condition_from_info

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "calvin" / "eval_sequences_with_states.json"


@pytest.fixture(scope="module")
def chains():
    assert SHARED.exists(), f"reference chains missing: {SHARED}"
    return json.loads(SHARED.read_text())


@pytest.fixture(scope="module")
def backend():
    b = PlayTableBackend(seed=0, render=False)
    yield b
    b.close()


def test_playtable_geometry_passes_unchanged():
    from vw2_sim.conditions import default_scene_obs

    so = default_scene_obs()
    assert np.allclose(adapt_calvin_scene_obs(so), so)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 5, 8, 13, 21])
def test_official_states_keep_their_condition(chains, backend, index):
    chain = chains[index]
    backend.reset(robot_obs=chain["robot_obs"], scene_obs=chain["scene_obs"])
    hold = [0, 0, 0, 0, 0, 0, 1]
    for _ in range(15):
        backend.step(hold)
    cond = condition_from_info(backend.get_info())
    want = chain["initial_condition"]
    for key in ("led", "lightbulb", "slider", "drawer", "red_block", "blue_block", "pink_block"):
        assert cond[key] == want[key], (index, key, cond[key], want[key])
