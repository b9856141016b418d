import numpy as np


class Robot:
    def __init__(self, filename, base_position, base_orientation, initial_joint_positions, max_joint_force,
                 gripper_force, arm_joint_ids, gripper_joint_ids, gripper_joint_limits, tcp_link_id,
                 end_effector_link_id, cid, use_nullspace, max_velocity, use_ik_fast, euler_obs,
                 lower_joint_limits=(), upper_joint_limits=(), max_rel_pos=0.02, max_rel_orn=0.05,
                 magic_scaling_factor_pos=1, magic_scaling_factor_orn=1, use_target_pose=True, **kwargs):
        self.filename = filename
        self.max_rel_pos = max_rel_pos
        self.max_rel_orn = max_rel_orn
        self.gripper_action = 1
        self.robot_uid = 1
        self.actions = []
        self.reset()

    def load(self):
        pass

    def reset(self, robot_state=None):
        state = np.zeros(15) if robot_state is None else np.asarray(robot_state, dtype=float)
        self.target_pos = state[0:3].copy()
        self.target_orn = state[3:6].copy()

    def relative_to_absolute(self, action):
        assert len(action) == 7
        action = np.copy(action)
        rel_pos, rel_orn, gripper = np.split(action, [3, 6])
        self.target_pos += rel_pos * self.max_rel_pos
        self.target_orn += rel_orn * self.max_rel_orn
        return self.target_pos, self.target_orn, gripper

    def apply_action(self, action):
        # The branch of the real Robot.apply_action for non-dict actions, checks included.
        self.actions.append(action)
        if len(action) == 7:
            action = self.relative_to_absolute(action)
        target_ee_pos, target_ee_orn, self.gripper_action = action
        assert len(target_ee_pos) == 3
        assert len(target_ee_orn) in (3, 4)
        self.target_pos = np.asarray(target_ee_pos, dtype=float).copy()
        if not isinstance(self.gripper_action, int) and len(self.gripper_action) == 1:
            self.gripper_action = self.gripper_action[0]
        assert self.gripper_action in (-1, 1)

    def get_observation(self):
        obs = np.concatenate([self.target_pos, self.target_orn, [0.08], np.zeros(7), [self.gripper_action]])
        return obs, {"tcp_pos": tuple(self.target_pos), "gripper_action": self.gripper_action, "uid": self.robot_uid}
