"""Write PyTorch ``torch.save`` checkpoints without torch (standard library only).

The output uses the zip format that ``torch.save`` has produced by default since
torch 1.6, which is what candle's pickle reader
(``candle_core::pickle::read_all_with_key``) and ``torch.load`` understand::

    <archive>/data.pkl      protocol-2 pickle of a dict (optionally nested)
    <archive>/byteorder     "little"
    <archive>/data/<key>    raw little-endian storage bytes, one per tensor
    <archive>/version       "3\\n"

``<archive>`` is the stem of the output file name (``foo.pt`` -> ``foo/``), as
torch does when saving to a path. Every tensor is pickled the way torch pickles
a plain CPU tensor::

    torch._utils._rebuild_tensor_v2(
        persistent_load(('storage', torch.FloatStorage, '<key>', 'cpu', numel)),
        0, size_tuple, stride_tuple, False, collections.OrderedDict())

Tensors are always written contiguous (row-major strides, storage offset 0),
each with its own storage. The entries are stored uncompressed (ZIP_STORED).

To make :mod:`pickle` emit ``GLOBAL torch FloatStorage`` and
``GLOBAL torch._utils _rebuild_tensor_v2`` without torch being installed, stand-in
``torch`` and ``torch._utils`` modules are put into ``sys.modules`` for the
duration of the pickling only; whatever was there before (a real torch
included) is put back afterwards.

CLI (convert a safetensors file)::

    python3 -m vw2_sim_tools.torch_ckpt --from-safetensors IN.safetensors --out OUT.pt \\
        [--prefix network.] [--nest model] \\
        [--extra-key network.quant_to_dit_dim.weight=2x3] [--extra-key optimizer.step=1:i64]

Every tensor of IN is copied byte for byte under ``PREFIX + name``; each
``--extra-key KEY=SHAPE[:DTYPE]`` adds a tensor under exactly ``KEY`` (the
prefix is NOT applied) filled with :func:`pattern_values`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import math
import os
import pickle
import pickletools
import struct
import sys
import tempfile
import threading
import types
import zipfile

__all__ = [
    "DTYPES",
    "pattern_values",
    "parse_extra_key",
    "read_safetensors",
    "write_torch_checkpoint",
    "write_torch_checkpoint_raw",
    "main",
]

# dtype name (safetensors spelling) -> (torch storage class, element size, struct code)
# Only the storage classes that candle's pickle reader maps to a DType are listed.
DTYPES = {
    "F32": ("FloatStorage", 4, "f"),
    "F64": ("DoubleStorage", 8, "d"),
    "F16": ("HalfStorage", 2, "e"),
    "BF16": ("BFloat16Storage", 2, None),
    "U8": ("ByteStorage", 1, "B"),
    "I64": ("LongStorage", 8, "q"),
}

_DTYPE_ALIASES = {
    "f32": "F32",
    "float32": "F32",
    "float": "F32",
    "f64": "F64",
    "float64": "F64",
    "double": "F64",
    "f16": "F16",
    "float16": "F16",
    "half": "F16",
    "bf16": "BF16",
    "bfloat16": "BF16",
    "u8": "U8",
    "uint8": "U8",
    "i64": "I64",
    "int64": "I64",
    "long": "I64",
}

# Opcodes candle-core 0.11.1's pickle reader knows (src/pickle.rs, OpCode). Anything
# else makes it fail with "unknown op-code", so the writer checks its own output.
_CANDLE_OPCODES = frozenset(
    {
        "PROTO", "GLOBAL", "BINPUT", "LONG_BINPUT", "EMPTY_TUPLE", "REDUCE", "MARK",
        "BINUNICODE", "BININT", "TUPLE", "BINPERSID", "BININT1", "BININT2", "TUPLE1",
        "TUPLE2", "TUPLE3", "NEWTRUE", "NEWFALSE", "NONE", "BINGET", "LONG_BINGET",
        "SETITEM", "SETITEMS", "EMPTY_DICT", "BUILD", "STOP", "NEWOBJ", "EMPTY_LIST",
        "BINFLOAT", "APPEND", "APPENDS", "LONG1",
    }
)  # fmt: skip

_I32_MAX = 2**31 - 1


def _canon_dtype(name: str) -> str:
    if name in DTYPES:
        return name
    canon = _DTYPE_ALIASES.get(name.lower())
    if canon is None:
        raise ValueError(
            f"unsupported dtype {name!r}; expected one of {sorted(DTYPES)} "
            f"(or {sorted(_DTYPE_ALIASES)})"
        )
    return canon


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_shape(shape) -> tuple:
    shape = tuple(shape)
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise ValueError(f"bad shape {shape!r}: dims must be non-negative ints")
    return shape


def _contiguous_strides(shape) -> tuple:
    strides = []
    acc = 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))


# --------------------------------------------------------------------------------------
# Encoding values
# --------------------------------------------------------------------------------------


def _f32_to_bf16_bits(x: float) -> int:
    (bits,) = struct.unpack("<I", struct.pack("<f", x))
    if math.isnan(x):
        return ((bits >> 16) | 0x0040) & 0xFFFF  # quiet NaN, keep sign
    # round to nearest, ties to even
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def _encode(values, dtype: str) -> bytes:
    dtype = _canon_dtype(dtype)
    _, _, code = DTYPES[dtype]
    values = list(values)
    if dtype == "BF16":
        return struct.pack(f"<{len(values)}H", *(_f32_to_bf16_bits(float(v)) for v in values))
    if dtype in ("U8", "I64"):
        values = [int(v) for v in values]
    else:
        values = [float(v) for v in values]
    return struct.pack(f"<{len(values)}{code}", *values)


def pattern_values(numel: int, dtype: str = "F32") -> list:
    """Deterministic fill used for ``--extra-key`` tensors.

    Element ``i`` is ``((7 * i) % 17 - 8) / 16`` for float dtypes (exact in every
    float format, including f16/bf16), ``(7 * i) % 17 - 8`` for I64 and
    ``(7 * i) % 17`` for U8.
    """
    dtype = _canon_dtype(dtype)
    if dtype == "I64":
        return [(7 * i) % 17 - 8 for i in range(numel)]
    if dtype == "U8":
        return [(7 * i) % 17 for i in range(numel)]
    return [((7 * i) % 17 - 8) / 16.0 for i in range(numel)]


# --------------------------------------------------------------------------------------
# Pickling
# --------------------------------------------------------------------------------------


def _make_fake_torch():
    torch_mod = types.ModuleType("torch")
    torch_mod.__doc__ = "vw2_sim_tools stand-in used only while pickling"
    for storage_name, _, _ in DTYPES.values():
        cls = type(storage_name, (), {"__module__": "torch"})
        cls.__qualname__ = storage_name
        setattr(torch_mod, storage_name, cls)

    utils_mod = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("stand-in for torch._utils._rebuild_tensor_v2")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    _rebuild_tensor_v2.__name__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod._utils = utils_mod
    torch_mod.__path__ = []  # looks like a package, so "torch._utils" resolves
    return torch_mod, utils_mod


_FAKE_TORCH, _FAKE_TORCH_UTILS = _make_fake_torch()
_FAKE_LOCK = threading.Lock()
_MISSING = object()


@contextlib.contextmanager
def _fake_torch_modules():
    names = {"torch": _FAKE_TORCH, "torch._utils": _FAKE_TORCH_UTILS}
    with _FAKE_LOCK:
        saved = {name: sys.modules.get(name, _MISSING) for name in names}
        sys.modules.update(names)
        try:
            yield
        finally:
            for name, old in saved.items():
                if old is _MISSING:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = old


class _Storage:
    __slots__ = ("storage_type", "key", "numel")

    def __init__(self, storage_type, key: str, numel: int):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel


class _Tensor:
    __slots__ = ("storage", "shape", "stride")

    def __init__(self, storage: _Storage, shape: tuple, stride: tuple):
        self.storage = storage
        self.shape = shape
        self.stride = stride

    def __reduce_ex__(self, protocol):
        return (
            _FAKE_TORCH_UTILS._rebuild_tensor_v2,
            (self.storage, 0, self.shape, self.stride, False, collections.OrderedDict()),
        )


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def _check_candle_opcodes(data: bytes) -> None:
    for opcode, _, pos in pickletools.genops(data):
        if opcode.name not in _CANDLE_OPCODES:
            raise AssertionError(
                f"pickle opcode {opcode.name} at byte {pos} is not understood by "
                "candle's pickle reader"
            )


def _archive_name_for(path: str) -> str:
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    # keep the zip entry names simple; torch uses the plain file stem
    stem = "".join(c if (c.isalnum() or c in "._-") else "_" for c in stem)
    return stem or "archive"


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_torch_checkpoint_raw(
    path,
    tensors: dict,
    nest_key: str | None = None,
    archive_name: str | None = None,
) -> None:
    """Write ``{name: (shape, dtype, raw_little_endian_bytes)}`` as a torch checkpoint.

    With ``nest_key`` the state dict is stored as ``{nest_key: {name: tensor}}``
    (read it with ``read_all_with_key(path, Some(nest_key))``). The file is written
    to a temporary file next to ``path`` and moved into place with ``os.replace``.
    """
    path = os.fspath(path)
    archive = archive_name if archive_name is not None else _archive_name_for(path)
    if not archive or "/" in archive or "\\" in archive:
        raise ValueError(f"bad archive name {archive!r}")

    state = {}
    storages = []  # (key, bytes)
    for name, entry in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        shape, dtype, raw = entry
        shape = _check_shape(shape)
        dtype = _canon_dtype(dtype)
        storage_name, itemsize, _ = DTYPES[dtype]
        numel = _numel(shape)
        raw = bytes(raw)
        if len(raw) != numel * itemsize:
            raise ValueError(
                f"{name}: {len(raw)} bytes of data for shape {list(shape)} {dtype} "
                f"(expected {numel * itemsize})"
            )
        stride = _contiguous_strides(shape)
        if any(v > _I32_MAX for v in shape + stride):
            # candle reads sizes/strides as pickle BININT (i32) only
            raise ValueError(f"{name}: shape/stride too large for candle's reader")
        key = str(len(storages))
        storage = _Storage(getattr(_FAKE_TORCH, storage_name), key, numel)
        state[name] = _Tensor(storage, shape, stride)
        storages.append((key, raw))

    obj = {nest_key: state} if nest_key is not None else state

    buf = _pickle_bytes(obj)

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
                _add(zf, f"{archive}/data.pkl", buf)
                _add(zf, f"{archive}/byteorder", b"little")
                for key, raw in storages:
                    _add(zf, f"{archive}/data/{key}", raw)
                _add(zf, f"{archive}/version", b"3\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pickle_bytes(obj) -> bytes:
    out = io.BytesIO()
    with _fake_torch_modules():
        _TorchPickler(out, protocol=2).dump(obj)
    data = out.getvalue()
    _check_candle_opcodes(data)
    return data


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def write_torch_checkpoint(
    path,
    tensors: dict,
    nest_key: str | None = None,
    archive_name: str | None = None,
) -> None:
    """Write ``{name: (shape, data)}`` (or ``(shape, data, dtype)``) as a torch checkpoint.

    ``shape`` is a list of ints, ``data`` a flat row-major list of numbers with
    ``prod(shape)`` entries, ``dtype`` defaults to ``"F32"`` (also ``"I64"``,
    ``"F64"``, ``"F16"``, ``"BF16"``, ``"U8"``). With ``nest_key`` the file holds
    ``{nest_key: {name: tensor}}``. Written atomically (temp file + ``os.replace``).
    """
    raw = {}
    for name, entry in tensors.items():
        if len(entry) == 2:
            shape, data = entry
            dtype = "F32"
        elif len(entry) == 3:
            shape, data, dtype = entry
        else:
            raise ValueError(f"{name}: expected (shape, data) or (shape, data, dtype)")
        shape = _check_shape(shape)
        data = list(data)
        if len(data) != _numel(shape):
            raise ValueError(
                f"{name}: {len(data)} values for shape {list(shape)} "
                f"(expected {_numel(shape)})"
            )
        raw[name] = (shape, dtype, _encode(data, dtype))
    write_torch_checkpoint_raw(path, raw, nest_key=nest_key, archive_name=archive_name)


# --------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------


def read_safetensors(path) -> dict:
    """Read a safetensors file into ``{name: (shape, dtype, raw_bytes)}`` (header order).

    Supports the dtypes in :data:`DTYPES` (F32, F64, F16, BF16, U8, I64); the bytes
    are little-endian, exactly as stored in the file.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ValueError(f"{path}: header length {header_len} past end of file")
    header = json.loads(blob[8 : 8 + header_len].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is not a JSON object")
    buffer = memoryview(blob)[8 + header_len :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        shape = _check_shape(info["shape"])
        start, end = info["data_offsets"]
        if not (0 <= start <= end <= len(buffer)):
            raise ValueError(f"{path}: tensor {name!r} has bad data_offsets {start},{end}")
        expected = _numel(shape) * DTYPES[dtype][1]
        if end - start != expected:
            raise ValueError(
                f"{path}: tensor {name!r} has {end - start} bytes, expected {expected}"
            )
        out[name] = (list(shape), dtype, bytes(buffer[start:end]))
    return out


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def parse_extra_key(spec: str):
    """Parse ``KEY=SHAPE[:DTYPE]``; SHAPE is ``2x3``, ``4``, or ``scalar`` / empty for 0-D."""
    key, sep, rest = spec.rpartition("=")
    if not sep or not key:
        raise ValueError(f"--extra-key {spec!r}: expected KEY=SHAPE[:DTYPE], e.g. a.weight=2x3")
    shape_s, _, dtype = rest.partition(":")
    dtype = _canon_dtype(dtype) if dtype else "F32"
    shape_s = shape_s.strip()
    if shape_s in ("", "scalar"):
        shape = []
    else:
        try:
            shape = [int(d) for d in shape_s.lower().split("x")]
        except ValueError:
            raise ValueError(f"--extra-key {spec!r}: bad shape {shape_s!r}") from None
        if any(d < 0 for d in shape):
            raise ValueError(f"--extra-key {spec!r}: negative dim")
    return key, shape, dtype


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m vw2_sim_tools.torch_ckpt",
        description="Convert a safetensors file into a torch.save-format (zip) checkpoint.",
    )
    parser.add_argument("--from-safetensors", required=True, metavar="IN", help="input .safetensors")
    parser.add_argument("--out", required=True, metavar="OUT", help="output .pt/.pth file")
    parser.add_argument("--prefix", default="", help="prepended to every copied tensor name")
    parser.add_argument(
        "--nest", default=None, metavar="KEY", help="store the state dict as {KEY: state_dict}"
    )
    parser.add_argument(
        "--extra-key",
        action="append",
        default=[],
        metavar="KEY=SHAPE[:DTYPE]",
        help="add a pattern-filled tensor under exactly KEY (no prefix); SHAPE like 2x3, "
        "DTYPE f32 (default), i64, f64, f16, bf16, u8; repeatable",
    )
    parser.add_argument(
        "--archive-name", default=None, help="zip top-level directory (default: OUT's file stem)"
    )
    args = parser.parse_args(argv)

    try:
        src = read_safetensors(args.from_safetensors)
        tensors = {}
        for name, (shape, dtype, raw) in src.items():
            tensors[args.prefix + name] = (shape, dtype, raw)
        for spec in args.extra_key:
            key, shape, dtype = parse_extra_key(spec)
            if key in tensors:
                raise ValueError(f"--extra-key {key!r} collides with an existing tensor")
            tensors[key] = (shape, dtype, _encode(pattern_values(_numel(shape), dtype), dtype))
        write_torch_checkpoint_raw(
            args.out, tensors, nest_key=args.nest, archive_name=args.archive_name
        )
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(tensors)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
