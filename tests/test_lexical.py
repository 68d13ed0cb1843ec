"""The lexical arm (tantivy BM25) as a structure derived from DuckDB: built with the index, repaired on open when its
folder is missing, damaged or behind, checked by verify, rebuilt by rebuild, carried by fork and re-embed, and never
written by a reader. Real tantivy, a real DuckDB file, the real models. (SIGKILL during ingest and save:
tests/test_durability.py checks both arms.)"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from retriever import Document, Retriever, RetrieverConfig
from retriever.lexical import LexicalIndex

CONFIG = RetrieverConfig.from_dict({"rerank": {"enabled": False}})
DOCS = [Document(f"d{i}", f"Record {i}: the {w} turbine report mentions token{i} and the harbor.", {"n": i})
        for i, w in enumerate(["copper", "glacier", "falcon", "walnut", "orchid", "lantern", "meadow", "pylon"])]


def _lexical_ids(r, query, k=10):
    return [h.id for h in r.search(query, k=k, mode="lexical", rerank=False)]


@pytest.fixture
def index(tmp_path, model_cache):
    path = tmp_path / "index"
    with Retriever.create(path, CONFIG) as r:
        r.upsert(DOCS)
    return path


def _gen(path):
    return next(path.glob("gen-*"))


def test_created_index_has_a_saved_lexical_arm(index):
    m = json.loads((index / "manifest.json").read_text())
    assert m["lexical"]["chunks"] == len(DOCS) and m["lexical"]["seq"] == m["snapshot"]["seq"]
    assert m["lexical"]["analyzer"] == "en-v1" and m["lexical"]["library"].startswith("tantivy ")
    with Retriever.open(index, read_only=True) as r:
        assert r.stats()["lexical"]["recovered"] is None and not r.stats()["lexical"]["in_memory"]
        assert _lexical_ids(r, "token3") == ["d3"]
        assert _lexical_ids(r, "falcons")[0] == "d2"  # stemmed
        assert r.lexical_index.terms("The Falcons AND the turbines!") == ["falcon", "turbin"]


@pytest.mark.parametrize("how", ["missing", "garbage-meta", "truncated-segment"])
def test_a_missing_or_damaged_folder_is_rebuilt_from_duckdb(index, how):
    lex = _gen(index) / "lexical"
    if how == "missing":
        shutil.rmtree(lex)
    elif how == "garbage-meta":
        (lex / "meta.json").write_text("{not json")
    else:
        seg = max((f for f in lex.iterdir() if f.suffix == ".idx"), key=lambda f: f.stat().st_size)
        seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 3])
    with Retriever.open(index) as r:
        why = r.stats()["lexical"]["recovered"]
        if how != "truncated-segment":  # tantivy may open a truncated file lazily; verify then catches it
            assert why and "built the lexical arm from the 8 chunks in DuckDB" in why, why
        if why is None:
            assert not r.verify(check_model=False).ok
            r.rebuild()
        assert r.verify(check_model=False).ok
        assert _lexical_ids(r, "token5") == ["d5"]
    with Retriever.open(index) as r:  # the repair was saved
        assert r.stats()["lexical"]["recovered"] is None and r.verify(check_model=False).ok


def test_verify_names_a_lexical_arm_that_differs_and_rebuild_fixes_it(index):
    with Retriever.open(index) as r:
        vid = int(r.store.vids()[0])
        r.lexical_index.apply([], [], [vid])  # the arm loses a chunk DuckDB still holds
        rep = r.verify(check_model=False)
        assert not rep.ok and rep.checks["lexical_ids_match"] is False
        assert any("lexical" in p and "holds 7 chunks, DuckDB 8" in p and "retriever rebuild" in p
                   for p in rep.problems), rep.problems
        r.rebuild()
        rep = r.verify(check_model=False)
        assert rep.ok and rep.checks["lexical_chunks"] == 8


def test_writes_after_the_last_save_are_replayed_by_a_writer_and_rebuilt_in_memory_by_a_reader(index, model_cache):
    # a child process writes and dies (SIGKILL) before saving: the folder is ahead of the manifest's seq
    script = textwrap.dedent(f"""
        import os, signal
        from retriever import Document, Retriever
        r = Retriever.open({str(index)!r})
        r.upsert([Document("new", "A zeppelin crossed the harbor at dawn.")])
        r.delete(["d1"])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr
    with Retriever.open(index, read_only=True) as r:  # a reader never writes the shared folder
        lexical = r.stats()["lexical"]
        assert lexical["in_memory"] and "in memory" in lexical["recovered"]
        assert _lexical_ids(r, "zeppelin") == ["new"] and "d1" not in _lexical_ids(r, "glacier token1")
    with Retriever.open(index) as r:
        assert "replayed 1 additions and 1 deletions into the lexical arm" in r.stats()["lexical"]["recovered"]
        assert _lexical_ids(r, "zeppelin") == ["new"] and "d1" not in _lexical_ids(r, "glacier token1")
        assert r.verify(check_model=False).ok
    with Retriever.open(index, read_only=True) as r:  # saved on close: readers use the folder again
        assert r.stats()["lexical"]["recovered"] is None and _lexical_ids(r, "zeppelin") == ["new"]


def test_fork_for_readers_and_publish_carry_the_lexical_arm(index):
    reader = Retriever.open(index, read_only=True)
    try:
        with Retriever.open(index) as w:  # readers hold the generation: the writer works in a copy
            assert w.generation != reader.generation
            w.upsert([Document("late", "A quokka visited the lantern maker.")])
            assert _lexical_ids(w, "quokka") == ["late"]
            assert _lexical_ids(reader, "quokka") == []
            w.publish()
            w.upsert([Document("later", "An axolotl swam past the pylon.")])
            assert _lexical_ids(w, "axolotl") == ["later"] and w.verify(check_model=False).ok
    finally:
        reader.close()
    with Retriever.open(index, read_only=True) as r:
        assert _lexical_ids(r, "quokka") == ["late"] and _lexical_ids(r, "axolotl") == ["later"]
        assert r.stats()["lexical"]["recovered"] is None


def test_reembed_brings_a_fresh_lexical_arm(index):
    with Retriever.open(index) as r:
        r.reembed("builtin:all-MiniLM-L6-v2", backend="torch")
        assert _lexical_ids(r, "token4") == ["d4"] and r.verify(check_model=False).ok
        assert len(r.lexical_index) == 8


def test_lexical_index_search_filter_and_odd_queries(tmp_path):
    class Rows:  # the store's face the index is built from
        def iter_texts(self, batch=4096):
            yield [(v, f"r{v}", None, f"alpha beta {'gamma ' * (v % 3)} row{v}", {}) for v in range(1, 51)]

    lex = LexicalIndex.build(Rows(), tmp_path / "lex")
    assert len(lex) == 50
    scores, vids = lex.search("gamma", 100)
    assert len(vids) == len([v for v in range(1, 51) if v % 3]) and np.all(np.diff(scores) <= 1e-6)
    allowed = np.array([3, 4, 5, 6, 7], np.int64)
    _, vids = lex.search("alpha", 3, allowed)
    assert len(vids) == 3 and set(vids) <= set(allowed)
    _, vids = lex.search("alpha", 10, allowed)
    assert sorted(vids) == [3, 4, 5, 6, 7]
    assert len(lex.search("alpha", 10, np.zeros(0, np.int64))[1]) == 0
    # a filter changes which chunks come back, never their scores or order: narrow ones go through a term set
    # (scored 0), broad ones rank unfiltered and keep the allowed, deeper until n are kept
    all_scores, all_vids = lex.search("gamma row7 row33", 100)
    for allowed in (np.array([7, 8, 33]), np.arange(1, 40), np.arange(2, 51, 2), np.arange(1, 51)):
        for n in (1, 5, 20):
            scores, vids = lex.search("gamma row7 row33", n, allowed)
            keep = np.isin(all_vids, allowed)
            assert vids.tolist() == all_vids[keep][:n].tolist(), (len(allowed), n)
            assert np.allclose(scores, all_scores[keep][:n], atol=1e-6), (len(allowed), n)
    for odd in ('"unclosed', "title:alpha", "alpha AND OR NOT", "(((", "ünïcødé row7", "-alpha", "*", "a:b:c"):
        lex.search(odd, 5)  # never raises on user text
    assert lex.terms("the and of") == [] and len(lex.search("the and of", 5)[1]) == 0
    lex.apply([51], ["delta row51"], [1, 2])
    assert len(lex) == 49 and lex.search("delta", 5)[1].tolist() == [51]
    assert 1 not in lex.search("row1 alpha", 100)[1].tolist()
    lex.close()
