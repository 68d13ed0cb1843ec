"""The filter language: a Mongo-style dict compiled to *parameterized* SQL over the `metadata` JSON column.

    {"lang": "en", "year": {"$gte": 2020}, "tags": {"$contains": "policy"}, "title": {"$text": "tax"},
     "$or": [{"domain": "finance"}, {"domain": "legal"}], "$not": {"draft": true}}

Field names become JSON paths passed as parameters, values are always parameters: no user text is
ever pasted into SQL. Every compiled predicate is a non-NULL boolean, so $not and $ne are exact.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import FilterError

COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
FIELD_OPERATORS = (*COMPARISONS, "$in", "$nin", "$exists", "$contains", "$text")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")
_NUMERIC_TYPES = "('BIGINT', 'UBIGINT', 'DOUBLE')"


def compile_filter(filters: dict[str, Any] | None) -> tuple[str, list[Any]]:
    """SQL boolean expression over the column `metadata` and its parameters. `None`/`{}` matches all."""
    if filters is None:
        return "TRUE", []
    if not isinstance(filters, dict):
        raise FilterError(f"filters must be a dict such as {{'lang': 'en'}}, got {type(filters).__name__}")
    params: list[Any] = []
    sql = _compile_and(filters, params, "filters")
    return sql, params


def _compile_and(node: dict, params: list, where: str) -> str:
    if not node:
        return "TRUE"
    parts = []
    for key, value in node.items():
        if not isinstance(key, str):
            raise FilterError(f"{where}: key {key!r} must be a string (a metadata field or an operator)")
        if key.startswith("$"):
            parts.append(_compile_logical(key, value, params, f"{where}.{key}"))
        else:
            parts.append(_compile_field(key, value, params, f"{where}.{key}"))
    return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


def _compile_logical(op: str, value: Any, params: list, where: str) -> str:
    if op in ("$and", "$or"):
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise FilterError(f"{where} takes a non-empty list of filter dicts, got {value!r}")
        joiner = " AND " if op == "$and" else " OR "
        return "(" + joiner.join(_compile_and(v, params, f"{where}[{i}]") for i, v in enumerate(value)) + ")"
    if op == "$not":
        if not isinstance(value, dict):
            raise FilterError(f"{where} takes a filter dict, got {value!r}")
        return f"(NOT {_compile_and(value, params, where)})"
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


def _compile_field(field: str, cond: Any, params: list, where: str) -> str:
    path = _path(field, where)
    if isinstance(cond, dict) and any(isinstance(k, str) and k.startswith("$") for k in cond):
        parts = []
        for op, value in cond.items():
            if not isinstance(op, str) or op not in FIELD_OPERATORS:
                raise FilterError(f"{where}: unknown operator {op!r}; allowed: {', '.join(FIELD_OPERATORS)}")
            parts.append(_compile_op(path, op, value, params, f"{where}.{op}"))
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
    if isinstance(cond, (dict, list)):
        raise FilterError(f"{where}: {cond!r} is not a value or an operator dict; write {{'$in': [...]}} for a list")
    return _compile_op(path, "$eq", cond, params, where)


def _eq(path: str, value: Any, params: list) -> str:
    """Exact, type-aware equality of a JSON field with a scalar; an array field matches if it holds the value."""
    if value is None:
        params.append(path)
        return "COALESCE(json_type(metadata, ?) = 'NULL', FALSE)"
    if isinstance(value, bool):
        params.extend([path, path, json.dumps(value)])
        return "COALESCE(json_type(metadata, ?) = 'BOOLEAN' AND json_extract_string(metadata, ?) = ?, FALSE)"
    if isinstance(value, (int, float)):
        params.extend([path, path, float(value), path + "[*]", json.dumps(value)])
        return (
            f"COALESCE((json_type(metadata, ?) IN {_NUMERIC_TYPES} AND TRY_CAST(json_extract_string(metadata, ?) AS DOUBLE) = ?)"
            " OR list_contains(json_extract(metadata, ?)::VARCHAR[], ?), FALSE)"
        )
    params.extend([path, path, value, path + "[*]", json.dumps(value)])
    return (
        "COALESCE((json_type(metadata, ?) = 'VARCHAR' AND json_extract_string(metadata, ?) = ?)"
        " OR list_contains(json_extract(metadata, ?)::VARCHAR[], ?), FALSE)"
    )


def _compile_op(path: str, op: str, value: Any, params: list, where: str) -> str:
    if op == "$eq":
        _check_scalar(value, where)
        return _eq(path, value, params)
    if op == "$ne":
        _check_scalar(value, where)
        return f"(NOT {_eq(path, value, params)})"
    if op in ("$gt", "$gte", "$lt", "$lte"):
        sql_op = COMPARISONS[op]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise FilterError(f"{where}: {op} compares with a number or a string (e.g. an ISO date), got {value!r}")
        if isinstance(value, str):
            params.extend([path, path, value])
            return f"COALESCE(json_type(metadata, ?) = 'VARCHAR' AND json_extract_string(metadata, ?) {sql_op} ?, FALSE)"
        params.extend([path, path, float(value)])
        return (
            f"COALESCE(json_type(metadata, ?) IN {_NUMERIC_TYPES} AND "
            f"TRY_CAST(json_extract_string(metadata, ?) AS DOUBLE) {sql_op} ?, FALSE)"
        )
    if op in ("$in", "$nin"):
        if not isinstance(value, (list, tuple)) or not value:
            raise FilterError(f"{where}: {op} takes a non-empty list of values, got {value!r}")
        for i, v in enumerate(value):
            _check_scalar(v, f"{where}[{i}]")
        any_eq = "(" + " OR ".join(_eq(path, v, params) for v in value) + ")"
        return any_eq if op == "$in" else f"(NOT {any_eq})"
    if op == "$exists":
        if not isinstance(value, bool):
            raise FilterError(f"{where}: $exists takes true or false, got {value!r}")
        params.append(path)
        return "(json_exists(metadata, ?) IS TRUE)" if value else "(json_exists(metadata, ?) IS NOT TRUE)"
    if op == "$contains":
        _check_scalar(value, where)
        if value is None:
            raise FilterError(f"{where}: $contains needs a value to look for in a list field, got null")
        params.extend([path + "[*]", json.dumps(value)])
        return "COALESCE(list_contains(json_extract(metadata, ?)::VARCHAR[], ?), FALSE)"
    if op == "$text":
        if not isinstance(value, str) or not value:
            raise FilterError(f"{where}: $text takes a non-empty string to find inside a string field, got {value!r}")
        params.extend([path, path, value])
        return ("COALESCE(json_type(metadata, ?) = 'VARCHAR' AND "
                "contains(json_extract_string(metadata, ?), ?), FALSE)")
    raise FilterError(f"{where}: unknown operator {op!r}; allowed: {', '.join(FIELD_OPERATORS)}")  # pragma: no cover


def compile_where(filters: dict | None) -> tuple[str, list] | None:
    """The filter compiled once per call (a malformed one fails before any model runs); None matches all."""
    if filters is None:
        return None
    sql, params = compile_filter(filters)
    return None if filters == {} else (sql, params)
