"""Command-line flags generated from a dataclass: the one home of every CLI's names, types, defaults and help.

Convention: each field documents itself in its metadata, `field(default=..., metadata={"help": "..."})`.
Optional metadata keys: "flag" (the flag's name when it is not `--field-name`, e.g. "--max-batch"),
"choices" (allowed values of a `str` field) and "cli": False (the field has no flag).
Types map to argparse: bool -> a switch, Literal[...] -> choices, `X | None` -> X, tuple/list[X] -> one or
more values, anything else is called on the text (int, float, str, Path).

A shared leaf like megatron_cogview.errors: only the standard library, so every layer may use it.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, Iterable, Literal, Mapping, get_args, get_origin

BoolStyle = Literal["switch", "optional"]


def option(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """A dataclass field with its help text (and any other metadata key above) in its metadata."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def flag_name(f: dataclasses.Field) -> str:
    """The flag of a field: metadata["flag"], else --field-name."""
    return str(f.metadata.get("flag", "--" + f.name.replace("_", "-")))


def field_help(f: dataclasses.Field) -> str:
    """The help text of a field (metadata["help"]; '' when it has none)."""
    return str(f.metadata.get("help", ""))


def field_default(f: dataclasses.Field) -> Any:
    """The field's default value (dataclasses.MISSING when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def cli_fields(cls: type, only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of cls that get a flag, in declaration order (`only` keeps the order of the class)."""
    chosen = None if only is None else set(only)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = (chosen or set()) - known | set(skip) - known
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and f.name not in set(skip)
            and (chosen is None or f.name in chosen)]


def field_type(cls: type, f: dataclasses.Field) -> Any:
    """The field's annotation, evaluated in its class's module (other fields' annotations may be unresolvable)."""
    if not isinstance(f.type, str):
        return f.type
    return eval(f.type, vars(sys.modules[cls.__module__]))  # the class's own annotation text


def _value_kwargs(tp: Any) -> dict[str, Any]:
    """argparse type/choices/nargs of one annotation (bool is handled by the caller)."""
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in get_args(tp) if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"cannot make a flag of {tp}")
        return _value_kwargs(inner[0])
    if origin is Literal:
        values = get_args(tp)
        return {"choices": list(values), "type": type(values[0])}
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return {"nargs": "+", **_value_kwargs(args[0] if args else str)}
    return {"type": tp}


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    bools: BoolStyle = "switch",
    suppress_defaults: bool = False,
    show_defaults: bool = False,
    defaults: Mapping[str, Any] | None = None,
    positional: Iterable[str] = (),
    nargs: Mapping[str, str] | None = None,
) -> list[str]:
    """Add one flag per field of the dataclass cls; returns their dests (the field names).

    bools: "switch" (--flag sets True) or "optional" (--flag / --no-flag). suppress_defaults: an unset flag
    leaves no attribute (so a caller can tell what was given). show_defaults: append "(default: X)" to the
    help. defaults: flag defaults that differ from the field's (e.g. None = "not given"). positional: fields
    that are positional arguments. nargs: overrides of the number of values per field.
    """
    defaults, nargs, positional = dict(defaults or {}), dict(nargs or {}), set(positional)
    names = []
    for f in cli_fields(cls, only, skip):
        default = defaults.get(f.name, field_default(f))
        text = field_help(f) + (f" (default: {field_default(f)})" if show_defaults else "")
        kwargs: dict[str, Any] = {"help": text.replace("%", "%%")}
        tp = field_type(cls, f)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if bools == "optional" else "store_true"
        else:
            kwargs.update(_value_kwargs(tp))
            if "choices" in f.metadata:
                kwargs["choices"] = list(f.metadata["choices"])
        if f.name in nargs:
            kwargs["nargs"] = nargs[f.name]
        if f.name in positional:
            parser.add_argument(f.name, **kwargs)
        else:
            if suppress_defaults:
                kwargs["default"] = argparse.SUPPRESS
            elif default is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = default
            parser.add_argument(flag_name(f), dest=f.name, **kwargs)
        names.append(f.name)
    return names


def flag_values(cls: type, namespace: argparse.Namespace, only: Iterable[str] | None = None) -> dict[str, Any]:
    """The parsed values of cls's flags (fields without a flag or absent from the namespace are left out)."""
    ns = vars(namespace)
    return {f.name: ns[f.name] for f in cli_fields(cls, only) if f.name in ns}
