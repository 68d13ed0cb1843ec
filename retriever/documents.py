"""The `Document` record, its validation, file loaders (JSONL, CSV, Parquet) and long-text chunking."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .errors import InputError

MAX_ID_LENGTH = 512
CHUNK_SEPARATOR = "#chunk-"


def document_id(row_id: str, metadata: dict[str, Any]) -> str:
    """The user's document id of a stored row: a chunk (``"{parent}#chunk-{i}"``) belongs to its parent."""
    return metadata.get("parent_id", row_id) if CHUNK_SEPARATOR in row_id else row_id


@dataclass(frozen=True)
class Document:
    """One record to index. `id` is the user's unique string id; `metadata` must be JSON-serializable."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _json_problem(value: Any, path: str) -> str | None:
    """Why `value` is not plain JSON (None when it is)."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r}, which JSON cannot hold"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has a non-string key {key!r}"
            problem = _json_problem(item, f"{path}.{key}")
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__name__}, which is not JSON (use str, int, float, bool, None, list or dict)"


def validate_documents(documents: Iterable[Document]) -> list[Document]:
    """Check every record before anything is embedded or written. Raises InputError naming the record."""
    if isinstance(documents, (Document, str, bytes)) or not isinstance(documents, Iterable):
        raise InputError("documents must be a list of Document records, e.g. [Document(id='a', text='...')]")
    docs = list(documents)
    seen: dict[str, int] = {}
    for i, doc in enumerate(docs):
        where = f"documents[{i}]"
        if not isinstance(doc, Document):
            raise InputError(f"{where} is a {type(doc).__name__}; expected Document(id=..., text=..., metadata=...)")
        if not isinstance(doc.id, str):
            raise InputError(f"{where}.id = {doc.id!r} is a {type(doc.id).__name__}; ids must be strings (use str(...))")
        if not doc.id.strip():
            raise InputError(f"{where}.id is empty; every document needs a non-empty string id")
        if len(doc.id) > MAX_ID_LENGTH:
            raise InputError(f"{where}.id is {len(doc.id)} characters; the limit is {MAX_ID_LENGTH}")
        if CHUNK_SEPARATOR in doc.id:
            raise InputError(f"{where}.id = {doc.id!r} contains {CHUNK_SEPARATOR!r}, which is reserved for chunk ids")
        if doc.id in seen:
            raise InputError(
                f"{where}.id = {doc.id!r} repeats documents[{seen[doc.id]}].id; ids must be unique within a batch "
                "(merge or drop the duplicate)"
            )
        seen[doc.id] = i
        if not isinstance(doc.text, str):
            raise InputError(f"{where} (id {doc.id!r}): text is a {type(doc.text).__name__}; it must be a string")
        if not doc.text.strip():
            raise InputError(f"{where} (id {doc.id!r}): text is empty; there is nothing to embed")
        if not isinstance(doc.metadata, dict):
            raise InputError(f"{where} (id {doc.id!r}): metadata must be a dict, got {type(doc.metadata).__name__}")
        problem = _json_problem(doc.metadata, "metadata")
        if problem:
            raise InputError(f"{where} (id {doc.id!r}): {problem}")
    return docs


# ----------------------------------------------------------------------------------------------- loading

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL, CSV or Parquet file as dicts (CSV and Parquet are read through DuckDB)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file {path} does not exist; pass a .jsonl, .csv or .parquet file")
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"data file {path}: unknown extension {path.suffix!r}; supported: {', '.join(sorted(_FORMATS))}")
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as f:
            return parse_jsonl(f, path)
    import duckdb

    reader = "read_csv_auto" if fmt == "csv" else "read_parquet"
    try:
        con = duckdb.connect()
        rel = con.execute(f"SELECT * FROM {reader}(?)", [str(path)])
        columns = [d[0] for d in rel.description]
        return [dict(zip(columns, row)) for row in rel.fetchall()]
    except duckdb.Error as e:
        raise InputError(f"data file {path}: DuckDB cannot read it as {fmt} ({e}); check the file") from None


def parse_jsonl(lines: Iterable[str], source: str | Path) -> list[dict[str, Any]]:
    """The records of JSONL lines (blank lines skipped; lines numbered from 1 in errors)."""
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{source}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise InputError(f"{source}:{lineno}: a line must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def records_to_documents(
    rows: Sequence[dict[str, Any]],
    *,
    id_field: str = "id",
    text_field: str = "text",
    metadata_fields: Sequence[str] | None = None,
    prepend_fields: Sequence[str] = (),
    source: str = "data",
    dedupe: bool = False,
) -> list[Document]:
    """Map rows to Documents. Rows are numbered from 1 in errors. `dedupe` keeps the first row of a repeated id."""
    docs: list[Document] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, 1):
        for name in (id_field, text_field, *prepend_fields):
            if name not in row:
                raise InputError(
                    f"{source} row {n}: no field {name!r} (fields: {', '.join(map(str, row))}); "
                    "set [ingest] id_field / text_field / prepend_fields to the right names"
                )
        raw_id = row[id_field]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise InputError(f"{source} row {n}: {id_field} = {raw_id!r} is not a string or integer id")
        doc_id = str(raw_id)
        if dedupe and doc_id in seen:
            continue
        seen.add(doc_id)
        text = row[text_field]
        parts = [str(row[f]) for f in prepend_fields if row[f] not in (None, "")]
        if parts and isinstance(text, str):
            text = "\n\n".join([*parts, text])
        if metadata_fields is None:
            meta = {k: v for k, v in row.items() if k not in (id_field, text_field)}
        else:
            missing = [f for f in metadata_fields if f not in row]
            if missing:
                raise InputError(f"{source} row {n}: metadata field {missing[0]!r} is missing; fix [ingest] metadata_fields")
            meta = {k: row[k] for k in metadata_fields}
        meta = {k: _jsonable(v) for k, v in meta.items()}
        docs.append(Document(id=doc_id, text=text, metadata=meta))
    return docs


def _jsonable(value: Any) -> Any:
    """Convert values DuckDB hands back for CSV/Parquet (dates, decimals) to JSON scalars."""
    if value is None or isinstance(value, (str, bool, int, float, list, dict)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    try:
        return float(value)  # Decimal and numpy scalars
    except (TypeError, ValueError):
        return str(value)


# ---------------------------------------------------------------------------------------------- chunking

def chunk_documents(
    docs: Sequence[Document],
    count_and_offsets: Callable[[str], list[tuple[int, int]]],
    *,
    max_tokens: int,
    overlap: int,
) -> list[Document]:
    """Split texts longer than `max_tokens` into overlapping chunks on token boundaries.

    `count_and_offsets(text)` returns the character span of every token (no special tokens).
    A chunk's id is ``"{parent}#chunk-{i}"`` and its metadata carries ``parent_id``, ``chunk_index`` and
    ``chunk_count``; short documents pass through unchanged.
    """
    if overlap >= max_tokens:
        raise InputError(f"chunk overlap {overlap} must be smaller than max_tokens {max_tokens}")
    out: list[Document] = []
    step = max_tokens - overlap
    for doc in docs:
        spans = count_and_offsets(doc.text)
        if len(spans) <= max_tokens:
            out.append(doc)
            continue
        starts = list(range(0, len(spans) - overlap, step)) or [0]
        for i, s in enumerate(starts):
            e = min(s + max_tokens, len(spans))
            text = doc.text[spans[s][0]: spans[e - 1][1]]
            meta = {**doc.metadata, "parent_id": doc.id, "chunk_index": i, "chunk_count": len(starts)}
            out.append(Document(id=f"{doc.id}{CHUNK_SEPARATOR}{i}", text=text, metadata=meta))
    return out
