"""An index directory written before the restructure (by commit 7db1217, `tests/fixtures/make_legacy_index.py`)
opens with today's code, gives the hits that commit gave (in `results = "chunks"`, `mode = "dense"`: the pipeline
of that commit), takes writes, and is written back in the same format plus the lexical arm's record. Its lexical
arm is built on first open (in memory for a reader), and `info` says so."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from retriever import Document, Retriever

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "legacy-index.expected.json").read_text())


@pytest.fixture
def legacy(tmp_path, model_cache) -> Path:
    return Path(shutil.copytree(FIXTURES / "legacy-index", tmp_path / "legacy-index"))


def _searches():
    return [(key.split("|")[0], key.endswith("rerank=True"), want) for key, want in EXPECTED.items() if "|" in key]


@pytest.mark.real
@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "writer"])
def test_legacy_index_gives_the_same_hits(legacy, read_only):
    before = json.loads((legacy / "manifest.json").read_text())
    with Retriever.open(legacy, read_only=read_only,
                        overrides={"retrieval": {"results": "chunks", "mode": "dense"}}) as r:
        assert r.recovered is None and len(r) == EXPECTED["documents"] and r.verify().ok
        lexical = r.stats()["lexical"]
        assert "an index made before the lexical arm" in lexical["recovered"]
        assert lexical["chunks"] == r.stats()["vectors"] and lexical["in_memory"] is read_only
        for query, rerank, want in _searches():
            hits = r.search(query, k=4, rerank=rerank)
            assert [h.id for h in hits] == [w[0] for w in want], query
            for h, (_, score, retrieval) in zip(hits, want):
                # a reranked score comes from the int8 cross-encoder, whose onnxruntime kernels differ by CPU
                # (VNNI or not): up to 1e-3 between machines here; the order and the retrieval scores are exact
                assert h.score == pytest.approx(score, abs=2e-3 if rerank else 1e-4)
                assert h.retrieval_score == pytest.approx(retrieval, abs=1e-4)
        assert [h.id for h in r.search("capital city", k=10, filters={"lang": "en"}, rerank=False)] == EXPECTED["filtered"]
    if read_only:  # nothing was written
        assert json.loads((legacy / "manifest.json").read_text()) == before


@pytest.mark.real
def test_legacy_index_takes_writes_and_keeps_its_format(legacy):
    before = json.loads((legacy / "manifest.json").read_text())
    with Retriever.open(legacy) as r:
        r.upsert([Document("lisbon", "Lisbon is the capital of Portugal.", {"lang": "pt"})])
        r.delete(["banana"])
    after = json.loads((legacy / "manifest.json").read_text())
    assert set(after) == set(before) | {"lexical"}  # the same keys plus the lexical arm's, the same fields in each
    assert after["lexical"]["chunks"] == after["counts"]["vectors"] and after["lexical"]["seq"] == after["snapshot"]["seq"]
    for key in ("embedder", "index", "counts", "snapshot", "previous"):
        assert set(after[key]) == set(before[key]), key
    assert after["snapshot"]["seq"] > before["snapshot"]["seq"] and after["embedder"] == before["embedder"]
    assert sorted(p.name for p in legacy.iterdir()) == sorted([".lock", "gen-000001", "manifest.json"])
    with Retriever.open(legacy, read_only=True) as r:
        assert r.recovered is None and r.verify().ok and len(r) == EXPECTED["documents"]
        assert r.search("capital of Portugal", k=1, rerank=False)[0].id == "lisbon"
        assert r.get("banana") is None
        assert r.stats()["lexical"]["recovered"] is None  # saved by the writer: opened from disk as it is
        assert r.search("Portugal", k=1, mode="lexical", rerank=False)[0].id == "lisbon"
        assert "banana" not in [h.id for h in r.search("banana potassium", k=10, mode="lexical", rerank=False)]
