"""Framing of the env adapter protocol: a 4-byte little-endian length, then a msgpack map."""

import struct

import msgpack

MAX_FRAME_BYTES = 64 * 1024 * 1024


class ProtocolError(Exception):
    """A malformed frame on the wire."""


def read_frame(stream):
    """Reads one frame; returns the decoded object, or None at a clean end of stream."""
    head = stream.read(4)
    if not head:
        return None
    if len(head) < 4:
        raise ProtocolError(f"truncated frame header: {len(head)} of 4 bytes")
    (n,) = struct.unpack("<I", head)
    if n > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {n} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    body = stream.read(n)
    if len(body) < n:
        raise ProtocolError(f"truncated frame: {len(body)} of {n} bytes")
    return msgpack.unpackb(body, raw=False)


def write_frame(stream, obj):
    """Writes one frame and flushes."""
    body = msgpack.packb(obj, use_bin_type=True)
    stream.write(struct.pack("<I", len(body)) + body)
    stream.flush()


def encode_image(arr):
    """uint8 HxWx3 numpy array -> {"shape": [H, W, 3], "data": bytes}."""
    import numpy as np

    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return {"shape": list(arr.shape), "data": arr.tobytes()}


def encode_obs(obs):
    """CALVIN observation dict -> wire form."""
    return {
        "rgb_static": encode_image(obs["rgb_static"]),
        "rgb_gripper": encode_image(obs["rgb_gripper"]),
        "robot_obs": [float(v) for v in obs["robot_obs"]],
        "scene_obs": [float(v) for v in obs["scene_obs"]],
    }


def to_wire(value):
    """Converts numpy scalars/arrays nested in dicts/lists into msgpack-friendly values."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if np is not None:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
    return value


def from_wire(value):
    """Inverse of to_wire for oracle input: flat lists of numbers become float arrays."""
    import numpy as np

    if isinstance(value, dict):
        return {k: from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return np.asarray(value, dtype=float)
        return [from_wire(v) for v in value]
    return value
