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


# ------------------------------------------------------------------------------------------ more labeled sets
REPORT_SIZE = 30          # fitz-gov documents per report: about 3,000 words, 4,000 tokens
MIN_DOMAIN = 10           # domains with fewer documents are pooled into one "misc" domain
MAX_REPORTS_PER_QUERY = 2


def _evals_dir() -> Path:
    """`evals/` of a checkout (the labeled sets that are committed rather than derived)."""
    return Path(__file__).resolve().parent.parent / "evals"


def fitz_gov_reports() -> tuple[list[Document], list[LabeledQuery]]:
    """The long-document set: fitz-gov documents of one domain concatenated, in id order, into reports of
    REPORT_SIZE documents (each section headed by its title), judged at report level. A query's relevant reports
    are those holding its relevant documents; queries whose documents spread over more than
    MAX_REPORTS_PER_QUERY reports are left out. Deterministic, built from the installed package at load time."""
    docs = fitz_gov_documents()
    by_domain: dict[str, list[Document]] = {}
    for d in docs:
        by_domain.setdefault(d.metadata.get("domain") or "misc", []).append(d)
    for domain in [k for k, v in by_domain.items() if len(v) < MIN_DOMAIN]:
        by_domain.setdefault("misc", []).extend(by_domain.pop(domain))
    reports, report_of = [], {}
    for domain in sorted(by_domain):
        members = sorted(by_domain[domain], key=lambda d: d.id)
        groups = [members[i:i + REPORT_SIZE] for i in range(0, len(members), REPORT_SIZE)]
        if len(groups) > 1 and len(groups[-1]) < REPORT_SIZE // 3:  # no stub reports: the tail joins the last
            groups[-2].extend(groups.pop())
        for n, group in enumerate(groups, 1):
            rid = f"report-{domain}-{n:02d}"
            text = f"{domain.replace('_', ' ').title()} report {n}\n\n" + "\n\n".join(
                f"## {d.metadata.get('title') or d.id}\n\n{d.text}" for d in group)
            reports.append(Document(rid, text, {"domain": domain, "title": f"{domain} report {n}",
                                                "documents": [d.id for d in group]}))
            report_of.update({d.id: rid for d in group})
    queries = []
    for q in fitz_gov_queries():
        rel = {report_of[d] for d in q.relevant if d in report_of}
        if rel and len(rel) <= MAX_REPORTS_PER_QUERY and all(d in report_of for d in q.relevant):
            queries.append(LabeledQuery(q.id, q.query, dict.fromkeys(sorted(rel), 1.0), q.category))
    return reports, queries


def python_docs() -> tuple[list[Document], list[LabeledQuery]]:
    """Another domain: Python's own documentation (language reference sections and stdlib module summaries,
    `evals/python-docs/corpus.jsonl`) with 100 hand-written developer questions (`queries.jsonl`); how they
    were made: `evals/python-docs/README.md`."""
    from .evaluation.queries import load_jsonl

    folder = _evals_dir() / "python-docs"
    if not (folder / "corpus.jsonl").is_file():
        raise RetrieverError(f"{folder / 'corpus.jsonl'} is missing: the python-docs set lives in a checkout's evals/")
    docs = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append(Document(row["id"], f"{row['title']}\n\n{row['text']}", {"title": row["title"],
                                                                                  "kind": row["kind"]}))
    return docs, load_jsonl(folder / "queries.jsonl")


LABELED_SETS = ("fitz-gov", "fitz-gov-subset", "fitz-gov-reports", "python-docs")


def labeled_set(name: str) -> tuple[list[Document], list[LabeledQuery]]:
    """(documents, labeled queries) of a named set: fitz-gov (all 5,010 documents, 2,812 queries), fitz-gov-subset
    (the default corpus, `fitz_gov_subset(1000)`), fitz-gov-reports (long documents), python-docs (another domain)."""
    if name == "fitz-gov":
        return fitz_gov_documents(), fitz_gov_queries()
    if name == "fitz-gov-subset":
        return fitz_gov_subset(1000)
    if name == "fitz-gov-reports":
        return fitz_gov_reports()
    if name == "python-docs":
        return python_docs()
    raise RetrieverError(f"unknown labeled set {name!r}; the sets are {', '.join(LABELED_SETS)}")


def split_queries(queries: list[LabeledQuery], holdout: float = 0.3, seed: int = 0
                  ) -> tuple[list[LabeledQuery], list[LabeledQuery]]:
    """(tuning, held-out) by a stable hash of each query's id: the same query always lands on the same side, and
    defaults are chosen on the tuning side only."""
    import hashlib

    def held(q: LabeledQuery) -> bool:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{q.id}".encode()).digest()[:8], "big")
        return h / 2 ** 64 < holdout

    return [q for q in queries if not held(q)], [q for q in queries if held(q)]
