"""Distributed ingest on a real local Ray cluster (one per session, `ray_cluster`): real MiniLM on Ray Data actors,
real DuckDB and FAISS shards. The demo corpus into 4 shards gives the unsharded index's results; a SIGKILLed
embedding actor is restarted and the job loses and doubles nothing; a job killed outright resumes without
embedding its committed batches again. Plus the in-process engine without Ray, and bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retriever import InputError, Retriever, RetrieverConfig
from retriever.datasets import fitz_gov_subset
from retriever.ingest import PROGRESS, ingest
from retriever.sharding import shard_of

from conftest import write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def small_batches(n: int) -> RetrieverConfig:
    return RetrieverConfig().replace(ingest={"commit_every": n})


def assert_each_document_once(index: Path, docs, shards: int) -> None:
    with Retriever.open(index, read_only=True) as r:
        assert r.shard_count == shards
        per_shard = [s.store.document_ids() for s in r.shards]
        assert sum(len(ids) for ids in per_shard) == len(docs)  # no document twice, none lost
        assert set().union(*per_shard) == {d.id for d in docs}
        assert all(shard_of(d, shards) == i for i, ids in enumerate(per_shard) for d in ids)
        rep = r.verify()
        assert rep.ok, rep.problems


def assert_same_hits(a, b, query: str) -> None:
    """The same hits and scores (within 1e-5); documents with the same text tie, and tied hits may come in
    either order (a flat index breaks ties by insertion order, the shard merge by shard)."""
    assert len(a) == len(b), query
    for x, y in zip(a, b):
        assert abs(x.score - y.score) < 1e-5, (query, x.id, y.id)
        assert x.id == y.id or abs(x.score - y.score) < 1e-6, (query, x.id, y.id)
    last = a[-1].score if a else 0.0
    assert all(abs(h.score - last) < 1e-6 for h in a if h.id not in {y.id for y in b}), query


def test_ray_ingest_of_the_demo_corpus_into_4_shards_equals_the_unsharded_index(fitz1000_sharded, fitz1000_index):
    path, rep = fitz1000_sharded
    docs, queries = fitz_gov_subset(1000)
    assert (rep.documents, rep.added, rep.shards, rep.engine, rep.embedded_batches) == (1000, 1000, 4, "ray", 1)
    assert not (path / PROGRESS).exists()
    assert_each_document_once(path, docs, 4)
    with Retriever.open(path, read_only=True) as sharded, Retriever.open(fitz1000_index, read_only=True) as flat:
        # every labeled query, embedded once (the same vector for both), then 8 through the whole reranked pipeline
        vectors = flat.checked_embedder().encode_queries([q.query for q in queries])
        for q, v in zip(queries, vectors):
            assert_same_hits(flat.search_by_vector(v, k=10), sharded.search_by_vector(v, k=10), q.query)
        for q in queries[:8]:
            assert_same_hits(flat.search(q.query, k=10, mode="dense"), sharded.search(q.query, k=10, mode="dense"),
                             q.query)


def test_a_sigkilled_embedding_actor_is_restarted_and_no_document_is_lost_or_doubled(ray_cluster, fitz300, tmp_path):
    docs = fitz300[0][:96]
    data = write_jsonl(tmp_path / "d.jsonl", docs)
    seen: list[int] = []

    def kill_first(info):
        seen.append(info["pid"])
        if len(seen) == 1:
            os.kill(info["pid"], signal.SIGKILL)  # the actor that embedded batch 1, mid-job

    ivf = small_batches(12).replace(index={"kind": "ivf_flat", "nlist": 2})
    rep = ingest(data, tmp_path / "idx", shards=4, engine="ray", workers=1, config=ivf, on_batch=kill_first)
    assert (rep.documents, rep.batches, rep.embedded_batches) == (96, 8, 8)
    assert any(pid != seen[0] for pid in seen[1:]), f"no restarted actor embedded a batch: {seen}"
    assert_each_document_once(tmp_path / "idx", docs, 4)
    with Retriever.open(tmp_path / "idx", read_only=True) as r:  # IVF trained once, on a sample across the shards
        assert {s.vector_index.kind for s in r.shards} == {"ivf_flat"}
        assert len({s.vector_index.codebook_sha256() for s in r.shards}) == 1
        assert r.shards[0].manifest.index["trained"]["shared"]["samples"] == [len(s.vector_index) for s in r.shards]


def test_a_job_killed_midway_resumes_without_reembedding_committed_batches(ray_cluster, fitz300, tmp_path):
    docs = fitz300[0][:120]
    data = write_jsonl(tmp_path / "d.jsonl", docs)
    (tmp_path / "c.toml").write_text("[ingest]\ncommit_every = 12\n")
    index = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-m", "retriever.cli", "ingest", str(data), "--index", str(index),
                             "--shards", "4", "--engine", "ray", "--config", str(tmp_path / "c.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "RAY_ADDRESS": ray_cluster})
    deadline = time.monotonic() + 240
    committed: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            committed = json.loads((index / PROGRESS).read_text())["committed"]
        except (OSError, ValueError):
            pass
        if len(committed) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    committed = json.loads((index / PROGRESS).read_text())["committed"]
    assert 3 <= len(committed) < 10
    rep = ingest(data, index, engine="ray")  # the same job: [ingest] commit_every is the index's stored 12
    assert rep.resumed_batches == len(committed)
    assert rep.embedded_batches == 10 - len(committed)
    assert not (index / PROGRESS).exists()
    assert_each_document_once(index, docs, 4)


def test_the_local_engine_runs_without_ray_and_retriever_never_imports_it(tmp_path, small_docs, model_cache):
    data = write_jsonl(tmp_path / "d.jsonl", small_docs)
    code = (
        "import sys; sys.modules['ray'] = None\n"  # `import ray` now fails, as on a machine without Ray
        "import retriever, retriever.ingest, retriever.cli\n"
        "from retriever.ingest import ingest\n"
        f"rep = ingest({str(data)!r}, {str(tmp_path / 'idx')!r}, shards=2)\n"
        "print(rep.documents, rep.shards, rep.engine)\n"
        "try:\n"
        f"    ingest({str(data)!r}, {str(tmp_path / 'idx2')!r}, engine='ray')\n"
        "except retriever.InputError as e:\n"
        "    print('error:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "5 2 local"
    assert "rag-retriever[distributed]" in lines[1]
    out = subprocess.run([sys.executable, "-c", "import retriever, sys; print('ray' in sys.modules)"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "False"


def test_a_bad_record_fails_the_job_by_name_before_anything_is_written(tmp_path, small_docs, model_cache):
    data = write_jsonl(tmp_path / "d.jsonl", small_docs)
    with open(data, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "x", "text": "   "}) + "\n")
    with pytest.raises(InputError, match=r"x"):
        ingest(data, tmp_path / "idx", shards=4)
    assert not (tmp_path / "idx").exists()
    with pytest.raises(InputError, match="engine"):
        ingest(data, tmp_path / "idx", engine="spark")
    with pytest.raises(InputError, match="workers"):
        ingest(data, tmp_path / "idx", engine="ray", workers=0)
    with Retriever.create(tmp_path / "flat", RetrieverConfig()) as r:
        r.upsert(small_docs[:1])
    with pytest.raises(InputError, match="is not sharded"):
        ingest(write_jsonl(tmp_path / "ok.jsonl", small_docs), tmp_path / "flat", shards=4)
