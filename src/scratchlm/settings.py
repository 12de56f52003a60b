"""Typed settings: dataclass fields with help text and bounds, built from plain dicts.

    @dataclass
    class TokenizeSettings:
        val_fraction: float = setting(0.05, "share held out for validation", min=0.0, max=0.5)

    build(TokenizeSettings, {"val_fraction": 0.1}, "tokenize.")   # validated, typed
    apply_overrides(data, ["tokenize.val_fraction=0.1"])          # --set KEY=VALUE

A wrong key, type or value is a `SettingsError` whose one-line message names the key, the value
given and what is allowed, raised before any work starts. Each stage declares its own settings
beside its code (model/config.py, tokenizer/settings.py, data/settings.py); config.py assembles
them into the recipe users write.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import field
from typing import Any, Literal

import yaml

from scratchlm.errors import SettingsError


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None) -> Any:
    """A settings field with a help line and optional inclusive bounds."""
    meta = {"help": help, "min": min, "max": max}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: typing.cast(Any, default).copy(), metadata=meta)
    return field(default=default, metadata=meta)


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(tp: Any, meta: dict[str, Any]) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0], {})}s".replace(
            "a list of a ", "a list of "
        )
    word = "a finite number" if tp is float else _TYPE_WORDS[tp]
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{word} from {lo} to {hi}"
    if lo is not None:
        return f"{word} >= {lo}"
    return word


def _coerce(value: Any, tp: Any, meta: dict[str, Any], key: str) -> Any:
    def bad() -> SettingsError:
        return SettingsError(f"invalid setting {key}={value!r}: expected {_describe(tp, meta)}")

    if typing.get_origin(tp) is Literal:
        if value not in typing.get_args(tp):
            raise bad()
        return value
    if typing.get_origin(tp) is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected: a list of one
        if not isinstance(value, list):
            raise bad()
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, {}, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
        if not math.isfinite(value):  # nan passes every comparison, inf overflows sampling
            raise bad()
    elif tp is str and not isinstance(value, str):
        raise bad()
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise bad()
    return value


def _unknown_key(key: str, allowed: list[str], prefix: str) -> SettingsError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    where = prefix.rstrip(".") or "a recipe"
    return SettingsError(f"unknown setting {key}{hint}; {where} takes: {', '.join(allowed)}")


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build settings dataclass `cls` from a plain dict, validating every value."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"invalid setting {prefix.rstrip('.') or 'recipe'}={data!r}: expected a mapping of settings"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    presets = getattr(cls, "PRESETS", None)
    if presets is not None and data.get("preset"):
        if data["preset"] not in presets:
            raise SettingsError(
                f"invalid setting {prefix}preset={data['preset']!r}: expected one of {', '.join(presets)}"
            )
        data = presets[data["preset"]] | data  # the preset's values, then the keys given
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise _unknown_key(key, list(fields), prefix)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, f"{key}.")
        else:
            kwargs[name] = _coerce(value, tp, dict(fields[name].metadata), key)
    try:
        return cls(**kwargs)
    except SettingsError as e:
        raise SettingsError(f"invalid settings in {prefix.rstrip('.')}: {e}") from None


def describe_section(cls: type, prefix: str, values: Any = None) -> list[str]:
    """One help line per setting: `key = value (type): help`, the value taken from `values`
    (an instance of `cls`, e.g. the recipe a command will use) or else the field's default.
    Used by the CLI's --help."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if values is not None:
            default = getattr(values, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        what = _describe(hints[f.name], dict(f.metadata))
        lines.append(f"  {prefix}{f.name} = {default!r}  ({what}) {f.metadata.get('help', '')}")
    return lines


def parse_override(item: str) -> tuple[str, Any]:
    """`model.n_layer=4` -> ("model.n_layer", 4). Values are read as YAML scalars or lists."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SettingsError(f"invalid override {item!r}: expected KEY=VALUE, e.g. model.n_layer=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        value = raw  # "tools: calculator" is text; only "{a: 1}" is written as a mapping
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        key, value = parse_override(item)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SettingsError(
                    f"invalid override {item!r}: {'.'.join(parts[: i + 1])} is not a section"
                )
            node = child
        node[parts[-1]] = value
    return data
