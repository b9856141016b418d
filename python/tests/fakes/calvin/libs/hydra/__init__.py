"""Fake hydra for the calvin backend tests: `initialize_config_dir` / `compose` build a config
from YAML files the way hydra 1.1+ does, so a missing or wrong override fails here as it
fails with the real thing.

Supported (what calvin_env's configs use): the primary config's defaults list with config
groups (`- cameras: no_cameras`), nested defaults relative to their group
(`- cameras@static: static` in cameras/static_and_gripper.yaml lands at cameras.static,
`- panda` in robot/ merges robot/panda.yaml first), `_self_` (implicitly last),
`# @package` headers (absolute, literal), `override hydra/...` entries (hydra's colorlog options exist only when
the hydra_colorlog plugin is importable), group overrides (`cameras=static_and_gripper`,
which must match a default; `+group=option` appends), value overrides (`a.b=1`, `+a.b=1`),
and `${...}` interpolations resolved when read. The `hydra` node is dropped from the result;
the result is in struct mode.
"""

import contextlib
import importlib.util
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from . import errors, utils  # noqa: F401  (hydra.utils.instantiate)
from .errors import ConfigCompositionException, MissingConfigException

_config_dir = None

_HYDRA_GROUPS = {
    "hydra/job_logging": ["default", "disabled", "none"],
    "hydra/hydra_logging": ["default", "disabled", "none"],
}


@contextlib.contextmanager
def initialize_config_dir(config_dir, version_base=None, job_name=None):
    global _config_dir
    if not Path(config_dir).is_absolute():
        raise ValueError(f"config_dir must be absolute, found {config_dir}")
    if _config_dir is not None:
        raise ValueError("GlobalHydra is already initialized, call GlobalHydra.instance().clear() if you want to re-initialize")
    _config_dir = Path(config_dir)
    try:
        yield
    finally:
        _config_dir = None


def _hydra_options(group):
    opts = list(_HYDRA_GROUPS.get(group, []))
    try:
        if importlib.util.find_spec("hydra_plugins.hydra_colorlog") is not None:
            opts.append("colorlog")
    except ModuleNotFoundError:  # no hydra_plugins at all
        pass
    return opts


def _load(group, option, parent):
    rel = f"{group}/{option}" if group else option
    path = _config_dir / f"{rel}.yaml"
    if not path.is_file():
        if not group:
            raise MissingConfigException(f"Cannot find primary config '{option}'. Check that it's in your config search path.")
        opts = sorted(p.stem for p in (_config_dir / group).glob("*.yaml")) if (_config_dir / group).is_dir() else []
        raise MissingConfigException(
            f"In '{parent}': Could not find '{rel}'\n\nAvailable options in '{group}':\n\t" + "\n\t".join(opts)
        )
    text = path.read_text()
    package = None
    for line in text.splitlines():
        if line.startswith("# @package"):
            package = line.split()[-1]
            break
    return yaml.safe_load(text) or {}, package, rel


def _put(out, package, content):
    node = out
    for part in [p for p in package.split(".") if p]:
        node = node.setdefault(part, {})
    _merge(node, content)


def _merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def _expand(group, package, content, name, out, group_overrides, used):
    content = dict(content)
    defaults = content.pop("defaults", [])
    if not isinstance(defaults, list):
        raise ConfigCompositionException(f"In '{name}': defaults must be a list")
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    for entry in defaults:
        if entry == "_self_":
            _put(out, package, content)
            continue
        if isinstance(entry, str):  # a config of the same group
            child, header, rel = _load(group, entry, name)
            _expand(group, package, child, rel, out, group_overrides, used)
            continue
        if not (isinstance(entry, dict) and len(entry) == 1):
            raise ConfigCompositionException(f"In '{name}': bad defaults entry {entry!r}")
        (key, option), = entry.items()
        key = key.strip()
        if key.startswith("override "):
            key = key[len("override "):].strip()
        sub, _, pkg = key.partition("@")
        if sub.startswith("hydra/"):
            if option not in _hydra_options(sub):
                raise MissingConfigException(f"In '{name}': Could not find '{sub}/{option}'\n\nAvailable options in '{sub}':\n\t"
                                             + "\n\t".join(_hydra_options(sub)))
            continue
        full = f"{group}/{sub}" if group else sub
        if full in group_overrides:
            option = group_overrides[full]
            used.add(full)
        if option is None:
            continue
        child, header, rel = _load(full, option, name)
        if header == "_global_":
            child_pkg = ""
        elif header is not None:
            # Absolute, and taken literally: hydra >= 1.2 puts `# @package _group_` at `_group_`.
            child_pkg = header
        else:
            child_pkg = ".".join(p for p in [package, pkg or sub.replace("/", ".")] if p)
        _expand(full, child_pkg, child, rel, out, group_overrides, used)


def _parse_value(s):
    return yaml.safe_load(s) if s != "" else ""


def compose(config_name=None, overrides=(), return_hydra_config=False):
    if _config_dir is None:
        raise ValueError("GlobalHydra is not initialized, use @hydra.main() or call one of the hydra initialization methods first")
    group_overrides, appended, values = {}, [], []
    for o in overrides:
        if "=" not in o:
            raise ConfigCompositionException(f"Error parsing override '{o}'")
        key, value = o.split("=", 1)
        plus = key.startswith("+")
        key = key.lstrip("+")
        if (_config_dir / key.split("@")[0]).is_dir():
            if plus:
                appended.append((key, value))
            else:
                group_overrides[key] = value
        else:
            values.append((plus, key, value))
    primary, _header, _rel = _load("", config_name, config_name)
    out, used = {}, set()
    if appended:
        primary = dict(primary)
        primary["defaults"] = [*primary.get("defaults", []), *({k: v} for k, v in appended)]
    _expand("", "", primary, config_name, out, group_overrides, used)
    for key in group_overrides:
        if key not in used:
            raise ConfigCompositionException(
                f"Could not override '{key}'. No match in the defaults list.\n"
                f"To append to your default list use +{key}={group_overrides[key]}"
            )
    if not return_hydra_config:
        out.pop("hydra", None)
    for plus, key, value in values:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise ConfigCompositionException(f"Could not override '{key}'. Key '{part}' is not in struct")
            node = node[part]
        if parts[-1] not in node and not plus:
            raise ConfigCompositionException(
                f"Could not override '{key}'.\nTo append to your config use +{key}={value}\nKey '{key}' is not in struct"
            )
        node[parts[-1]] = _parse_value(value)
    cfg = DictConfig(out)
    OmegaConf.set_struct(cfg, True)
    return cfg
