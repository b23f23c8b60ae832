"""NeMo RL's config semantics, reusable on real NeMo RL YAMLs and on the embedded workload's. Reads files.

- YAML `defaults:` inheritance (`nemo_rl/utils/config.py:load_config_with_inheritance`): a string or list
  of parent paths relative to the file, loaded recursively; children override parents; a mapping with
  `_override_: true` replaces the parent's mapping instead of merging into it.
- Overrides through Hydra's own parser and applier with the config in struct mode
  (`parse_hydra_overrides`): `key=value` only for keys that exist, `++key=value` adds or overrides,
  `+key=value` adds, `~key` deletes. A failure raises `ConfigError` with NeMo RL's text
  (`OverridesError: Failed to parse Hydra overrides: ...`).
- Resolvers `${mul:a,b}`, `${max:a,b}`, `${div:a,b}`; interpolations are resolved after the overrides.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ops.errors import UserError

_RESOLVERS = {
    "mul": lambda a, b: a * b,
    "max": lambda a, b: max(a, b),
    "div": lambda a, b: a // b if isinstance(a, int) and isinstance(b, int) else a / b,
}


class ConfigError(UserError):
    """A config that cannot be loaded or an override that cannot be applied; text as NeMo RL prints it."""


def register_resolvers() -> None:
    """Register NeMo RL's OmegaConf resolvers once per process (idempotent)."""
    for name, fn in _RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def _merge_with_override(base: DictConfig, child: DictConfig) -> DictConfig:
    """OmegaConf.merge, except that a child mapping carrying `_override_: true` replaces the base's."""
    replaced: dict[str, Any] = {}
    for key in list(child.keys()):
        node = child._get_node(key)  # noqa: SLF001 - keep interpolations unresolved
        if isinstance(node, DictConfig) and node.get("_override_", False):
            node_copy = OmegaConf.create(OmegaConf.to_container(node, resolve=False))
            node_copy.pop("_override_")
            replaced[str(key)] = node_copy
            child.pop(key)
        elif isinstance(node, DictConfig) and key in base and isinstance(base._get_node(key), DictConfig):
            base[key] = _merge_with_override(base[key], node)
            child.pop(key)
    merged = OmegaConf.merge(base, child)
    for key, node in replaced.items():
        merged[key] = node
    return merged


def load_with_inheritance(path: str | Path) -> DictConfig:
    """The YAML at `path` with its `defaults:` chain merged in (parents first), unresolved."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass --config=PATH to an existing YAML file)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml errors carry line numbers; keep them on one line
        raise ConfigError(f"cannot parse {path}: {' '.join(str(err).split())}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at the top level, not {type(cfg).__name__}")
    if "defaults" not in cfg:
        return cfg
    defaults = cfg.pop("defaults")
    parents = [defaults] if isinstance(defaults, str) else list(defaults) if isinstance(
        defaults, (list, ListConfig)) else None
    if parents is None:
        raise ConfigError(f"{path}: `defaults` must be a path or a list of paths, not {defaults!r}")
    base = OmegaConf.create({})
    for parent in parents:
        parent_path = Path(str(parent))
        if not parent_path.is_absolute():
            parent_path = path.parent / parent_path
        base = _merge_with_override(base, load_with_inheritance(parent_path))
    return _merge_with_override(base, cfg)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Hydra's override grammar applied in struct mode, as NeMo RL's `parse_hydra_overrides` does."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    OmegaConf.set_struct(cfg, True)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
        ConfigLoaderImpl._apply_overrides_to_config(overrides=parsed, cfg=cfg)  # noqa: SLF001
    except Exception as err:
        raise ConfigError(f"OverridesError: Failed to parse Hydra overrides: {err}") from err
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """YAML + defaults chain + overrides, interpolations still unresolved (struct mode on)."""
    register_resolvers()
    return apply_overrides(load_with_inheritance(path), overrides)


def resolve(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """The effective config as plain data: YAML + defaults chain + overrides, interpolations resolved."""
    cfg = load_config(path, overrides)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:
        raise ConfigError(f"cannot resolve config {path}: {' '.join(str(err).split())}") from err


def to_plain(cfg: DictConfig) -> dict:
    """A resolved DictConfig as plain data (raises ConfigError on a broken interpolation)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:
        raise ConfigError(f"cannot resolve config: {' '.join(str(err).split())}") from err
