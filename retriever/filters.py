"""The filter language: a Mongo-style dict compiled to *parameterized* SQL over the `metadata` JSON column, and over
the typed columns of the fields a store declares (`metadata_fields`).

    {"lang": "en", "year": {"$gte": 2020}, "tags": {"$contains": "policy"}, "title": {"$text": "tax"},
     "$or": [{"domain": "finance"}, {"domain": "legal"}], "$not": {"draft": true}}

Field names become JSON paths passed as parameters (or, for a declared field, a column named from its hex),
values are always parameters: no user text is ever pasted into SQL. Every compiled predicate is a non-NULL
boolean, so $not and $ne are exact. A declared field gives the same rows through its typed column as through
the JSON: type-aware equality (1 == 1.0, never true or "1"), a list field matching when it holds the value.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import metadata_fields as typed
from .errors import FilterError

COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
FIELD_OPERATORS = (*COMPARISONS, "$in", "$nin", "$exists", "$contains", "$text")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
_FIELD = typed.FIELD_NAME
_NUMERIC_TYPES = "('BIGINT', 'UBIGINT', 'DOUBLE')"


@dataclass
class _Compiling:
    """What one compilation collects: the parameters in order, and which columns the SQL reads."""
    fields: dict[str, str]
    params: list
    json: bool = False   # the `metadata` JSON column (table documents)
    typed: bool = False  # a typed column (table fields)


class CompiledFilter(NamedTuple):
    sql: str
    params: list
    reads_json: bool
    reads_fields: bool


class Where(NamedTuple):
    """A filter checked and compiled for the JSON path, with the filter itself: a store that declares fields
    compiles it again over its typed columns (`Store.filter_vids(*where)`)."""
    sql: str
    params: list
    filters: dict


def compile_filter(filters: dict[str, Any] | None, fields: dict[str, str] | None = None) -> tuple[str, list[Any]]:
    """SQL boolean expression over the column `metadata` (and, for `fields` {name: type}, the typed columns of the
    table `fields`) and its parameters. `None`/`{}` matches all."""
    compiled = compile_filter_for(filters, fields)
    return compiled.sql, compiled.params


def compile_filter_for(filters: dict[str, Any] | None, fields: dict[str, str] | None = None) -> CompiledFilter:
    """`compile_filter`, saying which tables the SQL reads (`documents` for the JSON, `fields` for typed columns)."""
    if filters is None:
        return CompiledFilter("TRUE", [], False, False)
    if not isinstance(filters, dict):
        raise FilterError(f"filters must be a dict such as {{'lang': 'en'}}, got {type(filters).__name__}")
    ctx = _Compiling(dict(fields or {}), [])
    sql = _compile_and(filters, ctx, "filters")
    return CompiledFilter(sql, ctx.params, ctx.json, ctx.typed)


def _compile_and(node: dict, ctx: _Compiling, where: str) -> str:
    if not node:
        return "TRUE"
    parts = []
    for key, value in node.items():
        if not isinstance(key, str):
            raise FilterError(f"{where}: key {key!r} must be a string (a metadata field or an operator)")
        if key.startswith("$"):
            parts.append(_compile_logical(key, value, ctx, f"{where}.{key}"))
        else:
            parts.append(_compile_field(key, value, ctx, f"{where}.{key}"))
    return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


def _compile_logical(op: str, value: Any, ctx: _Compiling, where: str) -> str:
    if op in ("$and", "$or"):
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise FilterError(f"{where} takes a non-empty list of filter dicts, got {value!r}")
        joiner = " AND " if op == "$and" else " OR "
        return "(" + joiner.join(_compile_and(v, ctx, f"{where}[{i}]") for i, v in enumerate(value)) + ")"
    if op == "$not":
        if not isinstance(value, dict):
            raise FilterError(f"{where} takes a filter dict, got {value!r}")
        return f"(NOT {_compile_and(value, ctx, where)})"
    raise FilterError(
        f"{where}: unknown operator {op!r}; at the top level use a field name or one of {', '.join(LOGICAL_OPERATORS)}"
        f" (field operators: {', '.join(FIELD_OPERATORS)})"
    )


def _check_scalar(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float) and math.isfinite(value):
        return
    raise FilterError(f"{where}: value {value!r} must be a string, number, boolean or null")


def _path(field: str, where: str) -> str:
    if not _FIELD.match(field):
        raise FilterError(
            f"{where}: field name {field!r} is not allowed; use letters, digits, '_' and '-', with '.' for nested fields"
        )
    return "$." + field


def _compile_field(field: str, cond: Any, ctx: _Compiling, where: str) -> str:
    path = _path(field, where)
    if isinstance(cond, dict) and any(isinstance(k, str) and k.startswith("$") for k in cond):
        parts = []
        for op, value in cond.items():
            if not isinstance(op, str) or op not in FIELD_OPERATORS:
                raise FilterError(f"{where}: unknown operator {op!r}; allowed: {', '.join(FIELD_OPERATORS)}")
            parts.append(_compile_op(field, path, op, value, ctx, f"{where}.{op}"))
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
    if isinstance(cond, (dict, list)):
        raise FilterError(f"{where}: {cond!r} is not a value or an operator dict; write {{'$in': [...]}} for a list")
    return _compile_op(field, path, "$eq", cond, ctx, where)


def _check_op(op: str, value: Any, where: str) -> None:
    """The value an operator takes (the same rule on both paths)."""
    if op in ("$eq", "$ne"):
        _check_scalar(value, where)
    elif op in ("$gt", "$gte", "$lt", "$lte"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise FilterError(f"{where}: {op} compares with a number or a string (e.g. an ISO date), got {value!r}")
    elif op in ("$in", "$nin"):
        if not isinstance(value, (list, tuple)) or not value:
            raise FilterError(f"{where}: {op} takes a non-empty list of values, got {value!r}")
        for i, v in enumerate(value):
            _check_scalar(v, f"{where}[{i}]")
    elif op == "$exists":
        if not isinstance(value, bool):
            raise FilterError(f"{where}: $exists takes true or false, got {value!r}")
    elif op == "$contains":
        _check_scalar(value, where)
        if value is None:
            raise FilterError(f"{where}: $contains needs a value to look for in a list field, got null")
    elif op == "$text":
        if not isinstance(value, str) or not value:
            raise FilterError(f"{where}: $text takes a non-empty string to find inside a string field, got {value!r}")
    else:  # pragma: no cover
        raise FilterError(f"{where}: unknown operator {op!r}; allowed: {', '.join(FIELD_OPERATORS)}")


def _compile_op(field: str, path: str, op: str, value: Any, ctx: _Compiling, where: str) -> str:
    _check_op(op, value, where)
    ftype = ctx.fields.get(field)
    if ftype is None:
        ctx.json = True
        return _json_op(path, op, value, ctx.params)
    ctx.typed = True
    return _typed_op(field, ftype, op, value, ctx.params)


def _typed_op(field: str, ftype: str, op: str, value: Any, params: list) -> str:
    """The operator over a declared field's typed columns (`metadata_fields`)."""
    if op == "$eq":
        return typed.eq(field, ftype, [value], params)
    if op == "$ne":
        return f"(NOT {typed.eq(field, ftype, [value], params)})"
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return typed.compare(field, ftype, COMPARISONS[op], value, params)
    if op in ("$in", "$nin"):
        any_eq = typed.eq(field, ftype, list(value), params)
        return any_eq if op == "$in" else f"(NOT {any_eq})"
    if op == "$exists":
        return typed.exists(field) if value else f"(NOT {typed.exists(field)})"
    if op == "$contains":
        return typed.contains_member(field, ftype, value, params)
    return typed.text(field, ftype, value, params)  # $text


# ------------------------------------------------------------------------------------------ JSON path

def _member_text(value: Any, params: list) -> str:
    """The JSON text of a list element equal to `value`: a string as DuckDB writes it (to_json: the same escapes
    as the stored elements, non-ASCII kept), other scalars as JSON."""
    if isinstance(value, str):
        params.append(value)
        return "to_json(?::VARCHAR)::VARCHAR"
    params.append(json.dumps(value))
    return "?"


def _eq(path: str, value: Any, params: list) -> str:
    """Exact, type-aware equality of a JSON field with a scalar; an array field matches if it holds the value."""
    if value is None:
        params.append(path)
        return "COALESCE(json_type(metadata, ?) = 'NULL', FALSE)"
    if isinstance(value, bool):
        params.extend([path, path, json.dumps(value)])
        return "COALESCE(json_type(metadata, ?) = 'BOOLEAN' AND json_extract_string(metadata, ?) = ?, FALSE)"
    if isinstance(value, (int, float)):
        params.extend([path, path, float(value), path + "[*]"])
        return (
            f"COALESCE((json_type(metadata, ?) IN {_NUMERIC_TYPES} AND TRY_CAST(json_extract_string(metadata, ?) AS DOUBLE) = ?)"
            f" OR list_contains(json_extract(metadata, ?)::VARCHAR[], {_member_text(value, params)}), FALSE)"
        )
    params.extend([path, path, value, path + "[*]"])
    return (
        "COALESCE((json_type(metadata, ?) = 'VARCHAR' AND json_extract_string(metadata, ?) = ?)"
        f" OR list_contains(json_extract(metadata, ?)::VARCHAR[], {_member_text(value, params)}), FALSE)"
    )


def _json_op(path: str, op: str, value: Any, params: list) -> str:
    if op == "$eq":
        return _eq(path, value, params)
    if op == "$ne":
        return f"(NOT {_eq(path, value, params)})"
    if op in ("$gt", "$gte", "$lt", "$lte"):
        sql_op = COMPARISONS[op]
        if isinstance(value, str):
            params.extend([path, path, value])
            return f"COALESCE(json_type(metadata, ?) = 'VARCHAR' AND json_extract_string(metadata, ?) {sql_op} ?, FALSE)"
        params.extend([path, path, float(value)])
        return (
            f"COALESCE(json_type(metadata, ?) IN {_NUMERIC_TYPES} AND "
            f"TRY_CAST(json_extract_string(metadata, ?) AS DOUBLE) {sql_op} ?, FALSE)"
        )
    if op in ("$in", "$nin"):
        any_eq = "(" + " OR ".join(_eq(path, v, params) for v in value) + ")"
        return any_eq if op == "$in" else f"(NOT {any_eq})"
    if op == "$exists":
        params.append(path)
        return "(json_exists(metadata, ?) IS TRUE)" if value else "(json_exists(metadata, ?) IS NOT TRUE)"
    if op == "$contains":
        params.append(path + "[*]")
        return f"COALESCE(list_contains(json_extract(metadata, ?)::VARCHAR[], {_member_text(value, params)}), FALSE)"
    params.extend([path, path, value])  # $text
    return ("COALESCE(json_type(metadata, ?) = 'VARCHAR' AND "
            "contains(json_extract_string(metadata, ?), ?), FALSE)")


def compile_where(filters: dict | None) -> Where | None:
    """The filter compiled once per call (a malformed one fails before any model runs); None matches all. The
    store compiles it again over the typed columns of the fields it declares."""
    if filters is None:
        return None
    sql, params = compile_filter(filters)
    return None if filters == {} else Where(sql, params, filters)
