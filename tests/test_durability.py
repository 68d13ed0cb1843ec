"""Durability: real crashes (SIGKILL of real subprocesses), damaged or missing FAISS snapshots, model mismatches,
interrupted re-embeds, and the on-disk format (no pickle, only the documented files).

Everything here is real: the packaged MiniLM bi-encoder, FAISS, a DuckDB file on disk, `retriever` CLI processes
and POSIX signals. Kill timings are random but seeded; a few crash points inside `save()` are hit exactly by
making the child process SIGKILL itself at that point (the library code runs unmodified up to there).
"""
from __future__ import annotations

import ast
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from retriever import Document, IndexMismatchError, Retriever, RetrieverConfig
from retriever.datasets import fitz_gov_subset
from retriever.models import resolve_embedder

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "retriever"
CLI = Path(sys.executable).with_name("retriever")
BUILTIN = "builtin:all-MiniLM-L6-v2"
GEN1 = "gen-000001"
GEN2 = "gen-000002"

START_TIMEOUT = 240  # seconds to wait for a child's first line (model load on a busy 2-core machine)
LINE_TIMEOUT = 180   # seconds between two lines of a running child
EXIT_TIMEOUT = 300   # seconds for a child to finish a whole command

crash = pytest.mark.crash
real = pytest.mark.real

WORDS = ("river", "copper", "ledger", "orchid", "glacier", "tariff", "violin", "harbor", "lantern", "meadow",
         "quartz", "saddle", "turbine", "walnut", "canyon", "pepper", "beacon", "falcon", "marble", "thistle",
         "engine", "harvest", "island", "jacket", "kettle", "lagoon", "mortar", "nectar", "oyster", "pylon")


# ------------------------------------------------------------------------------------------------ helpers

def child_env(model_cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RETRIEVER_CACHE_DIR": str(model_cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    })
    return env


class Child:
    """A real subprocess whose stdout lines are collected by a thread (so reads can time out)."""

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path, name: str):
        self.stderr_path = workdir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, env=env, cwd=str(workdir))
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self._q.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._q.put(None)

    def stderr_tail(self, n: int = 3000) -> str:
        self._stderr.flush()
        return self.stderr_path.read_bytes().decode("utf-8", "replace")[-n:]

    def next_line(self, timeout: float) -> str:
        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output from the child within {timeout}s; stderr:\n{self.stderr_tail()}")
        if line is None:
            self._q.put(None)
            rc = self.proc.wait(timeout=30)
            pytest.fail(f"the child exited (rc {rc}) before it was killed; stderr:\n{self.stderr_tail()}")
        self.lines.append(line)
        return line

    def next_json(self, timeout: float = LINE_TIMEOUT) -> dict:
        while True:
            line = self.next_line(timeout)
            if line.startswith("{"):
                return json.loads(line)

    def sigkill(self) -> None:
        """SIGKILL this child (by its pid), reap it, and collect every line it wrote before dying."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(timeout=60)
        assert rc == -signal.SIGKILL, f"the child ended with rc {rc}, not by SIGKILL; stderr:\n{self.stderr_tail()}"
        self.drain()

    def drain(self) -> list[str]:
        self._pump.join(timeout=30)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return self.lines

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            self._stderr.close()


def run_cli(args: list[str], env: dict[str, str], timeout: float = EXIT_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))


def gen_dir(root: Path) -> Path:
    return root / f"gen-{manifest(root)['generation']:06d}"


TMP_FILE = re.compile(r"^\.(vectors\.faiss|manifest\.json)\.tmp-\d+$")


def layout_problems(root: Path, *, allow_tmp: bool = False) -> list[str]:
    """Entries of an index directory other than manifest.json, .lock and the current gen-*/ folder holding
    store.duckdb (+ DuckDB's .wal), vectors.faiss, vectors.faiss.prev and the lexical/ folder (tantivy's)."""
    problems = []
    current = gen_dir(root).name
    for p in sorted(root.iterdir()):
        if p.name in ("manifest.json", ".lock") and p.is_file():
            continue
        if p.name == current and p.is_dir():
            continue
        if allow_tmp and TMP_FILE.match(p.name):
            continue
        problems.append(str(p.relative_to(root)))
    gdir = root / current
    if not gdir.is_dir():
        return problems + [f"{current}/ is missing"]
    for name in ("store.duckdb", "vectors.faiss", "lexical/meta.json"):
        if not (gdir / name).is_file():
            problems.append(f"{current}/{name} is missing")
    for p in sorted(gdir.iterdir()):
        if p.is_file() and p.name in ("store.duckdb", "store.duckdb.wal", "vectors.faiss", "vectors.faiss.prev"):
            continue
        if p.is_dir() and p.name == "lexical":
            continue
        if allow_tmp and TMP_FILE.match(p.name):
            continue
        problems.append(str(p.relative_to(root)))
    return problems


def damage(path: Path, seed: int, n: int = 256) -> None:
    """Overwrite n bytes in the middle of a file with seeded noise, keeping its length."""
    data = bytearray(path.read_bytes())
    size = len(data)
    rng = np.random.default_rng(seed)
    start = size // 2 - n // 2
    noise = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    if noise == bytes(data[start:start + n]):  # pragma: no cover - astronomically unlikely
        noise = bytes(b ^ 0xFF for b in noise)
    data[start:start + n] = noise
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size


def signature(hits) -> list[tuple[str, float]]:
    return [(h.id, h.retrieval_score) for h in hits]


def assert_same_results(after: list, before: list, *, atol: float = 1e-6) -> None:
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert [i for i, _ in a] == [i for i, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=atol, rtol=0)


def doc_or_first_chunk(r: Retriever, doc_id: str) -> Document | None:
    return r.get(doc_id) or r.get(f"{doc_id}#chunk-0")


def synthetic_docs(n: int, seed: int, prefix: str = "syn") -> list[Document]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(6))
        docs.append(Document(f"{prefix}-{i:05d}", f"Record {i} of the {prefix} ledger: {words}, item {rng.randint(0, 99999)}.",
                             {"n": i, "group": i % 7}))
    return docs


# one torch thread: the suite shares 2 cores with model-loading subprocesses (and often other test runs)
# the torch (reference) embedding path: these tests compare results across re-embeds and replays exactly, and the
# onnx path batches documents, so a re-embed there moves vectors slightly with their batchmates
# The comparisons of results before and after damage and repair are of the dense arm (FAISS against DuckDB):
# tantivy's BM25 statistics count deleted chunks until it merges segments, so a rebuilt lexical arm can order ties
# and near-ties differently. The lexical arm's own durability (every acknowledged write found, no deleted one) is
# tested below by ids, in lexical mode.
TEST_CONFIG = RetrieverConfig.from_dict({"runtime": {"torch_threads": 1}, "embedding": {"backend": "torch"},
                                         "retrieval": {"mode": "dense"}})

QUERIES = ("copper river harbor", "a glacier near the meadow", "the falcon and the lantern", "walnut orchid tariff",
           "engine turbine pylon", "Record 17 of the syn ledger")


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def base_index(tmp_path_factory, model_cache):
    """A real index over 300 short synthetic documents with a snapshot, a previous snapshot and a changelog
    holding additions, replacements and deletions. Returns (path, docs by id, results before any damage)."""
    path = tmp_path_factory.mktemp("durability-base") / "index"
    docs = synthetic_docs(300, seed=1234)
    with Retriever.create(path, TEST_CONFIG) as r:
        r.upsert(docs[:150])
        r.save()
        r.upsert(docs[150:])
        r.save()
        gone = [d.id for d in docs[290:]]
        r.delete(gone)
        replaced = [Document(d.id, d.text + " Revised.", {**d.metadata, "rev": 1}) for d in docs[280:290]]
        r.upsert(replaced)
        r.save()
        current = {d.id: d for d in docs[:280] + replaced}
        before = [signature(r.search(q, k=10, rerank=False)) for q in QUERIES]
        assert r.verify().ok
        assert len(r) == 290
    m = manifest(path)
    assert m["snapshot"] and m["previous"], "the base index should have a snapshot and a previous snapshot"
    return path, current, before


# ----------------------------------------------------------------------------------- 1. killed mid-ingest

INGEST_SCRIPT = textwrap.dedent("""
    import json, sys
    from retriever import Retriever, RetrieverConfig
    from retriever.documents import load_records, records_to_documents

    index, data, config_file = sys.argv[1:4]
    config = RetrieverConfig.from_toml(config_file)
    ing = config.ingest
    docs = records_to_documents(load_records(data), id_field=ing.id_field, text_field=ing.text_field,
                                metadata_fields=ing.metadata_fields, prepend_fields=ing.prepend_fields)
    r = Retriever.create(index, config)
    print(json.dumps({"event": "created", "documents": len(docs)}), flush=True)
    step = ing.commit_every
    for i in range(0, len(docs), step):
        batch = docs[i:i + step]
        r.upsert(batch)  # returns once the batch is committed: acknowledged
        print(json.dumps({"event": "batch", "ids": [d.id for d in batch]}), flush=True)
    r.close()
    print(json.dumps({"event": "done"}), flush=True)
""")


@crash
@real
def test_sigkill_mid_ingest_keeps_every_acknowledged_batch(tmp_path, model_cache):
    docs, _ = fitz_gov_subset(400)
    data = tmp_path / "fitz.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "text": d.text, **d.metadata}, ensure_ascii=False) + "\n")
    config = tmp_path / "ingest.toml"
    config.write_text('[ingest]\ncommit_every = 10\nmetadata_fields = ["title", "domain"]\n'
                      '[rerank]\nenabled = false\n[runtime]\ntorch_threads = 1\n')
    script = tmp_path / "ingest_child.py"
    script.write_text(INGEST_SCRIPT)
    index = tmp_path / "index"
    by_id = {d.id: d for d in docs}
    order = [d.id for d in docs]

    rng = random.Random(20240601)
    child = Child([sys.executable, script, index, data, config], child_env(model_cache), tmp_path, "ingest")
    try:
        first = child.next_json(START_TIMEOUT)
        assert first == {"event": "created", "documents": 400}
        for _ in range(3):
            assert child.next_json()["event"] == "batch"
        time.sleep(rng.uniform(0.0, 0.8))  # somewhere inside a later batch (embedding or DuckDB commit)
        child.sigkill()
    finally:
        child.close()

    events = [json.loads(line) for line in child.lines if line.startswith("{")]
    acked = [i for e in events if e["event"] == "batch" for i in e["ids"]]
    assert not any(e["event"] == "done" for e in events), "the child finished before it was killed"
    assert len(acked) >= 30 and acked == order[:len(acked)]

    with Retriever.open(index) as r:
        # the only FAISS snapshot on disk is the empty one written by create(): DuckDB is ahead of it
        assert r.recovered is not None
        assert "replayed" in r.recovered or "rebuilt" in r.recovered, r.recovered
        present = [i for i in order if doc_or_first_chunk(r, i) is not None]
        # every acknowledged batch is there; the batch in flight landed whole or not at all (one transaction)
        assert present in (order[:len(acked)], order[:len(acked) + 10]), (len(acked), len(present))
        for doc_id in present:
            doc = r.get(doc_id)
            if doc is not None:
                assert doc.text == by_id[doc_id].text
                assert doc.metadata == {"title": by_id[doc_id].metadata["title"], "domain": by_id[doc_id].metadata["domain"]}
            else:  # a long document stored as chunks
                chunk = r.get(f"{doc_id}#chunk-0")
                assert chunk.metadata["parent_id"] == doc_id and chunk.metadata["chunk_count"] >= 2
                assert by_id[doc_id].text.startswith(chunk.text[:50])
        assert len(r) == len(present)

        rep = r.verify()
        assert rep.ok, rep.problems
        assert rep.checks["ids_match"] is True and rep.checks["lexical_ids_match"] is True
        assert rep.checks["faiss_ntotal"] == rep.checks["duckdb_rows"] == r.stats()["vectors"]
        assert rep.checks["lexical_chunks"] == rep.checks["duckdb_rows"]
        # the lexical arm (its tantivy writer lock died with the child) was replayed or rebuilt, and finds them
        assert r.stats()["lexical"]["recovered"] is not None
        for doc_id in present[::7]:
            hits = r.search(by_id[doc_id].text[:300], k=5, mode="lexical", rerank=False)
            assert doc_id in [h.id for h in hits], doc_id
        assert rep.checks["duckdb_rows"] >= len(present)
        if "replayed" in r.recovered:
            assert f"replayed {rep.checks['duckdb_rows']} additions and 0 deletions" in r.recovered

        whole = [i for i in acked if r.get(i) is not None]
        assert whole, "expected some unchunked fitz-gov documents among the acknowledged ones"
        for doc_id in (whole[0], whole[len(whole) // 2], whole[-1]):
            hits = r.search(by_id[doc_id].text, k=5, rerank=False)
            assert hits[0].id == doc_id and hits[0].rank == 1
            assert hits[0].retrieval_score > 0.99
            assert hits[0].rerank_score is None

    # the repair was saved: a second open needs no recovery and finds the same index
    with Retriever.open(index) as r:
        assert r.recovered is None
        assert r.verify(check_model=False).ok
        assert len(r) == len(present)
    assert layout_problems(index) == []


# ------------------------------------------------------------------------------------- 2. killed mid-save

SAVE_LOOP_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import retriever.generation as core   # saves the snapshot
    import retriever.manifest as manifest  # writes the manifest
    import retriever.persistence as persistence
    from retriever import Document, Retriever

    index, mode, crash_point, crash_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    state = {"armed": False}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class OsProxy:  # the real os module, with a hook on rename
        def __init__(self, hook):
            self._hook = hook
        def __getattr__(self, name):
            return getattr(os, name)
        def replace(self, src, dst):
            if state["armed"] and self._hook == ("before", Path(dst).name):
                die()
            os.replace(src, dst)
            if state["armed"] and self._hook == ("after", Path(dst).name):
                die()

    real_sha, real_write_json = core.file_sha256, manifest.write_json_atomic
    if crash_point == "after_tmp_snapshot_written":  # the temp FAISS file is complete and fsynced
        core.file_sha256 = lambda p: die() if state["armed"] else real_sha(p)
    elif crash_point == "between_snapshot_renames":  # vectors.faiss moved to .prev, the new one not in place
        core.os = OsProxy(("after", "vectors.faiss.prev"))
    elif crash_point == "after_snapshot_rename":     # new vectors.faiss in place, manifest still the old one
        core.os = OsProxy(("after", "vectors.faiss"))
    elif crash_point == "before_manifest_rename":    # temp manifest written and fsynced, not renamed
        persistence.os = OsProxy(("before", "manifest.json"))
    elif crash_point == "after_manifest_written":    # new manifest in place, changelog not pruned yet
        def write_then_die(path, data):
            real_write_json(path, data)
            if state["armed"]:
                die()
        manifest.write_json_atomic = write_then_die
    elif crash_point != "none":
        raise SystemExit(f"unknown crash point {crash_point}")

    def planned_op(mode, i):
        if mode == "delete":
            return ("del", f"syn-{i:05d}", None)
        return [("add", f"new-{i:05d}", f"A freshly written note, number {i}, about {i % 13} kettles and a lagoon."),
                ("upd", f"syn-{i:05d}", f"Rewritten record {i}: the {i % 11} quartz turbines were replaced."),
                ("del", f"syn-{i:05d}", None)][i % 3]

    r = Retriever.open(index)
    print(json.dumps({"event": "open"}), flush=True)
    for i in range(400):
        op = planned_op(mode, i)
        if op[0] == "del":
            r.delete([op[1]])
        else:
            r.upsert([Document(op[1], op[2], {"rev": i})])
        # committed to DuckDB: acknowledged
        print(json.dumps({"event": "written", "i": i, "op": op[0], "id": op[1], "text": op[2]}), flush=True)
        state["armed"] = i == crash_at
        r.save()
        print(json.dumps({"event": "saved", "i": i}), flush=True)
    print(json.dumps({"event": "done"}), flush=True)
""")


def planned_op(mode: str, i: int) -> tuple[str, str, str | None]:
    """What the save-loop child writes in iteration i (kept in step with SAVE_LOOP_SCRIPT; checked below)."""
    if mode == "delete":
        return ("del", f"syn-{i:05d}", None)
    return [("add", f"new-{i:05d}", f"A freshly written note, number {i}, about {i % 13} kettles and a lagoon."),
            ("upd", f"syn-{i:05d}", f"Rewritten record {i}: the {i % 11} quartz turbines were replaced."),
            ("del", f"syn-{i:05d}", None)][i % 3]


# how the first open after each exact crash point must describe its repair (None: nothing to repair)
EXPECTED_RECOVERY = {
    "after_tmp_snapshot_written": "replayed 0 additions and 1 deletions logged after the last save",
    "between_snapshot_renames": "vectors.faiss was not usable (vectors.faiss is missing); used vectors.faiss.prev",
    "after_snapshot_rename": "vectors.faiss was not usable (vectors.faiss does not match the manifest's checksum); "
                             "used vectors.faiss.prev",
    "before_manifest_rename": "vectors.faiss was not usable (vectors.faiss does not match the manifest's checksum); "
                              "used vectors.faiss.prev",
    "after_manifest_written": None,
}

SAVE_CRASHES = [
    # (mode, crash point, crash_at, seed): "none" = SIGKILL from the test at a seeded random moment
    ("delete", "none", -1, 11),
    ("delete", "none", -1, 12),
    ("delete", "none", -1, 13),
    ("mixed", "none", -1, 14),
    ("delete", "after_tmp_snapshot_written", 4, 15),
    ("delete", "between_snapshot_renames", 3, 16),
    ("delete", "after_snapshot_rename", 5, 17),
    ("delete", "before_manifest_rename", 2, 18),
    ("delete", "after_manifest_written", 6, 19),
]


@crash
@real
@pytest.mark.parametrize("mode,crash_point,crash_at,seed", SAVE_CRASHES,
                         ids=[f"{m}-{c}-{s}" for m, c, _, s in SAVE_CRASHES])
def test_sigkill_during_save_loses_no_acknowledged_write(tmp_path, base_index, model_cache, mode, crash_point,
                                                         crash_at, seed):
    base, current, _ = base_index
    index = copy_index(base, tmp_path / "index")
    script = tmp_path / "save_child.py"
    script.write_text(SAVE_LOOP_SCRIPT)
    rng = random.Random(seed)
    child = Child([sys.executable, script, index, mode, crash_point, crash_at], child_env(model_cache), tmp_path, "save")
    try:
        assert child.next_json(START_TIMEOUT)["event"] == "open"
        if crash_point == "none":
            n_saves = rng.randint(2, 8)
            while True:
                e = child.next_json()
                if e["event"] == "saved" and e["i"] + 1 >= n_saves:
                    break
            # the loop is almost all save(): a short random pause lands the kill inside one most of the time
            time.sleep(rng.uniform(0.0, 0.08))
            child.sigkill()
        else:
            rc = child.proc.wait(timeout=EXIT_TIMEOUT)
            assert rc == -signal.SIGKILL, f"the crash point was not reached (rc {rc}):\n{child.stderr_tail()}"
            child.drain()
    finally:
        child.close()

    events = [json.loads(line) for line in child.lines if line.startswith("{")]
    assert not any(e["event"] == "done" for e in events)
    written = [e for e in events if e["event"] == "written"]
    saved = [e["i"] for e in events if e["event"] == "saved"]
    assert [e["i"] for e in written] == list(range(len(written)))
    assert [(e["op"], e["id"], e["text"]) for e in written] == [planned_op(mode, e["i"]) for e in written]
    assert saved == list(range(len(saved))) and len(written) - len(saved) in (0, 1)
    if crash_point != "none":
        # killed inside save() number crash_at, after its write was committed and acknowledged
        assert len(saved) == crash_at and len(written) == crash_at + 1

    # every acknowledged write (committed, whether or not its save() completed) must be there
    expected = {i: d.text for i, d in current.items()}
    for e in written:
        if e["op"] == "del":
            expected.pop(e["id"], None)
        else:
            expected[e["id"]] = e["text"]
    # the write the kill may have interrupted: applied entirely or not at all
    in_flight = planned_op(mode, len(written)) if crash_point == "none" else None
    flight_id = in_flight[1] if in_flight else None

    with Retriever.open(index) as r:
        if crash_point != "none":
            assert r.recovered == EXPECTED_RECOVERY[crash_point]
        rep = r.verify(check_model=mode != "delete")
        assert rep.ok, (r.recovered, rep.problems)
        assert rep.checks["ids_match"] is True
        assert rep.checks["faiss_ntotal"] == rep.checks["duckdb_rows"]
        for doc_id, text in expected.items():
            if doc_id == flight_id:
                continue
            got = r.get(doc_id)
            assert got is not None, f"acknowledged document {doc_id} was lost (recovered: {r.recovered})"
            assert got.text == text, f"{doc_id} does not hold its last acknowledged text (recovered: {r.recovered})"
        for e in written:
            if e["op"] == "del":
                assert r.get(e["id"]) is None, f"the acknowledged delete of {e['id']} was undone"
        counts = {len(expected)}
        if in_flight:
            got = r.get(flight_id)
            old = expected.get(flight_id)
            if in_flight[0] == "add":
                assert got is None or got.text == in_flight[2]
                counts.add(len(expected) + 1)
            elif in_flight[0] == "upd":
                assert got is not None and got.text in (old, in_flight[2])
            else:
                assert got is None or got.text == old
                counts.add(len(expected) - 1)
        assert len(r) in counts, (len(r), counts)

        # what searches see agrees with DuckDB (FAISS replayed or rebuilt correctly)
        probe = [e for e in written if e["op"] == "add"][-1:] + [e for e in written if e["op"] == "upd"][-1:]
        for e in probe:
            hits = r.search(e["text"], k=3, rerank=False)
            assert hits[0].id == e["id"] and hits[0].retrieval_score > 0.99
            lexical = r.search(e["text"], k=3, mode="lexical", rerank=False)
            assert lexical[0].id == e["id"], (e, r.stats()["lexical"])
        gone = [e["id"] for e in written if e["op"] == "del"][-3:]
        for mode_ in ("dense", "lexical"):
            texts = [current[g].text for g in gone]
            for doc_id, hits in zip(gone, r.search_batch(texts, k=5, rerank=False, mode=mode_) if gone else []):
                assert doc_id not in [h.id for h in hits], mode_

    # whatever the crash left behind was repaired and saved: the next open is clean
    with Retriever.open(index) as r:
        assert r.recovered is None, r.recovered
        assert r.verify(check_model=False).ok
    assert layout_problems(index) == []


class LeftoverTempFiles(AssertionError):
    pass


@crash
def test_temp_files_of_a_crashed_save_are_removed_on_open(tmp_path, base_index, model_cache):
    base, _, _ = base_index
    env = child_env(model_cache)
    script = tmp_path / "save_child.py"
    script.write_text(SAVE_LOOP_SCRIPT)
    for point in ("after_tmp_snapshot_written", "before_manifest_rename"):
        index = copy_index(base, tmp_path / f"index-{point}")
        proc = subprocess.run([sys.executable, str(script), str(index), "delete", point, "1"], env=env,
                              capture_output=True, text=True, timeout=EXIT_TIMEOUT, stdin=subprocess.DEVNULL)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        leftovers = [p.name for p in index.rglob(".*.tmp-*")]
        assert leftovers, "the crash should have left a temp file behind"
        with Retriever.open(index) as r:
            assert r.verify(check_model=False).ok
        if layout_problems(index):
            raise LeftoverTempFiles(f"after a writable open and close: {layout_problems(index)}")


# ------------------------------------------------------------------------- 3. damaged FAISS snapshots

DAMAGES = ["flip_middle", "missing", "truncated", "both_damaged", "missing_and_prev_missing"]


@real
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_snapshot_is_detected_and_repaired_on_open(tmp_path, base_index, how):
    base, current, before = base_index
    index = copy_index(base, tmp_path / "index")
    gdir = gen_dir(index)
    snap, prev = gdir / "vectors.faiss", gdir / "vectors.faiss.prev"
    if how == "flip_middle":
        damage(snap, seed=1)
    elif how == "missing":
        snap.unlink()
    elif how == "truncated":
        size = snap.stat().st_size
        with open(snap, "r+b") as f:
            f.truncate(size * 2 // 3)
    elif how == "both_damaged":
        damage(snap, seed=2)
        damage(prev, seed=3)
    elif how == "missing_and_prev_missing":
        snap.unlink()
        prev.unlink()

    with Retriever.open(index) as r:
        why = r.recovered
        assert why is not None, "the damage went unnoticed"
        if how == "missing":
            assert "vectors.faiss is missing" in why and "used vectors.faiss.prev" in why, why
        elif how in ("flip_middle", "truncated"):
            assert "vectors.faiss does not match the manifest's checksum" in why, why
            assert "used vectors.faiss.prev" in why, why
        else:
            assert f"rebuilt the FAISS index from the {len(current)} vectors in DuckDB" in why, why
        assert r.stats()["recovered"] == why
        assert len(r) == len(current)
        rep = r.verify()
        assert rep.ok, rep.problems
        after = [signature(r.search(q, k=10, rerank=False)) for q in QUERIES]
        assert_same_results(after, before)
        for doc_id in ("syn-00000", "syn-00285", "syn-00299"):
            assert (r.get(doc_id).text if r.get(doc_id) else None) == (current[doc_id].text if doc_id in current else None)

    # the repaired snapshot was written back: the next open trusts it
    with Retriever.open(index) as r:
        assert r.recovered is None, r.recovered
        assert r.verify(check_model=False).ok
        assert_same_results([signature(r.search(q, k=10, rerank=False)) for q in QUERIES], before)
    assert layout_problems(index) == []


@crash
@real
def test_verify_cli_exit_codes_before_and_after_repair(tmp_path, base_index, model_cache, capsys):
    from retriever.cli import main as cli_main

    base, _, _ = base_index
    damaged = copy_index(base, tmp_path / "damaged")
    repaired = copy_index(base, tmp_path / "repaired")
    damage(gen_dir(damaged) / "vectors.faiss", seed=7)
    damage(gen_dir(repaired) / "vectors.faiss", seed=7)
    damage(gen_dir(repaired) / "vectors.faiss.prev", seed=8)

    # `retriever verify` opens read-only: it repairs in memory, but reports the damaged file on disk (exit 1)
    assert cli_main(["verify", str(damaged), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] is False and rep["checks"]["snapshot_checksum"] is False
    assert any("does not match the manifest's sha256" in p for p in rep["problems"]), rep["problems"]
    assert "vectors.faiss does not match the manifest's checksum" in rep["recovered_on_open"]
    assert rep["checks"]["ids_match"] is True  # searches are still served from a good index

    with Retriever.open(repaired) as r:  # a writable open repairs (rebuild from DuckDB) and saves
        assert "rebuilt" in r.recovered
    res = run_cli(["verify", repaired, "--json"], child_env(model_cache))  # a real `retriever` process
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads(res.stdout)
    assert rep["ok"] is True and rep["recovered_on_open"] is None
    assert rep["checks"]["ids_match"] is True and rep["checks"]["snapshot_checksum"] is True
    assert rep["checks"]["model_fingerprint"] is True


@real
def test_verify_reports_a_snapshot_damaged_while_open(tmp_path, base_index):
    base, current, before = base_index
    index = copy_index(base, tmp_path / "index")
    with Retriever.open(index) as r:
        assert r.recovered is None and r.verify(check_model=False).ok
        damage(gen_dir(index) / "vectors.faiss", seed=5)
        rep = r.verify(check_model=False)
        assert rep.ok is False
        assert rep.checks["snapshot_checksum"] is False
        assert any("does not match the manifest's sha256" in p and "retriever rebuild" in p for p in rep.problems)
        assert rep.checks["ids_match"] is True  # the in-memory index is still right
        (gen_dir(index) / "vectors.faiss").unlink()
        rep = r.verify(check_model=False)
        assert rep.ok is False and any("is missing" in p for p in rep.problems)
        r.rebuild()  # the documented fix
        rep = r.verify(check_model=False)
        assert rep.ok, rep.problems
        assert_same_results([signature(r.search(q, k=10, rerank=False)) for q in QUERIES], before)
    with Retriever.open(index) as r:
        assert r.verify(check_model=False).ok
        assert len(r) == len(current)


class SnapshotSeqWentBack(AssertionError):
    pass


@real
def test_rebuild_leaves_a_saved_index_and_the_snapshot_seq_never_goes_back(tmp_path, base_index):
    base, current, before = base_index
    index = copy_index(base, tmp_path / "index")
    seq_before = manifest(index)["snapshot"]["seq"]
    assert seq_before > 0
    with Retriever.open(index) as r:
        assert r.stats()["unsaved_changes"] is False
        assert r.rebuild() == len(current)
        assert r.verify(check_model=False).ok
        unsaved = r.stats()["unsaved_changes"]
    m = manifest(index)
    with Retriever.open(index) as r:
        assert r.verify(check_model=False).ok and len(r) == len(current)
        assert_same_results([signature(r.search(q, k=10, rerank=False)) for q in QUERIES], before)
    if unsaved or m["snapshot"]["seq"] < seq_before:
        raise SnapshotSeqWentBack(f"right after rebuild() saved: unsaved_changes={unsaved}; snapshot seq "
                                  f"{seq_before} -> {m['snapshot']['seq']} after close (previous seq "
                                  f"{m['previous']['seq']})")


# ------------------------------------------------------------------------------------- 4. model mismatch

@real
def test_other_model_name_is_refused_with_reembed_hint(tmp_path, base_index):
    base, current, _ = base_index
    index = copy_index(base, tmp_path / "index")
    other = RetrieverConfig.from_dict({"embedding": {"model": "/some/other/path"}})
    with pytest.raises(IndexMismatchError) as ei:
        Retriever.open(index, other)
    msg = str(ei.value)
    assert "retriever reembed" in msg and "/some/other/path" in msg and BUILTIN in msg
    with pytest.raises(IndexMismatchError):
        Retriever.open(index, other, read_only=True)
    # the refusal left nothing behind (no writer lock held, nothing changed)
    with Retriever.open(index) as r:
        assert r.recovered is None and len(r) == len(current)
        assert r.config.embedding.model == BUILTIN


def perturb_weights(model_dir: Path, seed: int, scale: float = 0.1) -> None:
    from safetensors.numpy import load_file, save_file

    f = model_dir / "model.safetensors"
    tensors = load_file(str(f))
    rng = np.random.default_rng(seed)
    changed = 0
    for name, t in tensors.items():
        if t.dtype.kind == "f" and t.size:
            tensors[name] = (t + rng.standard_normal(t.shape) * scale * float(t.std() or 1.0)).astype(t.dtype)
            changed += 1
    assert changed > 50
    save_file(tensors, str(f), metadata={"format": "pt"})


def set_pooling(model_dir: Path, modes: list[str]) -> None:
    pooling = model_dir / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    cfg.pop("word_embedding_dimension", None)
    cfg.update({"embedding_dimension": 384, "pooling_mode": modes})
    pooling.write_text(json.dumps(cfg))


def touch_top_level(model_dir: Path) -> None:
    """Rewrite modules.json unchanged (new mtime), so a model cache keyed on top-level files sees a change."""
    f = model_dir / "modules.json"
    data = f.read_bytes()
    time.sleep(0.01)
    f.write_bytes(data)


@real
def test_changed_weights_or_dimension_under_the_same_path_are_refused(tmp_path):
    model = tmp_path / "minilm-copy"
    shutil.copytree(resolve_embedder(BUILTIN), model)
    index = tmp_path / "index"
    docs = synthetic_docs(40, seed=99, prefix="fp")
    with Retriever.create(index, TEST_CONFIG.replace(embedding={"model": str(model)})) as r:
        r.upsert(docs)
        assert r.search(docs[3].text, k=1, rerank=False)[0].id == docs[3].id

    # same path, other weights
    perturb_weights(model, seed=4242)
    with Retriever.open(index) as r:
        assert r.recovered is None
        with pytest.raises(IndexMismatchError) as ei:
            r.search("copper river", rerank=False)
        assert "retriever reembed" in str(ei.value) and str(model) in str(ei.value)
        with pytest.raises(IndexMismatchError):  # nothing is written with the wrong model
            r.upsert([Document("intruder", "embedded with the wrong weights")])
        rep = r.verify()
        assert rep.ok is False and rep.checks["model_fingerprint"] is False
        assert any("retriever reembed" in p for p in rep.problems)
        assert r.get("intruder") is None and len(r) == len(docs)

    # same path, other dimension (mean + max pooling: 768-d)
    set_pooling(model, ["mean", "max"])
    touch_top_level(model)  # see test_model_changed_in_a_subfolder_is_not_served_from_the_cache
    with Retriever.open(index) as r:
        assert r.embedder.dim == 768, "precondition: the edited pooling should give 768-d embeddings"
        with pytest.raises(IndexMismatchError) as ei:
            r.search("copper river", rerank=False)
        assert "768" in str(ei.value) and "384" in str(ei.value) and "retriever reembed" in str(ei.value)

        # the remedy the message names: re-embed with the model as it is now
        out = r.reembed(str(model))
        assert out["generation"] == 2 and out["dim"] == 768 and out["vectors"] == len(docs)
        assert r.search(docs[7].text, k=1, rerank=False)[0].id == docs[7].id
    with Retriever.open(index) as r:
        assert r.recovered is None and r.verify().ok and len(r) == len(docs)
        assert manifest(index)["embedder"]["dim"] == 768
        assert r.search(docs[11].text, k=1, rerank=False)[0].id == docs[11].id
    assert layout_problems(index) == [] and gen_dir(index).name == GEN2


class StaleModelServed(AssertionError):
    pass


@real
def test_model_changed_in_a_subfolder_is_not_served_from_the_cache(tmp_path):
    model = tmp_path / "minilm-copy"
    shutil.copytree(resolve_embedder(BUILTIN), model)
    index = tmp_path / "index"
    docs = synthetic_docs(10, seed=5, prefix="sub")
    with Retriever.create(index, TEST_CONFIG.replace(embedding={"model": str(model)})) as r:
        r.upsert(docs)
    set_pooling(model, ["mean", "max"])  # now a 768-d model; only 1_Pooling/config.json changed
    with Retriever.open(index) as r:
        if r.embedder.dim != 768:
            raise StaleModelServed(f"the model at {model} is 768-d on disk, the cached one is {r.embedder.dim}-d")
        with pytest.raises(IndexMismatchError):
            r.search("copper river", rerank=False)


# ------------------------------------------------------------------------------------------- 5. reembed

REEMBED_SCRIPT = textwrap.dedent("""
    import logging, sys, time
    from retriever.cli import main

    class Progress(logging.Handler):  # prints each "reembed: done/total"; parks after the first batch
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith("reembed: "):
                print("LOG " + msg, flush=True)
                time.sleep(float(sys.argv[3]))

    log = logging.getLogger("retriever")
    log.setLevel(logging.INFO)
    log.addHandler(Progress())
    sys.exit(main(["reembed", sys.argv[1], "--model", sys.argv[2], "--batch-size", "8"]))
""")


@crash
@real
def test_reembed_killed_midway_keeps_the_old_generation_then_completes(tmp_path, base_index, model_cache, capsys):
    from retriever.cli import main as cli_main

    base, current, before = base_index
    index = copy_index(base, tmp_path / "index")
    old_manifest = manifest(index)
    assert old_manifest["generation"] == 1
    script = tmp_path / "reembed_child.py"
    script.write_text(REEMBED_SCRIPT)
    env = child_env(model_cache)
    # --batch-size 8: re-embedding goes in batches of 256 texts; the child pauses after the first batch is
    # committed to the new generation's DuckDB file, and is killed there
    child = Child([sys.executable, script, index, BUILTIN, "120"], env, tmp_path, "reembed")
    try:
        while True:
            line = child.next_line(START_TIMEOUT)
            if line.startswith("LOG reembed: "):
                break
        done, total = map(int, line.split(": ")[1].split("/"))
        assert done == 256 and total == len(current)
        child.sigkill()  # parked right after the first batch: a deterministic "midway"
    finally:
        child.close()
    assert (index / GEN2 / "store.duckdb").is_file(), "the kill should have left a partial new generation"
    assert manifest(index) == old_manifest

    with Retriever.open(index) as r:
        assert r.recovered is None
        assert not (index / GEN2).exists(), "the partial generation should be removed on open"
        assert r.stats()["generation"] == 1 and r.config.embedding.model == BUILTIN
        assert r.verify().ok and len(r) == len(current)
        assert_same_results([signature(r.search(q, k=10, rerank=False)) for q in QUERIES], before, atol=0)

    # the full re-embed through the same CLI code, in this process (the model is already loaded here)
    assert cli_main(["reembed", str(index), "--model", BUILTIN]) == 0
    out = capsys.readouterr().out
    assert f"re-embedded {len(current)} texts" in out and "generation 2" in out
    m = manifest(index)
    assert m["generation"] == 2 and m.get("reembedded_at")
    assert m["created_at"] == old_manifest["created_at"]
    assert not (index / GEN1).exists()
    assert layout_problems(index) == []
    with Retriever.open(index) as r:
        assert r.recovered is None and r.verify().ok and len(r) == len(current)
        assert_same_results([signature(r.search(q, k=10, rerank=False)) for q in QUERIES], before, atol=1e-4)
        for doc_id in ("syn-00042", "syn-00283"):
            assert r.get(doc_id).text == current[doc_id].text
            assert r.search(current[doc_id].text, k=1, rerank=False)[0].id == doc_id


# --------------------------------------------------------------------------------------- 6. on-disk format

PICKLE_NAMES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}


def test_package_source_never_uses_pickle():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10
    offenders = []
    for f in files:
        src = f.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(src, filename=str(f))):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            offenders += [f"{f.name}:{node.lineno} imports {n}" for n in names if n in PICKLE_NAMES]
        for m in re.finditer(r"allow_pickle\s*=\s*True|torch\.load\(|pickle\.loads?\(|__import__\(['\"]pickle", src):
            offenders.append(f"{f.name}: {m.group(0)}")
    assert offenders == []


@real
def test_index_directory_holds_only_the_documented_files(tmp_path, base_index):
    base, _, _ = base_index
    index = copy_index(base, tmp_path / "index")
    with Retriever.open(index) as r:
        r.delete(["syn-00001"])
    assert layout_problems(index) == []
    names = sorted(str(p.relative_to(index)) for p in index.rglob("*"))
    lexical = {n for n in names if n.startswith(f"{GEN1}/lexical/")}  # tantivy's own segment files
    assert set(names) - {f"{GEN1}/store.duckdb.wal"} - lexical == {
        ".lock", "manifest.json", GEN1, f"{GEN1}/store.duckdb", f"{GEN1}/vectors.faiss", f"{GEN1}/vectors.faiss.prev",
        f"{GEN1}/lexical"}
    assert f"{GEN1}/lexical/meta.json" in lexical and json.loads((index / GEN1 / "lexical" / "meta.json").read_text())
    m = manifest(index)  # plain JSON
    assert m["generation"] == 1 and set(m["snapshot"]) >= {"seq", "sha256", "ntotal"}
    for name in ("vectors.faiss", "vectors.faiss.prev"):  # FAISS's own format (IndexIDMap2), not a pickle
        head = (index / GEN1 / name).read_bytes()[:4]
        assert head == b"IxM2", head
    assert (index / GEN1 / "store.duckdb").read_bytes()[8:12] == b"DUCK"
