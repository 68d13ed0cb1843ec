"""Labeled query sets: JSONL (`{"id", "query", "relevant": [...] or {"doc": grade}}`), the BEIR layout
(`corpus.jsonl`, `queries.jsonl`, `qrels/test.tsv`) and the fitz-gov queries as a worked example of adapting
a third-party set. Errors name the file, the line and the rule."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError


@dataclass(frozen=True)
class LabeledQuery:
    id: str
    query: str
    relevant: dict[str, float]  # document id -> grade (> 0 is relevant; binary sets use 1)
    category: str = ""          # the set's own grouping, where it has one (fitz-gov: its six categories)


FITZ_GOV = "fitz-gov"


NAMED_SETS = (FITZ_GOV, "fitz-gov-reports", "python-docs")


def load_queries(source: str | Path) -> list[LabeledQuery]:
    """A JSONL file, a BEIR folder, or a set's name: ``fitz-gov`` (its 2,812 labeled queries), ``fitz-gov-reports``
    (the long-document set) or ``python-docs`` (`retriever.datasets.labeled_set`)."""
    if str(source) == FITZ_GOV:
        return fitz_gov_queries()
    if str(source) in NAMED_SETS:
        from ..datasets import labeled_set

        return labeled_set(str(source))[1]
    path = Path(source)
    if path.is_dir():
        return load_beir(path)
    if not path.is_file():
        raise InputError(f"queries {path} does not exist; pass a .jsonl file, a BEIR folder or one of "
                         f"{', '.join(repr(n) for n in NAMED_SETS)}")
    return load_jsonl(path)


def _grades(value: Any, where: str) -> dict[str, float]:
    if isinstance(value, list):
        if not all(isinstance(x, str) and x for x in value):
            raise InputError(f"{where}: \"relevant\" must list document ids as non-empty strings")
        grades = {x: 1.0 for x in value}
    elif isinstance(value, dict):
        grades = {}
        for doc, grade in value.items():
            if isinstance(grade, bool) or not isinstance(grade, (int, float)) or grade < 0:
                raise InputError(f"{where}: the grade of {doc!r} is {grade!r}; grades are numbers >= 0")
            grades[doc] = float(grade)
    else:
        raise InputError(f"{where}: \"relevant\" must be a list of ids or an object of id -> grade, "
                         f"got {type(value).__name__}")
    if not any(g > 0 for g in grades.values()):
        raise InputError(f"{where}: no relevant document (a grade > 0 is needed); drop the query or label it")
    return grades


def load_jsonl(path: Path) -> list[LabeledQuery]:
    out: list[LabeledQuery] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not valid JSON ({e.msg}); each line is one object "
                                 '{"id": ..., "query": ..., "relevant": [...]}') from None
            if not isinstance(row, dict):
                raise InputError(f"{where}: a line must be a JSON object, got {type(row).__name__}")
            for field in ("id", "query", "relevant"):
                if field not in row:
                    raise InputError(f"{where}: missing field \"{field}\"; each line needs id, query and relevant")
            qid, query = row["id"], row["query"]
            if not isinstance(qid, str) or not qid:
                raise InputError(f"{where}: \"id\" must be a non-empty string")
            if not isinstance(query, str) or not query.strip():
                raise InputError(f"{where}: \"query\" must be a non-empty string")
            if qid in seen:
                raise InputError(f"{where}: query id {qid!r} repeats line {seen[qid]}; ids must be unique")
            seen[qid] = lineno
            out.append(LabeledQuery(qid, query, _grades(row["relevant"], where)))
    if not out:
        raise InputError(f"{path}: no queries; the set must hold at least one labeled query")
    return out


def load_beir(root: Path) -> list[LabeledQuery]:
    queries_file, qrels_file = root / "queries.jsonl", root / "qrels" / "test.tsv"
    for f in (queries_file, qrels_file):
        if not f.is_file():
            raise InputError(f"{root}: BEIR layout needs {f.relative_to(root)} (and corpus.jsonl)")
    texts: dict[str, str] = {}
    with open(queries_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                texts[str(row["_id"])] = row["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{queries_file}:{lineno}: expected {{\"_id\": ..., \"text\": ...}} ({e})") from None
    qrels: dict[str, dict[str, float]] = {}
    with open(qrels_file, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or (lineno == 1 and row[0] == "query-id"):
                continue
            if len(row) != 3:
                raise InputError(f"{qrels_file}:{lineno}: expected 3 tab-separated columns query-id, corpus-id, score")
            try:
                score = float(row[2])
            except ValueError:
                raise InputError(f"{qrels_file}:{lineno}: score {row[2]!r} is not a number") from None
            if row[0] not in texts:
                raise InputError(f"{qrels_file}:{lineno}: query-id {row[0]!r} is not in queries.jsonl")
            qrels.setdefault(row[0], {})[row[1]] = score
    out = [LabeledQuery(qid, texts[qid], g) for qid, g in qrels.items() if any(v > 0 for v in g.values())]
    if not out:
        raise InputError(f"{qrels_file}: no query has a relevant document (score > 0)")
    return out


def fitz_gov_queries() -> list[LabeledQuery]:
    """fitz-gov's `query_mappings.json` adapted: every query with relevant docs, each relevant doc grade 1."""
    from ..datasets import fitz_gov_queries as labeled

    return labeled()
