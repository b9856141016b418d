"""vw2_sim: a CALVIN-like PlayTable in pybullet (headless, deterministic) with CALVIN's
observation/action contract, its 34-task success oracle and a scripted expert.

Modules:
    scene        geometry constants, frame documentation, URDF text
    playtable    PlayTableEnv (reset / step / get_info / task_success)
    conditions   robot_obs_neutral, scene_obs_for_condition, sample_condition
    tasks        TASK_NAMES, VALIDATION_SENTENCES, Tasks (oracle), feasible, condition_from_info
    expert       ScriptedExpert
    expert_eval  `python -m vw2_sim.expert_eval` (per-task success rates, CALVIN-style chains)
    bench        `python -m vw2_sim.bench` (env steps per second)
"""

from .conditions import (DEFAULT_CONDITION, robot_obs_neutral, sample_condition,
                         scene_obs_for_condition)
from .expert import ScriptedExpert
from .playtable import PlayTableEnv
from .tasks import (TASK_NAMES, VALIDATION_SENTENCES, Tasks, condition_from_info,
                    feasible)

__all__ = ["PlayTableEnv", "ScriptedExpert", "Tasks", "TASK_NAMES", "VALIDATION_SENTENCES",
           "feasible", "condition_from_info", "robot_obs_neutral", "scene_obs_for_condition",
           "sample_condition", "DEFAULT_CONDITION"]
