"""`retriever serve DIR --engine ray` on the session's real local Ray cluster: a real `retriever serve` process
deploys the 4-shard demo corpus on Ray Serve (2 reader replicas and a writer per shard, a router), and answers
the HTTP tests of test_server.py through Serve's proxy on 127.0.0.1. Killing one reader replica of a shard under
load costs no request; killing every reader of a shard gives `"partial": true` naming it until Serve restarts
them, and never a 5xx."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from ray import serve

import test_server as http_tests
from conftest import copy_index
from serverproc import Server

APP = "retriever"


@pytest.fixture(scope="module")
def ray_served(fitz1000_sharded, tmp_path_factory):
    path = copy_index(fitz1000_sharded[0], tmp_path_factory.mktemp("ray-served") / "index")
    backups = tmp_path_factory.mktemp("ray-backups")
    cfg = backups.parent / "ray-serve.toml"
    cfg.write_text(f'[server]\nbackup_dir = "{backups}"\n')
    s = Server(path, "--engine", "ray", "--replicas", "2", "--config", str(cfg)).start(timeout=300)
    s.backup_dir = backups
    yield s
    assert s.stop(timeout=120) == 0, s.output()[-3000:]


def test_serve_on_ray_answers_the_http_tests(ray_served):
    http_tests.test_search_returns_hits_with_both_scores_and_stage_timings(ray_served)
    http_tests.test_rerank_budget_falls_back_to_retrieval_order_and_says_so(ray_served)
    http_tests.test_documents_upsert_get_replace_delete(ray_served)
    http_tests.test_health_stats_and_prometheus_metrics(ray_served)
    status, stats = ray_served.call("GET", "/v1/stats")
    assert stats["shards"] == 4 and len(stats["shard_stats"]) == 4
    status, body = ray_served.call("POST", "/v1/search", {"query": "How effective is the vaccine?", "k": 5})
    assert status == 200 and body["partial"] is False and body["missed_shards"] == []


def test_serve_on_ray_gives_the_same_4xx_errors(ray_served):
    for method, path, body, field in http_tests.BAD:
        http_tests.test_bad_input_gets_4xx_naming_the_field_and_rule(ray_served, method, path, body, field)
    http_tests.test_malformed_oversize_and_unknown_requests_are_4xx_json(ray_served)


def test_writes_go_to_the_owning_shard_and_are_read_back_at_once(ray_served, tmp_path):
    from retriever import Retriever
    from retriever.backup import restore_backup
    from retriever.sharding import shard_of

    docs = [{"id": f"ray-w{i}", "text": f"Okapis number {i} live in the Ituri rainforest.", "metadata": {"i": i}}
            for i in range(8)]
    status, body = ray_served.call("PUT", "/v1/documents", {"documents": docs})
    assert status == 200 and body["upserted"]["added"] == 8
    for d in docs:  # every replica answers with the write: readers catch up with the acknowledged generation
        assert ray_served.call("GET", f"/v1/documents/{d['id']}")[1] == d
    status, stats = ray_served.call("GET", "/v1/stats")
    counts = [s["documents"] for s in stats["shard_stats"]]
    # a backup through the router: each shard's writer copies its shard under its write lock
    status, body = ray_served.call("POST", "/v1/admin/backup", {"dest": str(ray_served.backup_dir / "b")})
    assert status == 200 and body["backup"]["documents"] == sum(counts), body
    restore_backup(ray_served.backup_dir / "b", tmp_path / "restored")
    with Retriever.open(tmp_path / "restored", read_only=True) as r:
        assert [len(s) for s in r.shards] == counts
        assert all(r.shards[shard_of(d["id"], 4)].get(d["id"]).text == d["text"] for d in docs)
    for _ in range(4):
        status, found = ray_served.call("POST", "/v1/search", {"query": "okapi Ituri rainforest", "k": 8,
                                                               "rerank": False})
        assert {h["id"] for h in found["hits"]} == {d["id"] for d in docs}
    status, body = ray_served.call("DELETE", "/v1/documents", {"ids": [d["id"] for d in docs]})
    assert status == 200 and body["deleted"]["deleted"] == 8
    status, after = ray_served.call("GET", "/v1/stats")
    routed = [0] * 4
    for d in docs:
        routed[shard_of(d["id"], 4)] += 1
    assert [a - b for a, b in zip(counts, [s["documents"] for s in after["shard_stats"]])] == routed


_calls = []


def _reader_pids(shard: int) -> set[int]:
    from retriever.ray_serve import ShardCalls

    if not _calls:  # one loop for the session: a handle binds to the loop it is first awaited in
        _calls.append(ShardCalls())  # awaited, as the router calls: Serve's default and throughput-optimized modes
    calls = _calls[0]
    handle = serve.get_deployment_handle(f"shard-{shard}-reader", app_name=APP)
    pids = set()
    for _ in range(40):  # requests spread over the replicas: ask until both have answered
        pids.add(calls(handle, "pid", timeout_s=30))
        if len(pids) == 2:
            break
    return pids


def _kill_readers_for(shard: int, seconds: float) -> set[int]:
    """SIGKILL every reader process of `shard`, and each one Serve starts again, for `seconds`, so the shard has
    no live reader for longer than [server] shard_timeout_ms (Serve restarts a replica in about a second here:
    one kill alone can be healed within the router's wait). Replica processes carry their deployment's name in
    their title."""
    from pathlib import Path

    killed: set[int] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in killed:
                continue
            try:
                title = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if f"shard-{shard}-reader".encode() in title and b"ServeReplica" in title:
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.add(int(proc.name))
                except ProcessLookupError:
                    pass
        time.sleep(0.05)
    return killed


class Load:
    """Searches in a loop on a thread, recording (status, partial, missed shards)."""

    def __init__(self, server: Server):
        self.server, self.results, self.stop = server, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        i = 0
        while not self.stop.is_set():
            status, body = self.server.call("POST", "/v1/search", {"query": f"vaccine safety question {i % 7}",
                                                                   "k": 10, "rerank": False}, timeout=60)
            self.results.append((status, body.get("partial") if isinstance(body, dict) else None,
                                 tuple(body.get("missed_shards", ())) if isinstance(body, dict) else ()))
            i += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


def test_killed_replicas_are_restarted_and_a_shard_with_none_is_reported_partial(ray_served, ray_cluster):
    with Load(ray_served) as load:
        time.sleep(1)
        one = sorted(_reader_pids(1))[0]
        os.kill(one, signal.SIGKILL)  # one of shard 1's two readers: the other answers
        time.sleep(3)
        answered = len(load.results)
        first = _reader_pids(2)
        killed = _kill_readers_for(2, seconds=6)  # every reader of shard 2, and their restarts, for 6 s (> 3 s)
        assert first <= killed, (first, killed)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(p for _, p, _ in load.results[answered:]):
            time.sleep(0.2)
        saw_partial = [m for _, p, m in load.results[answered:] if p]
        deadline = time.monotonic() + 180  # Serve restarts the replicas; answers become whole again
        while time.monotonic() < deadline:
            tail = load.results[-5:]
            if len(tail) == 5 and not any(p for _, p, _ in tail) and len(load.results) > answered + 10:
                break
            time.sleep(0.5)
        time.sleep(2)
    statuses = [s for s, _, _ in load.results]
    assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))  # never a 5xx, before, during, after
    assert saw_partial and all(m == (2,) for m in saw_partial), saw_partial
    assert not any(p for _, p, _ in load.results[-5:]), load.results[-10:]
    assert len(_reader_pids(2)) == 2  # both readers of shard 2 are back
