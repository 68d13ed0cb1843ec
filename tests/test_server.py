"""The HTTP service against a real `retriever serve` process on 127.0.0.1: real models, FAISS and DuckDB files.

Covers the routes, bad input (4xx naming the field and the rule), a bounded concurrent load with interleaved writes,
SIGKILL during a write batch, read-only servers beside a writer process with reload, auth, and an OpenAPI fuzz."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, copy_index
from retriever import Retriever, RetrieverConfig
from serverproc import Server, call

pytestmark = pytest.mark.real

RETRIEVER = [sys.executable, "-c", "import sys; from retriever.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, fitz1000_index):
    """A writing server over a copy of the default corpus (1,000 fitz-gov documents)."""
    path = copy_index(fitz1000_index, tmp_path_factory.mktemp("served") / "index")
    s = Server(path).start()
    yield s
    assert s.stop() == 0, s.output()[-3000:]


def _search(s: Server, query: str, **kw):
    status, body = s.call("POST", "/v1/search", {"query": query, **kw})
    assert status == 200, body
    return body


def _ids(body) -> list[str]:
    return [h["id"] for h in body["hits"]]


# ------------------------------------------------------------------------------------------------------ routes
def test_search_returns_hits_with_both_scores_and_stage_timings(served):
    body = _search(served, "How effective is the vaccine?", k=5)
    assert body["reranked"] is True and body["rerank_timed_out"] is False
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert set(hits[0]) == {"id", "text", "metadata", "rank", "score", "retrieval_score", "rerank_score",
                            "lexical_score", "passages", "found_by"}
    # documents mode: `score` fuses the cross-encoder's rank with the retrieval rank; both scores stay apart
    assert all(0 <= h["rerank_score"] <= 1 and -1 <= h["retrieval_score"] <= 1 for h in hits)
    assert body["mode"] == RetrieverConfig().retrieval.mode and body["result_kind"] == "documents" and body["notes"] == []
    assert all(h["passages"] and h["found_by"] for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all(body["timings_ms"][s] > 0 for s in ("embed", "search", "join", "rerank", "total"))

    plain = _search(served, "How effective is the vaccine?", k=5, rerank=False, mode="dense")
    assert plain["reranked"] is False and plain["timings_ms"]["rerank"] == 0 and plain["mode"] == "dense"
    assert all(h["rerank_score"] is None and h["score"] == h["retrieval_score"] for h in plain["hits"])
    assert [h["score"] for h in plain["hits"]] == sorted((h["score"] for h in plain["hits"]), reverse=True)
    # hybrid: `score` is the fused one; every hit keeps its cosine and says which arm found it
    fused = _search(served, "How effective is the vaccine?", k=5, rerank=False, mode="hybrid")
    assert fused["mode"] == "hybrid" and len(fused["hits"]) == 5
    assert all(h["rerank_score"] is None and -1 <= h["retrieval_score"] <= 1 for h in fused["hits"])
    assert all(set(h["found_by"]) <= {"dense", "lexical"} and h["found_by"] for h in fused["hits"])
    assert [h["score"] for h in fused["hits"]] == sorted((h["score"] for h in fused["hits"]), reverse=True)

    medicine = _search(served, "How effective is the vaccine?", k=10, rerank=False, filters={"domain": "medicine"})
    assert len(medicine["hits"]) == 10 and {h["metadata"]["domain"] for h in medicine["hits"]} == {"medicine"}

    queries = ["How effective is the vaccine?", "What is the price of the enterprise plan?", "Why did the server crash?"]
    status, batch = served.call("POST", "/v1/search/batch", {"queries": queries, "k": 3, "rerank": False})
    assert status == 200 and len(batch["results"]) == 3
    for q, res in zip(queries, batch["results"]):
        assert [h["id"] for h in res["hits"]] == _ids(_search(served, q, k=3, rerank=False))


def test_rerank_budget_falls_back_to_retrieval_order_and_says_so(served):
    plain = _search(served, "Why did the server crash?", k=5, rerank=False)
    late = _search(served, "Why did the server crash?", k=5, rerank_budget_ms=1)
    assert late["rerank_timed_out"] is True and late["reranked"] is False
    assert _ids(late) == _ids(plain) and all(h["rerank_score"] is None for h in late["hits"])
    assert late["timings_ms"]["rerank"] < 500  # the cross-encoder's measured cost says it cannot fit: not started
    metrics = served.call("GET", "/metrics")[1]
    assert _metric(metrics, "retriever_rerank_timeouts_total") >= 1


def test_documents_upsert_get_replace_delete(served):
    docs = [{"id": "http-a", "text": "Quokkas are small marsupials living on Rottnest Island.", "metadata": {"n": 1}},
            {"id": "http/b c", "text": "Axolotls regrow lost limbs.", "metadata": {"tags": ["x"]}}]
    status, body = served.call("PUT", "/v1/documents", {"documents": docs})
    assert status == 200 and body["upserted"]["added"] == 2, body
    assert served.call("GET", "/v1/documents/http-a")[1] == docs[0]
    assert served.call("GET", "/v1/documents/http/b%20c")[1] == docs[1]
    assert _ids(_search(served, "quokka marsupial island", k=3, rerank=False))[0] == "http-a"

    new = {"id": "http-a", "text": "Quokkas smile for photographs.", "metadata": {"n": 2}}
    status, body = served.call("PUT", "/v1/documents", {"documents": [new]})
    assert status == 200 and body["upserted"]["updated"] == 1
    assert served.call("GET", "/v1/documents/http-a")[1] == new

    status, body = served.call("DELETE", "/v1/documents", {"ids": ["http-a", "http/b c", "never-there"]})
    assert status == 200 and body["deleted"]["deleted"] == 2 and body["deleted"]["missing"] == ["never-there"]
    status, body = served.call("GET", "/v1/documents/http-a")
    assert status == 404 and body["error"]["fields"][0]["field"] == "path.id" and body["request_id"]
    assert "http-a" not in _ids(_search(served, "quokka marsupial island", k=10, rerank=False))


def test_health_stats_and_prometheus_metrics(served):
    assert served.call("GET", "/healthz") == (200, {"status": "ok"})
    status, ready = served.call("GET", "/readyz")
    assert status == 200 and ready["status"] == "ready"
    status, stats = served.call("GET", "/v1/stats")
    assert status == 200
    assert stats["documents"] >= 1000 and stats["index_kind"] == "flat" and stats["generation"] >= 1
    assert stats["embedding_model"] == "builtin:all-MiniLM-L6-v2"
    assert stats["rerank_model"] == "builtin:ms-marco-MiniLM-L-12-v2"
    assert stats["server"]["read_only"] is False and stats["server"]["workers"] >= 1
    _search(served, "What is the price of the enterprise plan?", k=3)
    text = served.call("GET", "/metrics")[1]
    assert _metric(text, 'retriever_http_requests_total{method="POST",route="/v1/search",status="200"}') >= 1
    assert _metric(text, 'retriever_http_request_duration_seconds_count{method="POST",route="/v1/search"}') >= 1
    for stage in ("embed", "search", "join", "rerank", "queue"):
        assert _metric(text, f'retriever_search_stage_seconds_count{{stage="{stage}"}}') >= 1
    assert "retriever_filter_starvation_total" in text and "retriever_rerank_timeouts_total" in text


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and "{" not in name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# --------------------------------------------------------------------------------------------------- bad input
BAD = [
    ("POST", "/v1/search", {"query": ""}, "query"),
    ("POST", "/v1/search", {"query": "   "}, "query"),
    ("POST", "/v1/search", {"query": 5}, "query"),
    ("POST", "/v1/search", {"k": 3}, "query"),
    ("POST", "/v1/search", {"query": "x", "k": 0}, "k"),
    ("POST", "/v1/search", {"query": "x", "k": 1001}, "k"),
    ("POST", "/v1/search", {"query": "x", "k": "5"}, "k"),
    ("POST", "/v1/search", {"query": "x", "k": 2.5}, "k"),
    ("POST", "/v1/search", {"query": "x", "rerank": "yes"}, "rerank"),
    ("POST", "/v1/search", {"query": "x", "rerank_budget_ms": -1}, "rerank_budget_ms"),
    ("POST", "/v1/search", {"query": "x", "top_k": 3}, "top_k"),
    ("POST", "/v1/search", {"query": "x", "filters": {"domain": {"$regex": "med"}}}, "filters"),
    ("POST", "/v1/search", {"query": "x", "filters": {"$or": "domain"}}, "filters"),
    ("POST", "/v1/search", {"query": "x", "filters": ["domain"]}, "filters"),
    ("POST", "/v1/search/batch", {"queries": []}, "queries"),
    ("POST", "/v1/search/batch", {"queries": ["q"] * 65}, "queries"),
    ("POST", "/v1/search/batch", {"queries": ["q", " "]}, "queries.1"),
    ("PUT", "/v1/documents", {"documents": []}, "documents"),
    ("PUT", "/v1/documents", {"documents": [{"id": f"d{i}", "text": "t"} for i in range(1001)]}, "documents"),
    ("PUT", "/v1/documents", {"documents": [{"id": "d1"}]}, "documents.0.text"),
    ("PUT", "/v1/documents", {"documents": [{"id": "d1", "text": "t", "metadata": [1]}]}, "documents.0.metadata"),
    ("PUT", "/v1/documents", {"documents": [{"id": "d1", "text": "t"}, {"id": "d1", "text": "u"}]}, "documents"),
    ("PUT", "/v1/documents", {"docs": [{"id": "d1", "text": "t"}]}, "documents"),
    ("DELETE", "/v1/documents", {"ids": "d1"}, "ids"),
    ("DELETE", "/v1/documents", {"ids": [""]}, "ids.0"),
]


@pytest.mark.parametrize("method,path,body,field", BAD, ids=[f"{m} {p} {f}" for m, p, _, f in BAD])
def test_bad_input_gets_4xx_naming_the_field_and_rule(served, method, path, body, field):
    before = served.call("GET", "/v1/stats")[1]["documents"]
    status, err = served.call(method, path, body)
    assert 400 <= status < 500, err
    fields = err["error"]["fields"]
    assert fields and fields[0]["field"] == field and fields[0]["rule"], err
    assert err["error"]["message"] and err["request_id"]
    assert served.call("GET", "/v1/stats")[1]["documents"] == before  # nothing half-written


def test_malformed_oversize_and_unknown_requests_are_4xx_json(served):
    status, err = served.call("POST", "/v1/search", raw=b'{"query": ')
    assert status == 422 and err["error"]["type"] == "invalid_request"
    status, err = served.call("POST", "/v1/search", raw=b'{"query": "x"}', headers={"Content-Type": "text/plain"})
    assert status == 422 and err["error"]["fields"][0]["field"] == "header.content-type"
    big = {"documents": [{"id": "big", "text": "x" * (9 * 1024 * 1024)}]}
    status, err = served.call("PUT", "/v1/documents", big)
    assert status == 413 and "max_body_bytes" in err["error"]["message"]
    assert served.call("GET", "/v1/documents/big")[0] == 404
    status, err = served.call("GET", "/v1/nowhere")
    assert status == 404 and "no route" in err["error"]["message"]
    status, err = served.call("POST", "/v1/admin/reload")
    assert status == 409 and err["error"]["type"] == "writer"


# ---------------------------------------------------------------------------------------------------- load
def test_concurrent_load_with_interleaved_writes(tmp_path, fitz1000_index):
    """8 clients (a fixed number of requests each) while one client upserts and deletes and another keeps replacing
    one document: no 5xx, every acknowledged write visible afterwards, no deleted id after its delete was
    acknowledged, and the replaced document is never missing."""
    s = Server(copy_index(fitz1000_index, tmp_path / "index")).start()
    errors: list = []
    searches: list = []      # (started, ids)
    deletes: dict = {}       # id -> time the delete was acknowledged
    upserted: dict = {}      # id -> text, acknowledged and not deleted
    flips: list = []

    def client(n: int):
        for i in range(20):
            t0 = time.monotonic()
            status, body = s.call("POST", "/v1/search", {"query": "zebra migration field notes", "k": 10,
                                                         "rerank": i % 10 == n % 10})
            if status != 200:
                errors.append((status, body))
            else:
                searches.append((t0, _ids(body)))

    def writer():
        previous: list[str] = []
        for b in range(15):
            batch = [{"id": f"load-{b}-{j}", "text": f"Zebra migration field notes, day {b}, herd {j}.",
                      "metadata": {"batch": b}} for j in range(3)]
            status, body = s.call("PUT", "/v1/documents", {"documents": batch})
            if status != 200:
                errors.append((status, body))
                continue
            upserted.update({d["id"]: d["text"] for d in batch})
            if b % 2 and previous:
                status, body = s.call("DELETE", "/v1/documents", {"ids": previous})
                if status != 200:
                    errors.append((status, body))
                else:
                    now = time.monotonic()
                    for i in previous:
                        deletes[i] = now
                        upserted.pop(i)
            previous = [d["id"] for d in batch]

    def flipper():
        for v in range(25):
            doc = {"id": "flip", "text": f"Zebra migration flip version {v}.", "metadata": {"group": "flip", "v": v}}
            status, body = s.call("PUT", "/v1/documents", {"documents": [doc]})
            if status != 200:
                errors.append((status, body))

    def flip_reader():
        for _ in range(40):
            status, body = s.call("POST", "/v1/search", {"query": "zebra flip", "k": 3, "rerank": False,
                                                         "filters": {"group": "flip"}})
            flips.append(len(body.get("hits", [])) if status == 200 else status)
            status, _ = s.call("GET", "/v1/documents/flip")
            flips.append(1 if status == 200 else status)

    s.call("PUT", "/v1/documents", {"documents": [{"id": "flip", "text": "Zebra flip.", "metadata": {"group": "flip"}}]})
    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    threads += [threading.Thread(target=f) for f in (writer, flipper, flip_reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    try:
        assert not errors, errors[:3]
        assert len(searches) == 160 and len(flips) == 80
        assert set(flips) == {1}, "the replaced document was missing (or doubled) for a reader"
        for started, ids in searches:
            stale = [i for i in ids if i in deletes and started > deletes[i]]
            assert not stale, f"search started after the delete of {stale} was acknowledged still returned it"
        assert any(i.startswith("load-") for _, ids in searches for i in ids)  # the writes were searchable
        for i, text in upserted.items():
            assert s.call("GET", f"/v1/documents/{i}")[1].get("text") == text
        for i in deletes:
            assert s.call("GET", f"/v1/documents/{i}")[0] == 404
        assert s.call("GET", "/v1/documents/flip")[1]["metadata"]["v"] == 24
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.output(), s.output()[-3000:]


# ------------------------------------------------------------------------------------------------------- crash
@pytest.mark.crash
def test_sigkill_during_a_write_batch_loses_no_acknowledged_write(tmp_path, fitz1000_index):
    path = copy_index(fitz1000_index, tmp_path / "index")
    s = Server(path).start()
    acked: list[list[dict]] = []
    sent: list[list[dict]] = []
    stop = threading.Event()

    def writer():
        b = 0
        while not stop.is_set():
            batch = [{"id": f"kill-{b}-{j}", "text": f"Write batch {b}, record {j}: sensors logged tide levels.",
                      "metadata": {"b": b}} for j in range(25)]
            sent.append(batch)
            try:
                status, _ = s.call("PUT", "/v1/documents", {"documents": batch}, timeout=60)
            except OSError:
                return  # the server died with this batch in flight
            if status == 200:
                acked.append(batch)
            b += 1

    t = threading.Thread(target=writer)
    t.start()
    while len(acked) < 4:
        time.sleep(0.02)
    time.sleep(0.1)  # the next batch is being embedded or committed
    s.kill()
    stop.set()
    t.join(60)
    assert len(acked) >= 4 and len(sent) > len(acked)

    s2 = Server(path).start()  # /readyz 200: the index replayed its changelog and verified
    try:
        for batch in acked:
            for d in batch:
                assert s2.call("GET", f"/v1/documents/{d['id']}")[1].get("text") == d["text"]
        for batch in sent[len(acked):]:  # the batch in flight: all of it or none of it
            present = sum(s2.call("GET", f"/v1/documents/{d['id']}")[0] == 200 for d in batch)
            assert present in (0, len(batch))
    finally:
        assert s2.stop() == 0


# ------------------------------------------------------------------------------------- readers and one writer
def test_read_only_servers_share_the_index_with_a_writer_and_reload(tmp_path, fitz1000_index):
    path = copy_index(fitz1000_index, tmp_path / "index")
    a = Server(path, "--read-only").start()
    b = Server(path, "--read-only").start()
    statuses: list[int] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            statuses.append(a.call("POST", "/v1/search", {"query": "quokka island", "k": 5, "rerank": False})[0])

    h = threading.Thread(target=hammer)
    h.start()
    try:
        new = tmp_path / "new.jsonl"
        new.write_text(json.dumps({"id": "ro-new", "text": "Quokkas live on Rottnest Island near Perth."}) + "\n")
        out = subprocess.run([*RETRIEVER, "ingest", str(new), "--index", str(path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr  # the writer copied the generation the readers hold
        assert a.call("GET", "/v1/documents/ro-new")[0] == 404  # still the old generation
        stats = a.call("GET", "/v1/stats")[1]
        assert stats["read_only"] is True and stats["reload_pending"] is True
        old_gen = stats["generation"]

        status, body = a.call("POST", "/v1/admin/reload")
        assert status == 200 and body["reloaded"] is True and body["generation"] > old_gen, body
        assert a.call("GET", "/v1/documents/ro-new")[0] == 200
        assert _ids(_search(a, "quokka Rottnest", k=3, rerank=False))[0] == "ro-new"
        assert a.call("POST", "/v1/admin/reload")[1]["reloaded"] is False

        b.signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while b.call("GET", "/v1/documents/ro-new")[0] != 200:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.2)

        out = subprocess.run([*RETRIEVER, "rebuild", str(path), "--kind", "hnsw"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        status, body = a.call("POST", "/v1/admin/reload")
        assert status == 200 and body["reloaded"] is True, body
        assert a.call("GET", "/v1/stats")[1]["index_kind"] == "hnsw"

        # a writing server beside them: its writes reach the readers when it publishes
        w = Server(path).start()
        try:
            doc = {"id": "ro-pub", "text": "Published while the readers kept serving."}
            assert w.call("PUT", "/v1/documents", {"documents": [doc]})[0] == 200
            status, body = w.call("POST", "/v1/admin/publish")
            assert status == 200 and body["writing"] > body["published"], body
            assert a.call("POST", "/v1/admin/reload")[1]["reloaded"] is True
            assert a.call("GET", "/v1/documents/ro-pub")[1]["text"] == doc["text"]
        finally:
            assert w.stop() == 0

        status, err = a.call("PUT", "/v1/documents", {"documents": [{"id": "x", "text": "y"}]})
        assert status == 409 and err["error"]["type"] == "read_only"
    finally:
        stop.set()
        h.join(60)
        assert a.stop() == 0 and b.stop() == 0
    assert statuses and set(statuses) == {200}, "a search failed while the generations changed"
    with Retriever.open(path) as r:  # everything acknowledged is in the final generation, and it verifies
        assert r.get("ro-new") and r.get("ro-pub") and r.verify().ok


# ------------------------------------------------------------------------------------------ auth, starvation
def test_bearer_token_guards_writes_and_admin_and_starvation_is_counted(tmp_path, fitz1000_index):
    path = copy_index(fitz1000_index, tmp_path / "index")
    with Retriever.open(path) as r:
        r.rebuild({"kind": "hnsw"})
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[index]\nexact_filter_threshold = 0\n")  # filtered searches go through HNSW
    s = Server(path, "--config", str(cfg), env={"RETRIEVER_API_TOKEN": "s3cret-token-for-tests"}).start()
    try:
        doc = {"documents": [{"id": "rare-1", "text": "Zebra stripes confuse biting flies.", "metadata": {"t": "rare"}},
                             {"id": "rare-2", "text": "Zebras sleep standing up.", "metadata": {"t": "rare"}}]}
        status, err = s.call("PUT", "/v1/documents", doc)
        assert status == 401 and err["error"]["fields"][0]["field"] == "header.authorization"
        assert s.call("PUT", "/v1/documents", doc, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert s.call("DELETE", "/v1/documents", {"ids": ["rare-1"]})[0] == 401
        assert s.call("POST", "/v1/admin/publish")[0] == 401
        auth = {"Authorization": "Bearer s3cret-token-for-tests"}
        assert s.call("PUT", "/v1/documents", doc, headers=auth)[0] == 200
        assert s.call("POST", "/v1/admin/publish", headers=auth)[0] == 200

        # reads stay open; a filter matching 2 of 1,111 vectors starves the HNSW search, which is completed exactly
        for q in ("quarterly revenue growth", "vaccine trial results", "kubernetes deployment"):
            assert {h["id"] for h in _search(s, q, k=10, rerank=False, filters={"t": "rare"})["hits"]} == \
                {"rare-1", "rare-2"}
        assert _metric(s.call("GET", "/metrics")[1], "retriever_filter_starvation_total") >= 1
    finally:
        assert s.stop() == 0


# ------------------------------------------------------------------------------------------------------- fuzz
def test_openapi_fuzz_finds_no_server_error(tmp_path, small_docs, model_cache):
    with Retriever.create(tmp_path / "index", RetrieverConfig()) as r:
        r.upsert(small_docs)
    cfg = tmp_path / "serve.toml"  # small limits keep the generated batches cheap to embed and rerank
    cfg.write_text("[server]\nmax_batch_documents = 16\nmax_batch_queries = 8\nmax_k = 50\n")
    s = Server(tmp_path / "index", "--config", str(cfg)).start()
    try:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run", f"http://127.0.0.1:{s.port}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "7", "--phases", "coverage,fuzzing",
             "--request-timeout", "120", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-6000:]
        tested = re.search(r"Tested: (\d+)", out.stdout)
        operations = sum(len(methods) for methods in s.call("GET", "/openapi.json")[1]["paths"].values())
        assert tested and int(tested.group(1)) == operations == 12, out.stdout  # every route was fuzzed
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.output(), s.output()[-3000:]


# ------------------------------------------------------------------------------------------------- example
def test_chatbot_backend_example_answers_from_the_service(served):
    example = [sys.executable, str(ROOT / "examples" / "chatbot_backend.py")]
    question = "What is the company's competitive advantage?"
    out = subprocess.run([*example, "--url", f"http://127.0.0.1:{served.port}", "--k", "3", "--once", question],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = _ids(_search(served, question, k=3))
    assert all(f"[{i}] {hit}" in out.stdout for i, hit in enumerate(expected, 1)), out.stdout  # cited in order
    out = subprocess.run([*example, "--url", f"http://127.0.0.1:{served.port}", "--once", "x", "--filter",
                          '{"domain": {"$regex": "x"}}'], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "$regex" in out.stdout + out.stderr
    out = subprocess.run([*example, "--url", "http://127.0.0.1:9", "--once", "x"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "retriever serve" in out.stdout + out.stderr


# ------------------------------------------------------------------------------------------ internal failure
def test_internal_failure_is_500_with_the_request_id_and_loses_nothing(small_index, monkeypatch):
    """A real uvicorn on 127.0.0.1 in this process, so a failure can be injected into the store."""
    import uvicorn

    from retriever.server import build_asgi
    from serverproc import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_asgi(small_index, background=False), host="127.0.0.1", port=port,
                                           log_level="critical"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        real_fetch = small_index.store.fetch

        def broken(vids):
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(small_index.store, "fetch", broken)
        status, err = call(port, "POST", "/v1/search", {"query": "capital of France", "rerank": False},
                           headers={"X-Request-ID": "req-42"})
        assert status == 500 and err["request_id"] == "req-42" and "req-42" in err["error"]["message"]
        assert "disk on fire" not in json.dumps(err)  # internals stay in the log
        monkeypatch.setattr(small_index.store, "fetch", real_fetch)
        doc = {"id": "after", "text": "Lisbon is the capital of Portugal.", "metadata": {}}
        assert call(port, "PUT", "/v1/documents", {"documents": [doc]})[0] == 200
        status, body = call(port, "POST", "/v1/search", {"query": "capital of Portugal", "k": 1, "rerank": False})
        assert status == 200 and body["hits"][0]["id"] == "after"
    finally:
        server.should_exit = True
        thread.join(60)
    path = small_index.path
    with Retriever.open(path, read_only=True) as r:  # the app closed (and saved) the index on shutdown
        assert len(r) == 6 and r.get("after").text == doc["text"] and r.get("paris")
