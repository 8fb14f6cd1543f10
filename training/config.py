"""Recipe configurations: frozen dataclasses loaded from YAML, strictly (docs/architecture.md, training).

Every recipe (``smarties-mae``, ``xstars``, ...) describes its configuration as nested frozen dataclasses whose fields
carry defaults and docstrings. :func:`load_config` reads a YAML file (``training/configs/*.yaml``, :data:`CONFIG_DIR`;
:func:`find_config` resolves a bare name there) into such a class:

- an unknown key is an error that names the key, its place (``optim.wd``) and the valid keys (with the closest
  match: ``did you mean 'weight_decay'?``) — a typo never silently falls back to a default;
- values are checked against the field types (``int``, ``float`` (an ``int`` is accepted, and so is a string such
  as ``1e-4``, which YAML 1.1 does not read as a number), ``bool``, ``str``,
  ``Optional[...]``, ``Literal[...]``, ``tuple[...]``, ``list[...]``, ``dict[str, ...]`` and nested dataclasses);
- ``overrides`` (``["run.steps=3", "optim.lr=1e-3"]``, the CLI's ``--set``) are applied on top, each value parsed as
  YAML (``3`` → int, ``null`` → None, ``[0.9, 0.95]`` → list);
- the dataclass's ``__post_init__`` may validate across fields (raise :class:`ConfigError`).

:func:`config_to_dict` / :func:`dump_config` write a configuration back (the run folder keeps the resolved config,
written atomically by :func:`engine.atomic.write_text`).

Example::

    @dataclass(frozen=True)
    class OptimConfig:
        lr: float = 1e-3
        betas: tuple[float, float] = (0.9, 0.95)

    @dataclass(frozen=True)
    class MyRecipe:
        optim: OptimConfig = OptimConfig()

    cfg = load_config(MyRecipe, "my.yaml", overrides=["optim.lr=5e-4"])
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TypeVar, Union

import yaml

from engine.atomic import write_text

__all__ = (
    "CONFIG_DIR", "ConfigError", "apply_overrides", "config_from_dict", "config_to_dict", "dump_config", "find_config",
    "load_config",
)

T = TypeVar("T")

#: The shipped recipe configs (``training/configs/<recipe>-*.yaml``), where :func:`find_config` looks up bare names.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration is invalid: unknown key, wrong type or inconsistent values (the message says which)."""


def _where(path: str) -> str:
    return path or "<top level>"


def _check_type(value: Any, tp: Any, path: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``; returns the converted value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(path)}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return config_from_dict(tp, value, path)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{_where(path)}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{_where(path)}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(path)}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{_where(path)}: expected {len(args)} values, got {len(value)}: {value!r}")
            items = [_check_type(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_check_type(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(path)}: expected a mapping, got {value!r}")
        key_tp, val_tp = args if args else (Any, Any)
        return {_check_type(k, key_tp, path): _check_type(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(path)}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_where(path)}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_where(path)}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(path)}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{_where(path)}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{_where(path)}: unsupported annotation {tp!r} in the config dataclass")  # pragma: no cover


def config_from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build the (nested) dataclass ``cls`` from a mapping, strictly.

    Args:
        cls: A dataclass type (fields annotated with the types listed in the module docstring).
        data: Mapping of field names to values (nested mappings for nested dataclasses); absent fields keep their
            defaults.
        path: Dotted prefix for error messages.

    Returns:
        The dataclass instance.

    Raises:
        ConfigError: Unknown key (with the valid keys and the closest match), missing required field, wrong type, or
            a check of the dataclass's ``__post_init__``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(path)}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" — did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown key {path + '.' if path else ''}{key}{hint} (valid keys of {_where(path)}: {', '.join(fields)})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _check_type(data[name], hints[name], sub)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {sub}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{_where(path)}: {exc}") from exc


def config_to_dict(obj: Any) -> Any:
    """A (nested) dataclass as plain YAML/JSON types (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``"a.b.c=value"`` overrides (value parsed as YAML) to a nested mapping; returns a new mapping.

    Raises:
        ConfigError: An override without ``=``, or a path through a non-mapping value. (Unknown keys are reported by
            :func:`config_from_dict`.)
    """
    out: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. run.steps=3)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def find_config(path: Union[str, "os.PathLike[str]"], folder: Path = CONFIG_DIR, pattern: str = "*.yaml",
                lookup: Optional[str] = None) -> Path:
    """A recipe config: ``path`` itself, else a bare name (``smarties-mae-tiny-cpu``) looked up in ``folder``.

    Args:
        path: A YAML file, or the name of one of ``folder``'s files (with or without ``.yaml``).
        folder: The shipped configs (:data:`CONFIG_DIR`).
        pattern: The recipe's own configs in ``folder`` (``smarties-align`` → ``"smarties-align*.yaml"``), which the
            "not found" message lists.
        lookup: The configs a bare name may name (default: ``pattern``); the SMARTIES recipes look among each
            other's (``"smarties-*.yaml"``), so a config of the other recipe is reported by what is wrong in it.

    Raises:
        FileNotFoundError: Neither exists; the message lists the recipe's shipped configs.
    """
    p = Path(path)
    shipped = folder / p.with_suffix(".yaml").name
    if (not p.exists() and not p.is_absolute() and shipped.exists()
            and fnmatch.fnmatch(shipped.name, lookup or pattern)):
        p = shipped
    if not p.exists():
        names = ", ".join(sorted(x.stem for x in folder.glob(pattern)))
        raise FileNotFoundError(f"config {path} not found (a YAML path, or one of the shipped configs: {names})")
    return p


def load_config(
    cls: type[T], source: Union[str, "os.PathLike[str]", Mapping[str, Any]], overrides: Sequence[str] = ()
) -> T:
    """Load a YAML file (or a mapping) into the dataclass ``cls``, strictly, with ``KEY=VALUE`` overrides.

    Args:
        cls: The recipe's config dataclass.
        source: A ``.yaml`` path, or an already-parsed mapping.
        overrides: Dotted ``KEY=VALUE`` strings applied after reading (values parsed as YAML).

    Returns:
        The config instance.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ConfigError: Invalid YAML, or see :func:`config_from_dict`. The message starts with the file name.
    """
    name = "config"
    if isinstance(source, Mapping):
        data: Any = source
    else:
        path = Path(source)
        name = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if data is None:
            data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return config_from_dict(cls, apply_overrides(data, overrides))
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def dump_config(obj: Any, path: Union[str, "os.PathLike[str]"], header: Optional[str] = None) -> Path:
    """Write a config dataclass as YAML, atomically (:func:`engine.atomic.write_text`).

    Args:
        obj: Config dataclass instance.
        path: Destination file.
        header: Optional comment lines written first (``# `` is prepended to each line).

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(obj), sort_keys=False, default_flow_style=None)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return write_text(path, text)
