"""The bundled demo corpus: fitz-gov (the `fitz-gov` package on PyPI, MIT), read from the installed package.

`fitz_gov_subset(1000)` is the documented default corpus: documents are taken query by query (labeled
queries in sorted id order, all of a query's relevant documents or none), until the limit is reached, then
topped up with the remaining documents in file order. Queries whose relevant documents are all in the
subset are its labeled queries. The full corpus has 5,043 lines; 19 ids repeat and only the first is kept;
14 documents have neither title nor content and are skipped (5,010 documents remain).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from .documents import Document
from .errors import RetrieverError
from .evaluation.queries import LabeledQuery


def fitz_gov_dir() -> Path:
    spec = importlib.util.find_spec("fitz_gov")
    if spec is None or not spec.submodule_search_locations:
        raise RetrieverError("the demo corpus needs the fitz-gov package: pip install --no-deps fitz-gov==4.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def fitz_gov_documents() -> list[Document]:
    """All fitz-gov documents (first occurrence of a repeated id), title prepended to the content."""
    docs: dict[str, Document] = {}
    with open(fitz_gov_dir() / "corpus" / "documents.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if row["id"] in docs:
                continue
            text = f"{row['title']}\n\n{row['content']}" if row.get("title") else row["content"]
            if not text.strip():
                continue
            meta = {"title": row.get("title", ""), "domain": row.get("domain", ""), "tags": row.get("tags", [])}
            docs[row["id"]] = Document(id=row["id"], text=text, metadata=meta)
    return list(docs.values())


def fitz_gov_queries() -> list[LabeledQuery]:
    """The labeled queries (those with at least one relevant document), sorted by id."""
    data = json.loads((fitz_gov_dir() / "queries" / "query_mappings.json").read_text(encoding="utf-8"))
    out = []
    for category, items in data["mappings"].items():
        for qid, item in items.items():
            if item.get("relevant_docs"):
                out.append(LabeledQuery(qid, item["query"], dict.fromkeys(item["relevant_docs"], 1.0), category))
    return sorted(out, key=lambda q: q.id)


def fitz_gov_subset(n_docs: int = 1000) -> tuple[list[Document], list[LabeledQuery]]:
    """A deterministic subset of `n_docs` documents and the labeled queries it fully covers."""
    docs = fitz_gov_documents()
    by_id = {d.id: d for d in docs}
    if n_docs >= len(docs):
        chosen = list(by_id)
    else:
        chosen_set: dict[str, None] = {}
        for q in fitz_gov_queries():
            rel = [r for r in q.relevant if r in by_id]
            if len(rel) != len(q.relevant):
                continue
            new = [r for r in rel if r not in chosen_set]
            if len(chosen_set) + len(new) <= n_docs:
                chosen_set.update(dict.fromkeys(new))
            if len(chosen_set) >= n_docs:
                break
        for d in docs:
            if len(chosen_set) >= n_docs:
                break
            chosen_set.setdefault(d.id, None)
        chosen = list(chosen_set)
    keep = set(chosen)
    queries = [q for q in fitz_gov_queries() if all(r in keep for r in q.relevant)]
    return [by_id[i] for i in chosen], queries
