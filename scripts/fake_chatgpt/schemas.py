"""Pure helpers for JSON Schema (the subset tool `parameters` and `text.format` schemas use):
`example(schema)` builds a value valid against it, `errors(value, schema)` checks one (tests use it;
no third-party validator is installed).

Generated values: objects get their `required` properties (plus the `include` ones asked for),
strings `string` (default "fake"), numbers/integers 1 (moved into `minimum`/`maximum`), booleans
true, arrays one item (or `minItems`), `enum`/`const` their first value, `anyOf`/`oneOf` the first
non-null branch, `allOf` merged, local `$ref`s (`#/$defs/…`, `#/definitions/…`) followed.
"""

from __future__ import annotations

import math
import re
from typing import Any

_MAX_DEPTH = 12


def _resolve(schema: Any, root: Any) -> Any:
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
        ref = schema["$ref"]
        if not ref.startswith("#"):
            return {}
        target: Any = root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            else:
                return {}
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **rest} if isinstance(target, dict) and rest else target
        seen += 1
    return schema


def _types(schema: dict) -> list[str]:
    t = schema.get("type")
    if isinstance(t, str):
        return [t]
    if isinstance(t, list):
        return [x for x in t if isinstance(x, str)]
    if "properties" in schema or "required" in schema:
        return ["object"]
    if "items" in schema:
        return ["array"]
    return []


def _merge_all_of(schema: dict, root: Any) -> dict:
    parts = schema.get("allOf")
    if not isinstance(parts, list):
        return schema
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in parts:
        part = _resolve(part, root)
        if not isinstance(part, dict):
            continue
        for k, v in part.items():
            if k == "properties" and isinstance(v, dict):
                merged["properties"] = {**merged.get("properties", {}), **v}
            elif k == "required" and isinstance(v, list):
                merged["required"] = list(dict.fromkeys([*merged.get("required", []), *v]))
            else:
                merged.setdefault(k, v)
    return merged


def _number(schema: dict, integer: bool) -> int | float:
    value: float = 1
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(lo, (int, float)) and not isinstance(lo, bool) and value < lo:
        value = lo
    if isinstance(xlo, (int, float)) and not isinstance(xlo, bool) and value <= xlo:
        value = xlo + 1
    if isinstance(hi, (int, float)) and not isinstance(hi, bool) and value > hi:
        value = hi
    if isinstance(xhi, (int, float)) and not isinstance(xhi, bool) and value >= xhi:
        value = xhi - 1 if integer else (xhi + (value if lo is None else lo)) / 2
    if integer:
        value = math.ceil(value) if lo is not None or xlo is not None else math.floor(value)
        return int(value)
    return int(value) if float(value).is_integer() else value


def _string(schema: dict, text: str) -> str:
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    value = text
    if isinstance(lo, int) and len(value) < lo:
        value = ((value or "x") * (lo // max(1, len(value)) + 1))[:lo]
    if isinstance(hi, int) and len(value) > hi:
        value = value[:hi]
    fmt = schema.get("format")
    if fmt == "date-time":
        value = "2026-01-01T00:00:00Z"
    elif fmt == "date":
        value = "2026-01-01"
    elif fmt in ("uri", "url"):
        value = "https://example.com/fake"
    elif fmt == "email":
        value = "fake@example.com"
    elif fmt == "uuid":
        value = "00000000-0000-4000-8000-000000000000"
    return value


def example(
    schema: Any,
    *,
    string: str = "fake",
    overrides: dict[str, Any] | None = None,
    include: tuple[str, ...] = (),
    _root: Any = None,
    _depth: int = 0,
) -> Any:
    """A value valid against `schema`. `overrides` (top-level object only) sets chosen properties;
    `include` adds optional top-level properties by name."""
    root = schema if _root is None else _root
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or _depth > _MAX_DEPTH:
        return string if schema not in (False,) else None
    schema = _merge_all_of(schema, root)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            resolved = [_resolve(o, root) for o in options]
            usable = [o for o in resolved if not (isinstance(o, dict) and _types(o) == ["null"])]
            branch = (usable or resolved)[0]
            base = {k: v for k, v in schema.items() if k != key}
            if isinstance(branch, dict) and base:
                branch = {**base, **branch}
            return example(branch, string=string, overrides=overrides, include=include, _root=root, _depth=_depth + 1)
    types = [t for t in _types(schema) if t != "null"] or _types(schema) or ["object"]
    kind = types[0]
    kw = {"string": string, "_root": root, "_depth": _depth + 1}
    if kind == "object":
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = [r for r in schema.get("required", []) if isinstance(r, str)]
        names = list(dict.fromkeys([*required, *(n for n in include if n in props), *(overrides or {})]))
        out: dict[str, Any] = {}
        for name in names:
            if overrides and name in overrides:
                out[name] = overrides[name]
            elif name in props:
                out[name] = example(props[name], **kw)
            else:
                extra = schema.get("additionalProperties")
                out[name] = example(extra, **kw) if isinstance(extra, dict) else string
        min_props = schema.get("minProperties")
        if isinstance(min_props, int):
            for name in props:
                if len(out) >= min_props:
                    break
                out.setdefault(name, example(props[name], **kw))
        return out
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, list):  # tuple form
            return [example(i, **kw) for i in items]
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            return [example(i, **kw) for i in prefix]
        n = max(1, schema.get("minItems", 1) if isinstance(schema.get("minItems"), int) else 1)
        if isinstance(schema.get("maxItems"), int):
            n = min(n, schema["maxItems"])
        return [example(items if isinstance(items, dict) else {}, **kw) for _ in range(n)]
    if kind == "string":
        return _string(schema, string)
    if kind == "integer":
        return _number(schema, True)
    if kind == "number":
        return _number(schema, False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return string


# --------------------------------------------------------------------------- checking


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or (
            isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    return True


def errors(value: Any, schema: Any, path: str = "$", _root: Any = None) -> list[str]:
    """Why `value` is not valid against `schema` (empty list = valid), for the subset above."""
    root = schema if _root is None else _root
    schema = _resolve(schema, root)
    if schema is True or schema == {} or schema is None:
        return []
    if schema is False:
        return [f"{path}: not allowed"]
    if not isinstance(schema, dict):
        return []
    schema = _merge_all_of(schema, root)
    out: list[str] = []
    if "const" in schema and value != schema["const"]:
        out.append(f"{path}: must be {schema['const']!r}")
    if isinstance(schema.get("enum"), list) and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in enum")
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            ok = [not errors(value, o, path, root) for o in schema[key]]
            if key == "anyOf" and not any(ok):
                out.append(f"{path}: matches no anyOf branch")
            if key == "oneOf" and sum(ok) != 1:
                out.append(f"{path}: matches {sum(ok)} oneOf branches")
    types = _types(schema)
    if types and not any(_is_type(value, t) for t in types):
        return out + [f"{path}: expected {'/'.join(types)}, got {type(value).__name__}"]
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for name in schema.get("required", []) or []:
            if name not in value:
                out.append(f"{path}: missing required {name!r}")
        for name, v in value.items():
            if name in props:
                out += errors(v, props[name], f"{path}.{name}", root)
            elif schema.get("additionalProperties") is False:
                out.append(f"{path}: unexpected property {name!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += errors(v, schema["additionalProperties"], f"{path}.{name}", root)
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, v in enumerate(value):
                out += errors(v, items, f"{path}[{i}]", root)
        if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
            out.append(f"{path}: fewer than {schema['minItems']} items")
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            out.append(f"{path}: more than {schema['maxItems']} items")
    if isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            out.append(f"{path}: shorter than {schema['minLength']}")
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            out.append(f"{path}: longer than {schema['maxLength']}")
        if isinstance(schema.get("pattern"), str) and not re.search(schema["pattern"], value):
            out.append(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(schema.get("minimum"), (int, float)) and value < schema["minimum"]:
            out.append(f"{path}: below minimum")
        if isinstance(schema.get("maximum"), (int, float)) and value > schema["maximum"]:
            out.append(f"{path}: above maximum")
        if isinstance(schema.get("exclusiveMinimum"), (int, float)) and value <= schema["exclusiveMinimum"]:
            out.append(f"{path}: not above exclusiveMinimum")
        if isinstance(schema.get("exclusiveMaximum"), (int, float)) and value >= schema["exclusiveMaximum"]:
            out.append(f"{path}: not below exclusiveMaximum")
    return out
