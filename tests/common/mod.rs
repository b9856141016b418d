//! Helpers shared by the integration tests (`mod common;` in each).
#![allow(dead_code)]

use vw2_policy::eval::chains::env_state_for_condition;
use vw2_policy::eval::{Chain, InitialCondition};

/// A chain the fake's expert completes in about 37 steps.
pub fn fake_chain() -> Chain {
    let cond = InitialCondition {
        led: 0,
        lightbulb: 0,
        slider: "right".into(),
        drawer: "closed".into(),
        red_block: "table".into(),
        blue_block: "table".into(),
        pink_block: "slider_left".into(),
        grasped: 0,
    };
    let (robot, scene) = env_state_for_condition(&cond);
    Chain {
        initial_condition: cond,
        tasks: [
            "open_drawer",
            "close_drawer",
            "turn_on_led",
            "turn_off_led",
            "open_drawer",
        ]
        .map(String::from)
        .to_vec(),
        robot_obs: robot.to_vec(),
        scene_obs: scene.to_vec(),
    }
}

/// The largest absolute difference between two tensors of the same shape (f32).
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
