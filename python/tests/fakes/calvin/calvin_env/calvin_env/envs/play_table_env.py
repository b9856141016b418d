from pathlib import Path

import hydra
import numpy as np

import calvin_env
from calvin_env.utils.utils import get_git_commit_hash

instances = []


class PlayTableSimEnv:
    # The real signature: hydra passes every key of env/play_table_env.yaml plus the call's kwargs.
    def __init__(self, robot_cfg, seed, use_vr, bullet_time_step, cameras, show_gui, scene_cfg, use_scene_info,
                 use_egl, control_freq=30):
        self.use_vr, self.show_gui, self.use_scene_info, self.use_egl = use_vr, show_gui, use_scene_info, use_egl
        self.cid = 0
        self.render_width = max([cameras[cam].width for cam in cameras]) if cameras else None
        self.robot = hydra.utils.instantiate(robot_cfg, cid=self.cid)
        self.scene = hydra.utils.instantiate(scene_cfg, p=None, cid=self.cid, np_random=np.random.default_rng(seed))
        self.cameras = [
            hydra.utils.instantiate(cameras[name], cid=self.cid, robot_id=self.robot.robot_uid,
                                    objects=self.scene.get_objects())
            for name in cameras
        ]
        self.commit = get_git_commit_hash(Path(calvin_env.__file__))
        self.closed = 0
        instances.append(self)

    def close(self):
        if self.cid >= 0:
            self.closed += 1

    def get_camera_obs(self):
        rgb_obs, depth_obs = {}, {}
        for cam in self.cameras:
            rgb, depth = cam.render()
            rgb_obs[f"rgb_{cam.name}"] = rgb
            depth_obs[f"depth_{cam.name}"] = depth
        return rgb_obs, depth_obs

    def get_obs(self):
        rgb_obs, depth_obs = self.get_camera_obs()
        robot_obs, _ = self.robot.get_observation()
        return {"rgb_obs": rgb_obs, "depth_obs": depth_obs, "robot_obs": robot_obs, "scene_obs": self.scene.get_obs()}

    def reset(self, robot_obs=None, scene_obs=None):
        self.scene.reset(scene_obs)
        self.robot.reset(robot_obs)
        return self.get_obs()

    def get_info(self):
        _, robot_info = self.robot.get_observation()
        info = {"robot_info": robot_info}
        if self.use_scene_info:
            info["scene_info"] = self.scene.get_info()
        return info

    def step(self, action):
        x0 = float(self.robot.target_pos[0])
        self.robot.apply_action(action)
        # The toy world: the drawer follows the tcp's x.
        self.scene.scene_obs[1] += float(self.robot.target_pos[0]) - x0
        return self.get_obs(), 0, False, self.get_info()
