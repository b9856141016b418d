import numpy as np


class PlayTableScene:
    def __init__(self, objects, data_path, euler_obs, p, cid, global_scaling, surfaces, np_random, **kwargs):
        self.objects = objects
        self.scene_obs = np.zeros(24)

    def load(self):
        pass

    def reset(self, scene_obs=None):
        self.scene_obs = np.zeros(24) if scene_obs is None else np.asarray(scene_obs, dtype=float).copy()

    def step(self):
        pass

    def get_objects(self):
        return []

    def get_obs(self):
        return self.scene_obs.copy()

    def get_info(self):
        return {"doors": {"base__drawer": {"current_state": np.array([self.scene_obs[1]])}}}
