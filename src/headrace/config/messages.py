"""msgspec's validation messages, rewritten to name the key and what it expected."""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any

import msgspec

from headrace.config.schema import PipelineConfig

_AT = re.compile(r"^(?P<msg>.*?) - at `\$(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")
_KEYED = re.compile(r"^(?P<key>[a-z_]+): (?P<rest>.*)$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]*)`$")


def explain(message: str, data: Any) -> str:
    """Turn msgspec's message into one that names the key and what it expected."""
    m = _AT.match(message)
    msg, path = (m.group("msg"), m.group("path")) if m else (message, "")
    where = _where(path, data)
    if (u := _UNKNOWN.match(msg)) is not None:
        tp, node = _type_at(path, data)
        struct = _resolve(tp, node)
        allowed = sorted(f.encode_name for f in msgspec.structs.fields(struct)) if struct else []
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"at {where}: unknown key {u.group('key')!r}{hint}"
    if (u := _MISSING.match(msg)) is not None:
        key = u.group("key")
        if key == "type":
            tp, _ = _type_at(path, data)
            tags = [str(a.__struct_config__.tag) for a in _members(tp) if _is_struct(a)]
            return f"at {where}: missing required key 'type'; expected one of: {', '.join(tags)}"
        return f"at {where}: missing required key {key!r}"
    if path.endswith(".type") and msg.startswith("Invalid value"):
        tp, _ = _type_at(path[: -len(".type")], data)
        tags = [str(a.__struct_config__.tag) for a in _members(tp) if _is_struct(a)]
        return f"at {where}: {msg}; expected one of: {', '.join(tags)}"
    if msg.startswith("Invalid enum value"):
        tp, _ = _type_at(path, data)
        allowed = [repr(a) for m in _members(tp) for a in typing.get_args(m)]
        if allowed:
            return f"at {where}: {msg}; expected one of: {', '.join(allowed)}"
    if (k := _KEYED.match(msg)) is not None and path:
        # A check of the section's own (``__post_init__``) that names one of its keys first.
        struct = _resolve(*_type_at(path, data))
        if struct is not None and k.group("key") in struct.__struct_fields__:
            return f"at {where}.{k.group('key')}: {k.group('rest')}"
    if path.endswith(".type") and msg.endswith("got `NoneType`"):
        return f'at {where}: {msg}; YAML reads a bare null as nothing: write type: "null"'
    return f"at {where}: {msg}"


#: How msgspec writes "a value of this mapping" in a path: it does not say which key.
_ANY_KEY = "[...]"


def _segments(path: str) -> list[str | int]:
    return [
        _ANY_KEY if any_key else int(i) if i else k
        for k, i, any_key in re.findall(r"\.([^.\[]+)|\[(\d+)\]|(\[\.\.\.\])", path)
    ]


def _walk(path: str, data: Any) -> tuple[Any, Any, str]:
    """The declared type at ``path`` in the schema, the data found there, and the path as
    the message writes it: a mapping's value msgspec wrote as ``[...]`` is named by its
    key, the first whose value the mapping's value type refuses (msgspec stops at the
    first, in the document's order)."""
    tp: Any = PipelineConfig
    node = data
    where = ""
    for seg in _segments(path):
        if seg == _ANY_KEY:
            args = typing.get_args(_unwrap(tp))
            tp = args[1] if len(args) == 2 else None
            key = _refused_key(node, tp)
            where += _ANY_KEY if key is None else _key_in_path(key)
            node = node.get(key) if key is not None and isinstance(node, dict) else None
        elif isinstance(seg, int):
            args = typing.get_args(_unwrap(tp))
            tp = args[0] if args else None
            node = node[seg] if isinstance(node, list) and seg < len(node) else None
            where += f"[{seg}]"
        else:
            struct = _resolve(tp, node)
            tp = typing.get_type_hints(struct, include_extras=True).get(seg) if struct else None
            node = node.get(seg) if isinstance(node, dict) else None
            where += f".{seg}"
    return tp, node, where


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _key_in_path(key: Any) -> str:
    """A mapping's key as a path segment: ``.name`` as the README writes keys
    (``windows.features.NAME``), ``['session.timeout.ms']`` where a dot would mislead."""
    if isinstance(key, str) and _IDENTIFIER.match(key):
        return f".{key}"
    return f"[{key!r}]"


def _refused_key(node: Any, value_type: Any) -> Any:
    if not isinstance(node, dict) or value_type is None:
        return None
    for key, value in node.items():
        try:
            msgspec.convert(value, value_type)
        except (msgspec.ValidationError, TypeError):
            return key
    return None


def _type_at(path: str, data: Any) -> tuple[Any, Any]:
    """The declared type at ``path`` in the schema, and the data found there."""
    tp, node, _ = _walk(path, data)
    return tp, node


def _where(path: str, data: Any) -> str:
    """``path`` as the message writes it: ``kafka.consumer['session.timeout.ms']``."""
    if not path:
        return "top level"
    try:
        where = _walk(path, data)[2]
    except Exception:  # naming the place must never hide the message itself
        where = path
    return where.lstrip(".")


def _resolve(tp: Any, node: Any) -> type[msgspec.Struct] | None:
    """The schema class a value of declared type ``tp`` is checked against."""
    structs: list[type[msgspec.Struct]] = [a for a in _members(tp) if _is_struct(a)]
    if len(structs) == 1:
        return structs[0]
    tag = node.get("type") if isinstance(node, dict) else None
    return next((s for s in structs if s.__struct_config__.tag == tag), None)


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)
