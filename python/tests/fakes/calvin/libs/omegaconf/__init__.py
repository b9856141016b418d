"""Fake omegaconf for the calvin backend tests: DictConfig / ListConfig nodes that share one
root, resolve `${a.b}` interpolations when read (so a node deleted under `open_dict` is gone
from every interpolation that points at it), and refuse new keys and deletions in struct mode
as OmegaConf does."""

import contextlib
import re

import yaml

_INTERP = re.compile(r"\$\{([^}]+)\}")


class ConfigKeyError(KeyError):
    pass


class ConfigAttributeError(AttributeError):
    pass


class ConfigTypeError(TypeError):
    pass


class InterpolationKeyError(ConfigKeyError):
    pass


class _Node:
    def __init__(self, content, root=None, key=""):
        object.__setattr__(self, "_content", content)
        object.__setattr__(self, "_root", root if root is not None else self)
        object.__setattr__(self, "_key", key)
        if root is None:
            object.__setattr__(self, "_flags", {"struct": False})

    def _struct(self):
        return self._root._flags["struct"]

    def _wrap(self, key, v):
        full = f"{self._key}.{key}" if self._key else str(key)
        if isinstance(v, str):
            m = _INTERP.fullmatch(v)
            if m:
                return self._root._select(m.group(1), full)
            if _INTERP.search(v):
                return _INTERP.sub(lambda m: str(self._root._select(m.group(1), full)), v)
            return v
        if isinstance(v, dict):
            return DictConfig(v, self._root, full)
        if isinstance(v, list):
            return ListConfig(v, self._root, full)
        return v

    def _select(self, path, where):
        if ":" in path:
            raise ValueError(f"fake omegaconf: no resolver for ${{{path}}} (at {where})")
        node = self
        for part in path.split("."):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError) as e:
                raise InterpolationKeyError(f"Interpolation key '{path}' not found (at {where})") from e
        return node


class DictConfig(_Node):
    def __getitem__(self, key):
        try:
            v = self._content[key]
        except KeyError:
            raise ConfigKeyError(f"Key '{key}' is not in struct" if self._struct() else f"Missing key {key}") from None
        return self._wrap(key, v)

    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self[key]
        except ConfigKeyError as e:
            raise ConfigAttributeError(str(e)) from None

    def __setitem__(self, key, value):
        if self._struct() and key not in self._content:
            raise ConfigAttributeError(f"Key '{key}' is not in struct")
        self._content[key] = to_container(value)

    __setattr__ = __setitem__

    def __delitem__(self, key):
        if self._struct():
            raise ConfigTypeError("DictConfig in struct mode does not support deletion")
        del self._content[key]

    def __contains__(self, key):
        return key in self._content

    def __iter__(self):
        return iter(list(self._content))

    def __len__(self):
        return len(self._content)

    def keys(self):
        return list(self._content)

    def items(self):
        return [(k, self[k]) for k in self._content]

    def values(self):
        return [self[k] for k in self._content]

    def get(self, key, default=None):
        return self[key] if key in self._content else default

    def __repr__(self):
        return f"DictConfig({self._content!r})"


class ListConfig(_Node):
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._wrap(j, self._content[j]) for j in range(len(self._content))[i]]
        return self._wrap(i, self._content[i])

    def __iter__(self):
        return iter([self[i] for i in range(len(self._content))])

    def __len__(self):
        return len(self._content)

    def __repr__(self):
        return f"ListConfig({self._content!r})"


def to_container(v, resolve=True):
    if isinstance(v, DictConfig):
        return {k: to_container(v[k] if resolve else v._content[k], resolve) for k in v._content}
    if isinstance(v, ListConfig):
        return [to_container(x, resolve) for x in (v if resolve else v._content)]
    if isinstance(v, dict):
        return {k: to_container(x, resolve) for k, x in v.items()}
    if isinstance(v, list):
        return [to_container(x, resolve) for x in v]
    return v


class OmegaConf:
    @staticmethod
    def load(path):
        with open(path) as f:
            return DictConfig(yaml.safe_load(f) or {})

    @staticmethod
    def create(obj=None):
        return DictConfig(to_container(obj or {}))

    @staticmethod
    def to_container(cfg, resolve=False):
        return to_container(cfg, resolve)

    @staticmethod
    def set_struct(cfg, value):
        cfg._root._flags["struct"] = bool(value)


@contextlib.contextmanager
def open_dict(cfg):
    flags = cfg._root._flags
    prev = flags["struct"]
    flags["struct"] = False
    try:
        yield cfg
    finally:
        flags["struct"] = prev
