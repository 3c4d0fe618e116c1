"""Mango selectors (CouchDB's query language) for data views: parse, evaluate, translate to SQL.

No Django. A view (replication/data_views.py) stores a selector; this module turns it into a
`Selector` tree once, then either evaluates it on a document body in Python (the live hub,
once per change and view binding) or translates it into a SQL condition on the document's
`body` column (catch-up reads through an index instead of a scan; SQLite JSON1 or PostgreSQL
jsonb). Both must give the same answer for every stored document:
`tests/replication/test_mango.py` checks it with hypothesis on both backends.

Semantics (docs/protocol.md, "Views"), a subset of CouchDB's, chosen so that Python and both SQL
dialects agree exactly:

- A field is a dotted path of object keys (`owner.name`); a path never indexes into an array.
  A segment is 1 to 64 characters, none of them `.`, `"`, `\\`, `$` first, or a control character.
- `{"f": v}` is `{"f": {"$eq": v}}`; `{"f": {"g": v}}` (no `$` keys) is `{"f.g": v}`; several
  keys in one object are AND.
- Operands of `$eq`, `$ne`, `$in`, `$nin` are scalars (string, number, boolean, null); equality
  is by JSON type (true is not 1, 1 is 1.0).
- `$gt`, `$gte`, `$lt`, `$lte` take a number or a string and match only a field of the same
  kind: numbers numerically, strings by code point (PostgreSQL compares with `COLLATE "C"`).
- `$ne` and `$nin` match only a field that exists (as CouchDB does); `$not` negates its whole
  sub-selector, a missing field included; `$exists` tests presence (a JSON null is present).
- Parameters: a string operand that is exactly `{name}` is bound from the session when the view
  is used (`{username}`, `{tenant}`); any other `{name}` is DG-4104.

Hostile selectors get DG errors naming the offending part (its path in the selector): more
than MAX_DEPTH levels or MAX_NODES operators (DG-4103), unknown operators (DG-4102), wrong
shapes and types (DG-4101).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import DataGateError, ErrorCode

MAX_DEPTH = 12
MAX_NODES = 200
MAX_IN = 200
MAX_STRING = 1024
MAX_FIELD_SEGMENTS = 8
# Integers beyond a double's exact range compare differently in SQLite (doubles) and
# PostgreSQL (numeric): operands are refused there.
MAX_EXACT_INT = 2**53
PARAMETERS = frozenset({"username", "tenant"})

_SEGMENT = re.compile(r'[^.$"\\\x00-\x1f\x7f][^."\\\x00-\x1f\x7f]{0,63}')
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,31})\}")

COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
FIELD_OPERATORS = frozenset({"$eq", "$ne", "$in", "$nin", "$exists", *COMPARISONS})
COMBINATORS = frozenset({"$and", "$or", "$not"})

Scalar = str | int | float | bool | None


# --- the tree --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A string operand bound from the session: `{username}`."""

    name: str


@dataclass(frozen=True)
class FieldTest:
    path: tuple[str, ...]
    op: str  # one of FIELD_OPERATORS
    operand: Any  # a scalar, a Param, a tuple of them ($in, $nin), a bool ($exists)


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node = FieldTest | AllOf | AnyOf | Not


@dataclass(frozen=True)
class Selector:
    """A parsed selector: `root`, and the names of the parameters it uses."""

    root: Node
    parameters: frozenset[str]

    def bind(self, values: Mapping[str, str]) -> Selector:
        """The selector with its parameters replaced by `values` (every one must be there)."""
        missing = self.parameters - set(values)
        if missing:
            name = sorted(missing)[0]
            raise _error(ErrorCode.SELECTOR_UNKNOWN_PARAMETER, "selector", name=name)
        return Selector(_bind(self.root, values), frozenset())

    def matches(self, body: Any) -> bool:
        return _evaluate(self.root, body)


def _bind(node: Node, values: Mapping[str, str]) -> Node:
    if isinstance(node, FieldTest):
        operand = node.operand
        if isinstance(operand, Param):
            operand = values[operand.name]
        elif isinstance(operand, tuple):
            operand = tuple(values[o.name] if isinstance(o, Param) else o for o in operand)
        return FieldTest(node.path, node.op, operand)
    if isinstance(node, AllOf):
        return AllOf(tuple(_bind(p, values) for p in node.parts))
    if isinstance(node, AnyOf):
        return AnyOf(tuple(_bind(p, values) for p in node.parts))
    return Not(_bind(node.part, values))


# --- parsing ---------------------------------------------------------------------------------


def _error(code: ErrorCode, where: str, **params: Any) -> DataGateError:
    return DataGateError(code, where=where[:60], **params)


class _Parser:
    def __init__(self) -> None:
        self.nodes = 0
        self.parameters: set[str] = set()

    def count(self, where: str) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _error(
                ErrorCode.SELECTOR_TOO_COMPLEX, where, detail=f"more than {MAX_NODES} conditions"
            )

    def selector(self, raw: Any, where: str, prefix: tuple[str, ...], depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise _error(
                ErrorCode.SELECTOR_TOO_COMPLEX, where, detail=f"nests deeper than {MAX_DEPTH}"
            )
        if not isinstance(raw, dict):
            raise _error(ErrorCode.SELECTOR_INVALID, where, detail="expected an object")
        parts: list[Node] = []
        for key, value in raw.items():
            here = f"{where}.{key}" if where else str(key)
            if key in COMBINATORS:
                parts.append(self.combinator(key, value, here, prefix, depth))
            elif key.startswith("$"):
                if key in FIELD_OPERATORS:
                    detail = f"{key} needs a field"
                    raise _error(ErrorCode.SELECTOR_INVALID, here, detail=detail)
                raise _error(ErrorCode.SELECTOR_UNKNOWN_OPERATOR, here, operator=key)
            else:
                path = prefix + field_path(key, where=here)
                if len(path) > MAX_FIELD_SEGMENTS:
                    detail = f"a field path longer than {MAX_FIELD_SEGMENTS} keys"
                    raise _error(ErrorCode.SELECTOR_TOO_COMPLEX, here, detail=detail)
                parts.append(self.field(value, here, path, depth + 1))
        if len(parts) == 1:
            return parts[0]
        return AllOf(tuple(parts))

    def combinator(
        self, key: str, value: Any, where: str, prefix: tuple[str, ...], depth: int
    ) -> Node:
        self.count(where)
        if key == "$not":
            return Not(self.selector(value, where, prefix, depth + 1))
        if not isinstance(value, list) or not value:
            raise _error(ErrorCode.SELECTOR_INVALID, where, detail="expected a non-empty list")
        if len(value) > MAX_NODES:
            detail = f"more than {MAX_NODES} conditions"
            raise _error(ErrorCode.SELECTOR_TOO_COMPLEX, where, detail=detail)
        parts = tuple(
            self.selector(item, f"{where}[{index}]", prefix, depth + 1)
            for index, item in enumerate(value)
        )
        return AllOf(parts) if key == "$and" else AnyOf(parts)

    def field(self, value: Any, where: str, path: tuple[str, ...], depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise _error(
                ErrorCode.SELECTOR_TOO_COMPLEX, where, detail=f"nests deeper than {MAX_DEPTH}"
            )
        if not isinstance(value, dict):
            self.count(where)
            return FieldTest(path, "$eq", self.scalar(value, where))
        if not value:
            raise _error(ErrorCode.SELECTOR_INVALID, where, detail="an empty condition")
        dollar = [k.startswith("$") for k in value]
        if not any(dollar):  # {"a": {"b": 1}} is {"a.b": 1}
            return self.selector(value, where, path, depth)
        if not all(dollar):
            detail = "mixes operators and fields"
            raise _error(ErrorCode.SELECTOR_INVALID, where, detail=detail)
        parts: list[Node] = []
        for op, operand in value.items():
            here = f"{where}.{op}"
            if op == "$not":
                self.count(here)
                parts.append(Not(self.field(operand, here, path, depth + 1)))
            elif op in ("$and", "$or"):
                self.count(here)
                if not isinstance(operand, list) or not operand:
                    detail = "expected a non-empty list"
                    raise _error(ErrorCode.SELECTOR_INVALID, here, detail=detail)
                if len(operand) > MAX_NODES:
                    detail = f"more than {MAX_NODES} conditions"
                    raise _error(ErrorCode.SELECTOR_TOO_COMPLEX, here, detail=detail)
                subs = tuple(
                    self.field(item, f"{here}[{i}]", path, depth + 1)
                    for i, item in enumerate(operand)
                )
                parts.append(AllOf(subs) if op == "$and" else AnyOf(subs))
            elif op in FIELD_OPERATORS:
                self.count(here)
                parts.append(FieldTest(path, op, self.operand(op, operand, here)))
            else:
                raise _error(ErrorCode.SELECTOR_UNKNOWN_OPERATOR, here, operator=op)
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def operand(self, op: str, operand: Any, where: str) -> Any:
        if op == "$exists":
            if not isinstance(operand, bool):
                raise _error(ErrorCode.SELECTOR_INVALID, where, detail="expected true or false")
            return operand
        if op in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise _error(ErrorCode.SELECTOR_INVALID, where, detail="expected a list")
            if len(operand) > MAX_IN:
                detail = f"more than {MAX_IN} values"
                raise _error(ErrorCode.SELECTOR_TOO_COMPLEX, where, detail=detail)
            return tuple(self.scalar(item, f"{where}[{i}]") for i, item in enumerate(operand))
        value = self.scalar(operand, where)
        if op in COMPARISONS and (value is None or isinstance(value, bool)):
            raise _error(ErrorCode.SELECTOR_INVALID, where, detail="expected a number or a string")
        return value

    def scalar(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            if abs(value) > MAX_EXACT_INT:
                detail = f"an integer beyond ±2**53 ({value:.3g})"
                raise _error(ErrorCode.SELECTOR_INVALID, where, detail=detail)
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise _error(ErrorCode.SELECTOR_INVALID, where, detail="a number JSON cannot hold")
            return value
        if isinstance(value, str):
            if len(value) > MAX_STRING:
                detail = f"a string longer than {MAX_STRING}"
                raise _error(ErrorCode.SELECTOR_INVALID, where, detail=detail)
            if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
                detail = "a string with NUL or a lone surrogate"
                raise _error(ErrorCode.SELECTOR_INVALID, where, detail=detail)
            found = _PARAMETER.fullmatch(value)
            if found is not None:
                name = found.group(1)
                if name not in PARAMETERS:
                    raise _error(ErrorCode.SELECTOR_UNKNOWN_PARAMETER, where, name=name)
                self.parameters.add(name)
                return Param(name)
            return value
        raise _error(
            ErrorCode.SELECTOR_INVALID,
            where,
            detail=f"a {type(value).__name__} where a string, number, boolean or null belongs",
        )


def field_path(name: Any, *, where: str) -> tuple[str, ...]:
    """A dotted field name as its keys (DG-4101 for a name outside the rules)."""
    if not isinstance(name, str):
        raise _error(ErrorCode.SELECTOR_INVALID, where, detail="a field name must be a string")
    segments = tuple(name.split("."))
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise _error(ErrorCode.SELECTOR_INVALID, where, detail=f"bad field name {name[:40]!r}")
    return segments


def parse(raw: Any) -> Selector:
    """Parse a selector (an already decoded JSON value); DG-41xx naming the bad part."""
    parser = _Parser()
    if not isinstance(raw, dict):
        raise _error(ErrorCode.SELECTOR_INVALID, "selector", detail="expected an object")
    if not raw:
        return Selector(AllOf(()), frozenset())
    root = parser.selector(raw, "", (), 0)
    return Selector(root, frozenset(parser.parameters))


def parse_fields(raw: Any) -> tuple[tuple[str, ...], ...]:
    """The projected fields of a view: a list of dotted field names (empty: whole documents)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_NODES:
        raise _error(ErrorCode.SELECTOR_INVALID, "fields", detail="expected a list of fields")
    return tuple(field_path(name, where=f"fields[{i}]") for i, name in enumerate(raw))


def project(body: Mapping[str, Any], fields: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """`body` with only `fields` (those it holds), nested as they were."""
    if not fields:
        return dict(body)
    out: dict[str, Any] = {}
    for path in fields:
        found, value = _lookup(body, path)
        if not found:
            continue
        target = out
        for key in path[:-1]:
            nested = target.get(key)
            if not isinstance(nested, dict):
                nested = target[key] = {}
            target = nested
        target[path[-1]] = value
    return out


# --- evaluation in Python --------------------------------------------------------------------

_MISSING = object()


def _lookup(body: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    value = body
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return False, None
        value = value[key]
    return True, value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def _equal(value: Any, operand: Any) -> bool:
    kind = _kind(operand)
    return _kind(value) == kind and (kind == "null" or value == operand)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _evaluate(node: Node, body: Any) -> bool:
    if isinstance(node, AllOf):
        return all(_evaluate(part, body) for part in node.parts)
    if isinstance(node, AnyOf):
        return any(_evaluate(part, body) for part in node.parts)
    if isinstance(node, Not):
        return not _evaluate(node.part, body)
    found, value = _lookup(body, node.path)
    op, operand = node.op, node.operand
    if isinstance(operand, Param) or (
        isinstance(operand, tuple) and any(isinstance(o, Param) for o in operand)
    ):
        raise ValueError("bind the selector's parameters before evaluating it")
    if op == "$exists":
        return found is operand
    if not found:
        return False
    if op == "$eq":
        return _equal(value, operand)
    if op == "$ne":
        return not _equal(value, operand)
    if op == "$in":
        return any(_equal(value, o) for o in operand)
    if op == "$nin":
        return not any(_equal(value, o) for o in operand)
    if _kind(value) != _kind(operand):
        return False
    return _COMPARE[op](value, operand)


# --- translation to SQL ----------------------------------------------------------------------


@dataclass(frozen=True)
class Sql:
    """A SQL condition on `column` and its parameters."""

    text: str
    params: tuple[Any, ...]


class _Dialect:
    def __init__(self, vendor: str, column: str) -> None:
        if vendor not in ("sqlite", "postgresql"):
            raise ValueError(f"no Mango translation for {vendor}")
        self.vendor = vendor
        self.column = column

    def value(self, path: tuple[str, ...]) -> tuple[str, list[Any]]:
        """The JSON value at `path` (SQL NULL when missing)."""
        if self.vendor == "sqlite":
            return f"json_extract({self.column}, %s)", [_sqlite_path(path)]
        arrows = " -> %s::text" * len(path)
        return f"({self.column}{arrows})", list(path)

    def type_is(self, path: tuple[str, ...], kind: str) -> tuple[str, list[Any]]:
        if self.vendor == "sqlite":
            types = {
                "null": "('null')",
                "bool": "('true', 'false')",
                "number": "('integer', 'real')",
                "string": "('text')",
            }[kind]
            return f"json_type({self.column}, %s) IN {types}", [_sqlite_path(path)]
        value, params = self.value(path)
        types = {
            "null": "('null')",
            "bool": "('boolean')",
            "number": "('number')",
            "string": "('string')",
        }[kind]
        return f"jsonb_typeof({value}) IN {types}", params

    def exists(self, path: tuple[str, ...]) -> tuple[str, list[Any]]:
        if self.vendor == "sqlite":
            return f"json_type({self.column}, %s) IS NOT NULL", [_sqlite_path(path)]
        value, params = self.value(path)
        return f"{value} IS NOT NULL", params

    def equal(self, path: tuple[str, ...], operand: Any) -> tuple[str, list[Any]]:
        kind = _kind(operand)
        typed, params = self.type_is(path, kind)
        if kind == "null":
            return typed, params
        value, more = self.scalar(path, kind)
        if kind == "bool":
            literal = "1" if self.vendor == "sqlite" else "true"
            if not operand:
                literal = "0" if self.vendor == "sqlite" else "false"
            return f"(CASE WHEN {typed} THEN {value} = {literal} ELSE FALSE END)", params + more
        return f"(CASE WHEN {typed} THEN {value} = %s ELSE FALSE END)", params + more + [operand]

    def scalar(self, path: tuple[str, ...], kind: str) -> tuple[str, list[Any]]:
        """The value at `path` as a SQL scalar of `kind` (guarded by `type_is`)."""
        if self.vendor == "sqlite":
            return self.value(path)
        keys = ", ".join(["%s"] * len(path))
        text = f"({self.column} #>> ARRAY[{keys}]::text[])"
        if kind == "number":
            return f"{text}::numeric", list(path)
        if kind == "bool":
            return f"{text}::boolean", list(path)
        return f'{text} COLLATE "C"', list(path)

    def compare(self, path: tuple[str, ...], op: str, operand: Any) -> tuple[str, list[Any]]:
        kind = _kind(operand)
        typed, params = self.type_is(path, kind)
        value, more = self.scalar(path, kind)
        sign = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
        # CASE, not AND: PostgreSQL may cast before it checks the type.
        return f"(CASE WHEN {typed} THEN {value} {sign} %s ELSE FALSE END)", [
            *params,
            *more,
            operand,
        ]


def _sqlite_path(path: tuple[str, ...]) -> str:
    return "$" + "".join(f'."{key}"' for key in path)


def _sql(node: Node, dialect: _Dialect) -> tuple[str, list[Any]]:
    if isinstance(node, AllOf | AnyOf):
        if not node.parts:
            return ("1 = 1" if isinstance(node, AllOf) else "1 = 0"), []
        texts, params = [], []
        for part in node.parts:
            text, more = _sql(part, dialect)
            texts.append(text)
            params.extend(more)
        joiner = " AND " if isinstance(node, AllOf) else " OR "
        return "(" + joiner.join(texts) + ")", params
    if isinstance(node, Not):
        text, params = _sql(node.part, dialect)
        # A condition on a missing field is NULL in SQL, false here: NOT must see false.
        return f"NOT COALESCE({text}, FALSE)", params
    op, operand = node.op, node.operand
    if isinstance(operand, Param) or (
        isinstance(operand, tuple) and any(isinstance(o, Param) for o in operand)
    ):
        raise ValueError("bind the selector's parameters before translating it")
    if op == "$exists":
        text, params = dialect.exists(node.path)
        return (text if operand else f"NOT ({text})"), params
    exists, exists_params = dialect.exists(node.path)
    if op == "$eq":
        return dialect.equal(node.path, operand)
    if op in ("$ne", "$nin"):
        values = (operand,) if op == "$ne" else operand
        if not values:
            return exists, exists_params
        texts, params = [], list(exists_params)
        for value in values:
            text, more = dialect.equal(node.path, value)
            texts.append(f"COALESCE({text}, FALSE)")
            params.extend(more)
        return f"({exists} AND NOT ({' OR '.join(texts)}))", params
    if op == "$in":
        if not operand:
            return "1 = 0", []
        texts, params = [], []
        for value in operand:
            text, more = dialect.equal(node.path, value)
            texts.append(text)
            params.extend(more)
        return "(" + " OR ".join(texts) + ")", params
    return dialect.compare(node.path, op, operand)


def equalities(node: Node) -> list[tuple[tuple[str, ...], Any]]:
    """The (path, scalar) equalities every document the selector matches must hold."""
    parts = node.parts if isinstance(node, AllOf) else (node,)
    return [
        (part.path, part.operand)
        for part in parts
        if isinstance(part, FieldTest) and part.op == "$eq"
    ]


def sqlite_extract(column: str, path: tuple[str, ...]) -> str:
    """`json_extract(column, '$."a"."b"')` with the path as a literal (segments hold no `"` or
    backslash; a `'` is doubled)."""
    literal = _sqlite_path(path).replace("'", "''")
    return f"json_extract({column}, '{literal}')"


def sqlite_index_sql(table: str, path: tuple[str, ...]) -> str:
    """The expression index a view's equality on `path` is read through on SQLite."""
    name = "document_json_" + format(zlib.crc32(".".join(path).encode()), "08x")
    return (
        f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" '
        f'("collection_id", {sqlite_extract(chr(34) + "body" + chr(34), path)})'
    )


def _containment(node: Node) -> dict[str, Any]:
    """The equalities every matching document must hold, as one JSON object (`{"status":
    "open", "owner": {"name": "ann"}}`): PostgreSQL's `@>` finds those through a GIN index."""
    parts = node.parts if isinstance(node, AllOf) else (node,)
    contained: dict[str, Any] = {}
    for part in parts:
        if not isinstance(part, FieldTest) or part.op != "$eq":
            continue
        target = contained
        for key in part.path[:-1]:
            nested = target.setdefault(key, {})
            if not isinstance(nested, dict):
                break
            target = nested
        else:
            target.setdefault(part.path[-1], part.operand)
    return contained


def to_sql(selector: Selector, *, vendor: str, column: str) -> Sql:
    """The selector (bound) as a SQL condition on the JSON `column` for `vendor`.

    On PostgreSQL the equalities of the top level are also asked as one containment (`@>`),
    which the GIN index on the column answers (migration replication/0010); the exact condition
    still decides, so the result is the same with or without the index."""
    text, params = _sql(selector.root, _Dialect(vendor, column))
    if vendor == "sqlite":
        # The same equalities in the exact form of the expression indexes `sqlite_index_sql`
        # creates (a literal path: SQLite matches an index expression only textually).
        lookups = [
            (sqlite_extract(column, path), value)
            for path, value in equalities(selector.root)
            if isinstance(value, str | int | float) and not isinstance(value, bool)
        ]
        if lookups:
            narrowing = " AND ".join(f"{expression} = %s" for expression, _ in lookups)
            text = f"({narrowing} AND {text})"
            params = [value for _, value in lookups] + params
    if vendor == "postgresql":
        contained = _containment(selector.root)
        if contained:
            text = f"({column} @> %s::jsonb AND {text})"
            params = [json.dumps(contained), *params]
    return Sql(text, tuple(params))
