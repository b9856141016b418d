"""Fake hydra.utils.instantiate: `_target_` called with the node's keys and the call's
keyword arguments (these win), nested `_target_` nodes instantiated first unless
`_recursive_: false` (then they are passed as DictConfig, as hydra does)."""

import importlib

from omegaconf import DictConfig, ListConfig

from .errors import InstantiationException

_RESERVED = {"_target_", "_recursive_", "_convert_", "_args_", "_partial_"}


def _locate(path):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as e:
        raise InstantiationException(
            f"Error locating target '{path}', set env var HYDRA_FULL_ERROR=1 to see chained exception."
        ) from e


def _nested(v):
    if isinstance(v, DictConfig):
        if "_target_" in v:
            return instantiate(v)
        return v
    if isinstance(v, ListConfig):
        return [_nested(x) for x in v]
    return v


def instantiate(config, *args, **kwargs):
    if not isinstance(config, DictConfig):
        raise InstantiationException(f"fake hydra: instantiate expects a DictConfig, found {type(config).__name__}")
    if "_target_" not in config:
        raise InstantiationException(f"Top level config has to be OmegaConf DictConfig/dict with _target_ key")
    target = _locate(config["_target_"])
    recursive = config.get("_recursive_", True)
    params = {k: config[k] for k in config.keys() if k not in _RESERVED}
    params.update(kwargs)
    if recursive:
        params = {k: _nested(v) for k, v in params.items()}
    try:
        return target(*args, **params)
    except Exception as e:
        raise InstantiationException(f"Error in call to target '{config['_target_']}':\n{e!r}") from e
