"""Declared metadata fields: typed, indexed DuckDB columns beside the JSON `metadata`, used by the filter compiler
for the fields `[metadata] fields` names (``fields = {year = "int", company = "str", tags = "list[str]"}``);
every other field stays on the JSON path.

A declared field's column holds exactly what the JSON holds, or the write is refused (an InputError naming the
document, the field, the type and the fix), so every operator on a typed column gives what the same operator
gives over the JSON (`tests/test_metadata_fields.py` checks each against the JSON path on the same rows).

The columns live in the side table `fields` (one row per `documents` row, the same vid, written in the same
transaction), two per field, named from the hex of the field name so no text of a caller reaches SQL:

    v_<hex>  the value: BIGINT (int), DOUBLE (float), VARCHAR (str), BOOLEAN (bool); a list is one VARCHAR with
             its elements between U+001F separators ("\\x1fa\\x1fb\\x1f", [] is ""), so membership is a substring
             test (at 1M rows 3x faster than list_contains over a VARCHAR[]); NULL when missing or null
    n_<hex>  TRUE when the field is present with the value null ($exists and {field: null} stay exact)

int and str columns carry an ART index (an equality on a rare value reads a few rows). A side table makes
adding a field cheap: it is rebuilt from the stored JSON in one transaction, `documents` untouched.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Sequence

from .errors import ConfigError, InputError

# the filter language's field-name rule: letters, digits, '_' and '-', with '.' for a nested field
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")
FIELD_TYPES = {"int": "BIGINT", "float": "DOUBLE", "str": "VARCHAR", "bool": "BOOLEAN",
               "list[str]": "VARCHAR", "list[int]": "VARCHAR"}
LIST_TYPES = ("list[str]", "list[int]")
INDEXED = ("int", "str")
EXACT_INT = 2 ** 53  # numbers compare as doubles on the JSON path; integers up to this are exact there
SEP = "\x1f"
TABLE = "fields"
_MISSING = object()


def check_fields(fields: Any, key: str = "metadata.fields") -> dict[str, str]:
    """The declared fields, checked: names by the filter's field-name rule, types among FIELD_TYPES."""
    allowed = ", ".join(f'"{t}"' for t in FIELD_TYPES)
    if not isinstance(fields, dict):
        raise ConfigError(f'{key} = {fields!r} must be a table of field name to type, e.g. '
                          f'fields = {{year = "int", tags = "list[str]"}}; allowed types: {allowed}')
    for name, ftype in fields.items():
        if not isinstance(name, str) or not FIELD_NAME.match(name):
            raise ConfigError(f"{key}: field name {name!r} is not allowed; use letters, digits, '_' and '-', with "
                              f"'.' for a nested field (quote it in TOML: \"a.b\" = \"int\")")
        if ftype not in FIELD_TYPES:
            raise ConfigError(f"{key}.{name} = {ftype!r} is not a field type; allowed types: {allowed}; use one of "
                              f"them, or leave the field undeclared to filter it on the JSON")
    return dict(fields)


def value_column(name: str) -> str:
    return "v_" + name.encode().hex()


def null_column(name: str) -> str:
    return "n_" + name.encode().hex()


def lookup(metadata: dict, name: str) -> Any:
    """The value at a (dotted) field name, as the JSON path `$.a.b` finds it, or _MISSING."""
    node: Any = metadata
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _exact_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -EXACT_INT <= v <= EXACT_INT


def _stored(ftype: str, value: Any) -> Any:
    """The column value for a non-null JSON value, or _MISSING when the value is not of the declared type."""
    if ftype == "str":
        return value if isinstance(value, str) else _MISSING
    if ftype == "bool":
        return value if isinstance(value, bool) else _MISSING
    if ftype == "int":
        return value if _exact_int(value) else _MISSING
    if ftype == "float":
        if _exact_int(value) or (isinstance(value, float) and math.isfinite(value)):
            return float(value)
        return _MISSING
    if not isinstance(value, (list, tuple)):
        return _MISSING
    if ftype == "list[str]":
        ok = all(isinstance(x, str) and SEP not in x for x in value)
        texts = value
    else:
        ok = all(_exact_int(x) for x in value)
        texts = [str(x) for x in value] if ok else []
    if not ok:
        return _MISSING
    return SEP + SEP.join(texts) + SEP if texts else ""


_KINDS = {"int": "an integer within +-2**53 (where numbers compare exactly)", "str": "a string",
          "float": "a finite number (integers within +-2**53)", "bool": "true or false",
          "list[str]": "a list of strings (without the control character U+001F)",
          "list[int]": "a list of integers within +-2**53"}


def _refusal(doc_id: str, name: str, ftype: str, value: Any) -> InputError:
    shown = json.dumps(value, ensure_ascii=False)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return InputError(f"document {doc_id!r}: metadata field {name!r} is declared {ftype!r} in [metadata] fields, so "
                      f"it holds {_KINDS[ftype]} or null, not {shown}; fix the value, or leave the field undeclared")


def column_values(fields: dict[str, str], ids: Sequence[str], metadatas: Sequence[dict]) -> dict[str, list]:
    """Every typed column of these rows (in their order), checked first: a value of another type is refused."""
    out: dict[str, list] = {}
    for name, ftype in fields.items():
        values, nulls = [], []
        for doc_id, meta in zip(ids, metadatas):
            raw = lookup(meta, name)
            if raw is _MISSING or raw is None:
                values.append(None)
                nulls.append(raw is None)
                continue
            stored = _stored(ftype, raw)
            if stored is _MISSING:
                raise _refusal(doc_id, name, ftype, raw)
            values.append(stored)
            nulls.append(False)
        out[value_column(name)], out[null_column(name)] = values, nulls
    return out


def check_documents(fields: dict[str, str], docs: Sequence) -> None:
    """Refuse a batch of `Document`s whose declared fields hold values of another type, before any embedding."""
    if fields:
        column_values(fields, [d.id for d in docs], [d.metadata for d in docs])


def arrow_table(fields: dict[str, str], vids: Iterable[int], columns: dict[str, list]):
    """The rows of the `fields` table, as Arrow (vid, then the columns of `column_values`)."""
    import pyarrow as pa

    kinds = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    data = {"vid": pa.array(list(vids), pa.int64())}
    for name, ftype in fields.items():
        data[value_column(name)] = pa.array(columns[value_column(name)], kinds.get(ftype, pa.string()))
        data[null_column(name)] = pa.array(columns[null_column(name)], pa.bool_())
    return pa.table(data)


def table_sql(fields: dict[str, str], source: str) -> list[str]:
    """The statements that make the `fields` table from the registered Arrow view `source`, with its indexes."""
    cols = ", ".join(f"{c}::{t} AS {c}" for name, ftype in fields.items()
                     for c, t in ((value_column(name), FIELD_TYPES[ftype]), (null_column(name), "BOOLEAN")))
    out = [f"CREATE TABLE {TABLE} AS SELECT vid::BIGINT AS vid{', ' + cols if cols else ''} FROM {source} ORDER BY vid"]
    out += [f"CREATE INDEX ix_{value_column(name)} ON {TABLE}({value_column(name)})"
            for name, ftype in fields.items() if ftype in INDEXED]
    return out


def insert_sql(fields: dict[str, str], source: str) -> str:
    cols = ", ".join(["vid"] + [c for name in fields for c in (value_column(name), null_column(name))])
    return f"INSERT INTO {TABLE} ({cols}) SELECT {cols} FROM {source}"


# ------------------------------------------------------------------------------------- typed predicates
# Each returns a SQL boolean that is never NULL over the typed columns of one declared field, exactly what the
# JSON path of `filters` gives for the same operator and value on rows that pass the checks above.

def _number_param(ftype: str, value: float | int) -> float | int:
    """An integer compares as BIGINT (exact, and an index can serve it); anything else as DOUBLE, as on the JSON path."""
    if ftype == "int" and isinstance(value, float) and value.is_integer() and abs(value) <= EXACT_INT:
        return int(value)
    return value if ftype == "int" and _exact_int(value) else float(value)


def _scalar_param(ftype: str, value: Any) -> Any:
    """The parameter an equality with `value` compares a scalar column to, or _MISSING when none can match."""
    if value is None:
        return _MISSING
    if ftype == "str":
        return value if isinstance(value, str) else _MISSING
    if ftype == "bool":
        return value if isinstance(value, bool) else _MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _MISSING
    return _number_param(ftype, value)


def _member_param(ftype: str, value: Any) -> Any:
    """The separated text a list column holds when the list holds `value` (the JSON path compares element texts:
    a string element matches a string, an int element the same int, never 1.0 or true), or _MISSING."""
    if ftype == "list[str]" and isinstance(value, str) and SEP not in value:
        return SEP + value + SEP
    if ftype == "list[int]" and _exact_int(value):
        return SEP + str(value) + SEP
    return _MISSING


def eq(name: str, ftype: str, values: Sequence[Any], params: list) -> str:
    """The field equals one of `values` (a list field: holds one of them; None: present and null)."""
    col, parts = value_column(name), []
    if any(v is None for v in values):
        parts.append(f"({null_column(name)} IS TRUE)")
    if ftype in LIST_TYPES:
        members = [m for m in (_member_param(ftype, v) for v in values) if m is not _MISSING]
        for m in dict.fromkeys(members):
            params.append(m)
            parts.append(f"({col} IS NOT NULL AND contains({col}, ?))")
    else:
        wanted = [p for p in (_scalar_param(ftype, v) for v in values) if p is not _MISSING]
        if ftype == "int" and any(isinstance(p, float) for p in wanted):
            wanted = [float(p) for p in wanted]  # one type in the IN list; the JSON path compares doubles too
        wanted = list(dict.fromkeys(wanted))
        if len(wanted) == 1:
            params.append(wanted[0])
            parts.append(f"({col} IS NOT NULL AND {col} = ?)")
        elif wanted:
            params.extend(wanted)
            parts.append(f"({col} IS NOT NULL AND {col} IN ({', '.join('?' * len(wanted))}))")
    if not parts:
        return "FALSE"
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def compare(name: str, ftype: str, sql_op: str, value: Any, params: list) -> str:
    """$gt/$gte/$lt/$lte: strings among str fields, numbers among number fields; nothing else matches."""
    col = value_column(name)
    if isinstance(value, str) and ftype == "str":
        params.append(value)
    elif not isinstance(value, str) and ftype in ("int", "float"):
        params.append(_number_param(ftype, value))
    else:
        return "FALSE"
    return f"({col} IS NOT NULL AND {col} {sql_op} ?)"


def exists(name: str) -> str:
    return f"({value_column(name)} IS NOT NULL OR {null_column(name)} IS TRUE)"


def contains_member(name: str, ftype: str, value: Any, params: list) -> str:
    """$contains: a list field holds the value; a scalar field never does."""
    return eq(name, ftype, [value], params) if ftype in LIST_TYPES else "FALSE"


def text(name: str, ftype: str, value: str, params: list) -> str:
    """$text: a substring of a str field."""
    if ftype != "str":
        return "FALSE"
    params.append(value)
    return f"({value_column(name)} IS NOT NULL AND contains({value_column(name)}, ?))"
