"""The generic loader: YAML in, includes, dotted overrides, strict keys, dump.

Every config is a plain dataclass (one module per concern in this package).
:func:`load_config` reads a YAML file into one, applies ``section.field=value`` overrides
from the command line, maps renamed keys (:mod:`workbench.config.legacy`), rejects keys the
dataclass does not have (suggesting the nearest valid name), converts values to the
annotated types, and runs each dataclass's ``__post_init__`` cross-field checks.

A section of a YAML file may be a path to another YAML file instead of a mapping
(``data: ../data/mosi.yaml``, or on the command line ``data=configs/data/mosi.yaml``); it
is resolved relative to the file that names it, as are the input paths inside it.
:func:`dump_config` writes the resolved config (with versions) into an output dir.

YAML is read by :class:`BoundedLoader`: aliases may stand for at most
:data:`MAX_ALIAS_VALUES` values in all and may not name the value that holds them, so a
small file cannot expand into gigabytes; values shown in error messages are cut
(:func:`workbench.config.fields.short_repr`).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from workbench.config.fields import ConfigError, short_repr
from workbench.config.legacy import migrate, old_choice
from workbench.io import atomic_write_text

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_ALIAS_VALUES = 10_000
"""The most values YAML aliases (``*name``) may add to one document, counting each alias
as every value under its anchor: a few aliases to small sections stay far below it; nested
aliases that multiply (the "billion laughs" pattern) are refused as the file is read."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses, while composing, an alias to an anchor still being
    read (a value that contains itself) and aliases that together stand for more than
    :data:`MAX_ALIAS_VALUES` values. ``source`` names the file (or override) in the error."""

    def __init__(self, stream: str, source: str = "YAML") -> None:
        super().__init__(stream)
        self.source = source
        self.alias_values = 0
        self.open_anchors: set[str] = set()
        self.sizes: dict[int, tuple[yaml.Node, int]] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1
            if event.anchor in self.open_anchors:
                raise ConfigError(
                    f"{self.source}: line {line}: alias *{short_repr(event.anchor, 60, quote=False)} refers to "
                    f"the value that contains it (&{short_repr(event.anchor, 60, quote=False)}): a config "
                    "cannot contain itself; write the value out instead")
            target = self.anchors.get(event.anchor)
            if target is not None:
                self.alias_values += self._size(target)
                if self.alias_values > MAX_ALIAS_VALUES:
                    raise ConfigError(
                        f"{self.source}: line {line}: YAML aliases (here *"
                        f"{short_repr(event.anchor, 60, quote=False)}) expand to more than {MAX_ALIAS_VALUES} "
                        "values (nested aliases that multiply, as in an alias bomb): write "
                        "the repeated sections out, or alias only small sections")
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is None:
            return super().compose_node(parent, index)
        self.open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self.open_anchors.discard(anchor)

    def _size(self, node: yaml.Node) -> int:
        """Values under ``node`` with every alias in it expanded (memoized per node)."""
        known = self.sizes.get(id(node))
        if known is not None:
            return known[1]
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
        else:
            size = 1
        self.sizes[id(node)] = (node, size)
        return size


def load_yaml_text(text: str, source: str) -> Any:
    """YAML ``text`` as Python data, read by :class:`BoundedLoader`; ``source`` (a file, or
    an override as typed) starts every error's message. Raises :class:`ConfigError` for
    invalid YAML, aliases that expand too far, or nesting too deep to read."""
    loader = BoundedLoader(text, source)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {short_repr(e, 600, quote=False)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read (thousands of levels of "
                          "lists or mappings): write a flatter config") from None
    finally:
        loader.dispose()


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``; ``where`` names the key."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} is null: give a value of type {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, bool) and _has_switch(tp):  # a method's switch given alone
            value = {"enabled": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields, got {short_repr(value)}")
        return from_dict(tp, value, prefix=where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            near = difflib.get_close_matches(str(value), [str(a) for a in args], n=1) \
                if isinstance(value, (str, int, float)) else []
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{where}={short_repr(value)} is not allowed{hint}: use one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str) and origin is list:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {short_repr(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items, got {short_repr(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {short_repr(value)}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, where): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}={short_repr(value)} must be true or false")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}={short_repr(value)} must be a number")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}={short_repr(value)} must be a number") from None
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}={short_repr(value)} must be an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={short_repr(value)} must be an integer") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {short_repr(value)}")
        return str(value)
    return value


def _has_switch(cls: type) -> bool:
    return any(f.name == "enabled" and f.init for f in dataclasses.fields(cls))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion
    (renamed keys are mapped first, :func:`workbench.config.legacy.migrate`)."""
    data = migrate(cls.__name__, data, f"{prefix}." if prefix else "")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + near[0]!r}?" if near else ""
            raise ConfigError(
                f"unknown key {short_repr(where)} for {cls.__name__}{hint or '.'} Valid keys: "
                f"{', '.join(names)}",
                key=where)
        try:
            kwargs[key] = _convert(value, hints[key], where)
        except ConfigError as e:
            if e.key is None:
                e.key = where
            raise
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # a required field without default
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {short_repr(item)} must look like section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {short_repr(item)} has an empty key")
    if not raw.strip():
        return key.split("."), ""
    loader = BoundedLoader(raw, f"command-line override {short_repr(item)}")
    try:  # aliases that expand too far raise ConfigError; text that is not YAML stays text
        value = loader.get_single_data()
    except (yaml.YAMLError, RecursionError):
        value = raw
    finally:
        loader.dispose()
    return key.split("."), value
    return key.split("."), value


def _section_type(cls: type | None, path: list[str]) -> Any:
    """The annotated type at dotted ``path`` under dataclass ``cls`` (None if unknown)."""
    tp: Any = cls
    for part in path:
        if tp is None or not dataclasses.is_dataclass(tp):
            return None
        tp = _strip_optional(typing.get_type_hints(tp).get(part, type(None)))[0]
        if tp is type(None):
            return None
    return tp


def apply_overrides(data: dict[str, Any], overrides: list[str],
                    cls: type | None = None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested mapping (values parsed as YAML).

    With ``cls``, an override that names a whole section with a file
    (``data=configs/data/meld.yaml``) reads that file (relative to the working directory,
    like every command-line path), as a section given as a path inside a YAML file is."""
    for item in overrides:
        path, value = _parse_override(item)
        tp = _section_type(cls, path) if cls is not None else None
        parent = _section_type(cls, path[:-1]) if cls is not None else None
        legacy = dataclasses.is_dataclass(parent) and old_choice(parent.__name__, path[-1],
                                                                  value)
        if isinstance(value, str) and value and dataclasses.is_dataclass(tp) and not legacy:
            inc = Path(value)
            value = _resolve_includes(tp, _resolve_paths(tp, _read_yaml(inc), inc.parent),
                                      inc.parent)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, bool):  # a method's switch given first, then a knob
                child = node[part] = {"enabled": child}
            if not isinstance(child, dict):
                raise ConfigError(f"override {short_repr(item)}: {short_repr(part)} is not a section")
            node = child
        if isinstance(node.get(path[-1]), dict) and isinstance(value, bool):
            node[path[-1]]["enabled"] = value  # a method's switch: keep its other knobs
        else:
            node[path[-1]] = value
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = load_yaml_text(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _resolve_paths(cls: type, data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve the input paths a dataclass declares (``PATH_FIELDS``, e.g. a data
    config's ``path``, ``features``, ``media_root``) relative to ``base``, the folder of
    the YAML file that names them: one rule for a recipe's ``data:`` include and the data
    file's own ``path:``.

    The older rule (relative to the working directory) keeps working where it is
    unambiguous: a path that exists only relative to the working directory is kept as
    written (noted in the log); where neither exists it is kept as written too, so the
    error names the path you wrote. Command-line overrides stay relative to the working
    directory."""
    fields = getattr(cls, "PATH_FIELDS", ())
    out = dict(data)
    for key in fields:
        value = data.get(key)
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        near = base / value
        if near.exists():
            if Path(value).exists() and near.resolve() != Path(value).resolve():
                log.warning("%s=%s: read relative to its file's folder %s (also exists "
                            "relative to the working directory)", key, value, base)
            out[key] = os.path.normpath(near)
        elif Path(value).exists():
            log.info("%s=%s: not found next to its file (%s); read relative to the working "
                     "directory (the older rule)", key, value, base)
    return out


def _resolve_includes(cls: type, data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Replace sections given as file paths by that file's mapping (recursively).

    An include path is relative to the file that names it, and so are the input paths in
    it (:func:`_resolve_paths`).
    """
    if not dataclasses.is_dataclass(cls):
        return data
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for key, value in data.items():
        tp = _strip_optional(hints.get(key, Any))[0]
        if dataclasses.is_dataclass(tp):
            if isinstance(value, str) and not old_choice(cls.__name__, key, value):
                inc = (base / value).resolve()
                out[key] = _resolve_includes(tp, _resolve_paths(tp, _read_yaml(inc), inc.parent),
                                             inc.parent)
            elif isinstance(value, dict):
                out[key] = _resolve_includes(tp, _resolve_paths(tp, value, base), base)
    return out


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
    *, section: str = "",
) -> T:
    """Read ``path`` (YAML) into ``cls``, apply ``overrides``, validate, and return it.

    ``section``: the overrides may name their keys under ``section.`` (``teacher.seed=1``
    for a :class:`TeacherConfig`). An error about a key an override set names that
    override, as given; any other error names ``path``. Relative input paths in a YAML
    file are read relative to that file (older configs written for the working directory
    still load, :func:`_resolve_paths`); overrides' paths are relative to the working
    directory.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        data = _resolve_includes(cls, _resolve_paths(cls, _read_yaml(p), p.parent), p.parent)
    given = list(overrides or [])
    applied = [o.removeprefix(f"{section}.") for o in given] if section else given
    data = apply_overrides(data, applied, cls)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise attribute_error(e, path, applied, shown=given) from None


def _override_of(key: str | None, overrides: list[str]) -> int | None:
    """Index of the last override that set ``key`` (or a section holding it, or a key
    inside it), else None. ``key`` may carry a section prefix the overrides lack."""
    if not key:
        return None
    k = key.replace("[", ".[").split(".")
    for i in reversed(range(len(overrides))):
        name = overrides[i].split("=", 1)[0].strip()
        if not name:
            continue
        o = name.split(".")
        n = min(len(o), len(k))
        if o[:n] == k[:n] or (len(o) < len(k) and k[len(k) - len(o):] == o):
            return i
    return None


def attribute_error(e: ConfigError, source: str | Path | None, overrides: list[str],
                    shown: list[str] | None = None) -> ConfigError:
    """``e`` told where its key came from: the command-line override that set it (quoted as
    the user typed it, ``shown``), else the YAML file ``source`` (if any)."""
    i = _override_of(e.key, overrides)
    if i is not None:
        return ConfigError(f"command-line override {short_repr((shown or overrides)[i])}: {e}", key=e.key)
    if source is not None:
        return ConfigError(f"{source}: {e}", key=e.key)
    return e


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape results."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("msa-workbench", "torch", "transformers", "peft", "accelerate", "datasets",
                "openai", "numpy", "scikit-learn", "bitsandbytes", "vllm", "llama-cpp-python"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def dump_config(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config to ``out_dir/name`` and versions to ``versions.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = atomic_write_text(out / name, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    atomic_write_text(out / "versions.json", json.dumps(versions(), indent=2) + "\n")
    return target
