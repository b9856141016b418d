from calvin_env.camera.camera import Camera


class GripperCamera(Camera):
    def __init__(self, fov, aspect, nearval, farval, width, height, robot_id, cid, name, objects=None):
        self.width, self.height, self.cid, self.name = width, height, cid, name
