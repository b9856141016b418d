from calvin_env.camera.camera import Camera


class StaticCamera(Camera):
    def __init__(self, fov, aspect, nearval, farval, width, height, look_at, look_from, up_vector, cid, name,
                 robot_id=None, objects=None):
        self.width, self.height, self.cid, self.name = width, height, cid, name
