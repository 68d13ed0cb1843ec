"""Verified backups (issue 16, part 4): `retriever backup` taken from a real server while it is written, restored,
and every write acknowledged before the backup began is there; corrupted backups are caught with the file named;
restore never replaces what it should not."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from retriever import Document, Retriever, RetrieverConfig
from retriever.backup import BACKUP, INDEX, restore_backup, verify_backup
from retriever.errors import IndexCorruptError, InputError, WriterBusy
from serverproc import ROOT, Server

CLI = "import sys; from retriever.cli import main; sys.exit(main())"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _docs(n: int, prefix: str = "d") -> list[Document]:
    return [Document(f"{prefix}{i}", f"Stored document {i} about topic {i % 7} and its details.", {"i": i})
            for i in range(n)]


@pytest.fixture
def saved_index(tmp_path, model_cache) -> Path:
    path = tmp_path / "index"
    with Retriever.create(path, RetrieverConfig()) as r:
        r.upsert(_docs(30))
        r.delete(["d3"])
    return path


def test_backup_taken_from_a_server_under_write_load_holds_every_acknowledged_write(tmp_path, saved_index):
    backups = tmp_path / "backups"
    backups.mkdir()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'[server]\nbackup_dir = "{backups}"\n')
    server = Server(saved_index, "--config", str(cfg)).start()
    acked: list[tuple[int, float]] = []  # (write number, when its 200 came back)
    stop = threading.Event()
    errors: list[str] = []

    def write_load():
        i = 0
        while not stop.is_set():
            body = {"documents": [{"id": f"w{i}", "text": f"Write number {i}, version {i}.", "metadata": {"n": i}},
                                  {"id": "counter", "text": f"The counter stands at {i}.", "metadata": {"n": i}}]}
            status, out = server.call("PUT", "/v1/documents", body)
            if status != 200:
                errors.append(f"{status} {out}")
                return
            acked.append((i, time.monotonic()))
            i += 1

    writer = threading.Thread(target=write_load)
    try:
        writer.start()
        while len(acked) < 5:
            time.sleep(0.05)
        # without --url the CLI cannot take the writer's lock, and says how to go on
        busy = cli("backup", str(saved_index), str(tmp_path / "nope"))
        assert busy.returncode == 2 and "--url" in busy.stderr, busy.stderr
        assert not (tmp_path / "nope").exists()
        # bad destinations are refused by the route, naming the field
        status, out = server.call("POST", "/v1/admin/backup", {"dest": "relative/path"})
        assert status == 422 and out["error"]["fields"][0]["field"] == "dest" and "absolute" in out["error"]["message"], out
        status, out = server.call("POST", "/v1/admin/backup", {"dest": str(tmp_path / "elsewhere")})
        assert status == 422 and "backup_dir" in out["error"]["message"], out  # only inside [server] backup_dir
        assert not (tmp_path / "elsewhere").exists()
        (backups / "full").mkdir()
        (backups / "full" / "x").write_text("keep")
        status, out = server.call("POST", "/v1/admin/backup", {"dest": str(backups / "full")})
        assert status == 422 and "not empty" in out["error"]["message"], out
        assert (backups / "full" / "x").read_text() == "keep"

        began = time.monotonic()
        before = [i for i, t in acked if t < began]
        dest = backups / "b1"
        done = cli("backup", str(saved_index), str(dest), "--url", f"http://127.0.0.1:{server.port}", "--json")
        assert done.returncode == 0, done.stderr
        n_before = len(acked)
        time.sleep(0.5)  # writes go on after the backup
    finally:
        stop.set()
        writer.join(60)
        status, stats = server.call("GET", "/v1/stats")
        server.stop()
    assert not errors, errors
    assert len(acked) > n_before, "the write load stopped during the backup"
    report = json.loads(done.stdout)
    assert report["dest"] == str(dest)

    checked = cli("verify", str(dest))
    assert checked.returncode == 0 and "ok" in checked.stdout, checked.stdout + checked.stderr
    restored = tmp_path / "restored"
    back = cli("restore", str(dest), str(restored))
    assert back.returncode == 0, back.stderr

    with Retriever.open(restored, read_only=True) as r:
        assert r.verify(check_model=False).ok
        ids = r.store.document_ids()
        writes = sorted(int(x[1:]) for x in ids if x.startswith("w"))
        # every write acknowledged before the backup began is there, and the backup is a prefix of the writes
        # (one writer, in order): no hole, nothing from after it is half there
        assert set(before) <= set(writes)
        assert writes == list(range(len(writes)))
        counter = r.get("counter")
        assert counter.text == f"The counter stands at {writes[-1]}."
        assert {f"d{i}" for i in range(30) if i != 3} <= ids and "d3" not in ids
        assert len(r) == report["documents"] == 29 + len(writes) + 1


def test_backup_cli_without_a_writer_restore_and_its_refusals(tmp_path, saved_index):
    dest = tmp_path / "b"
    out = cli("backup", str(saved_index), str(dest))
    assert out.returncode == 0, out.stderr
    assert (dest / BACKUP).is_file() and not (dest / "manifest.json").exists()  # the copy is not opened in place
    again = cli("backup", str(saved_index), str(dest))
    assert again.returncode == 2 and "not empty" in again.stderr

    target = tmp_path / "occupied"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    refused = cli("restore", str(dest), str(target))
    assert refused.returncode == 2 and "--force" in refused.stderr, refused.stderr
    assert (target / "notes.txt").read_text() == "mine"

    with Retriever.open(saved_index) as writing:  # a process holds the writer lock of the target
        with pytest.raises(WriterBusy, match="stop it before restoring"):
            restore_backup(dest, saved_index, force=True)
        assert len(writing) == 29

    forced = cli("restore", str(dest), str(target), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["verify"]["ids_match"] is True
    assert not (target / "notes.txt").exists()
    with Retriever.open(saved_index, read_only=True) as a, Retriever.open(target, read_only=True) as b:
        q = "topic 4 details"
        assert [(h.id, round(h.score, 5)) for h in a.search(q, k=5, rerank=False)] == \
               [(h.id, round(h.score, 5)) for h in b.search(q, k=5, rerank=False)]
        assert b.store.document_ids() == a.store.document_ids()
    assert not list(tmp_path.glob(".*restore-*")) and not list(tmp_path.glob(".*tmp-*"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_a_corrupted_backup_is_detected_with_the_file_named(tmp_path, saved_index, damage):
    dest = tmp_path / "b"
    with Retriever.open(saved_index) as r:
        r.backup(dest)
    assert verify_backup(dest).ok
    victim = {"flip": dest / INDEX / "gen-000001" / "store.duckdb",
              "truncate": dest / INDEX / "gen-000001" / "vectors.faiss",
              "remove": dest / INDEX / "gen-000001" / "lexical" / "meta.json"}[damage]
    if damage == "flip":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-100])
    else:
        victim.unlink()

    report = verify_backup(dest)
    assert not report.ok and len(report.problems) == 1 and str(victim) in report.problems[0]
    out = cli("verify", str(dest))
    assert out.returncode == 1 and str(victim) in out.stdout
    target = tmp_path / "restored"
    with pytest.raises(IndexCorruptError, match="nothing was restored") as e:
        restore_backup(dest, target)
    assert str(victim) in str(e.value)
    assert not target.exists() and not list(tmp_path.glob(".*restore-*"))


def test_a_backup_manifest_naming_files_outside_it_is_refused(tmp_path, saved_index):
    dest = tmp_path / "b"
    with Retriever.open(saved_index) as r:
        r.backup(dest)
    body = json.loads((dest / BACKUP).read_text())
    body["files"]["../../escape"] = {"bytes": 1, "sha256": "0"}
    (dest / BACKUP).write_text(json.dumps(body))
    with pytest.raises(IndexCorruptError, match="outside the backup"):
        restore_backup(dest, tmp_path / "t")
    assert not (tmp_path / "escape").exists()
    with pytest.raises(InputError, match="not a backup"):
        verify_backup(tmp_path)


def test_a_sharded_index_backs_up_and_restores_every_shard(tmp_path, model_cache):
    src = tmp_path / "sharded"
    with Retriever.create(src, RetrieverConfig(), shards=3) as r:
        r.upsert(_docs(40))
        expected = [h.id for h in r.search("topic 2 details", k=5, rerank=False)]
        dest = tmp_path / "b"
        report = r.backup(dest)
        r.upsert(_docs(5, prefix="late"))
    assert [i["path"] for i in report.indexes] == ["shard-0000", "shard-0001", "shard-0002"]
    assert report.documents == 40
    assert verify_backup(dest).checks["sharded"] is True
    restore_backup(dest, tmp_path / "restored")
    with Retriever.open(tmp_path / "restored", read_only=True) as b:
        assert b.shard_count == 3 and len(b) == 40 and b.verify(check_model=False).ok
        assert not any(i.startswith("late") for i in b.store.document_ids())
        assert [h.id for h in b.search("topic 2 details", k=5, rerank=False)] == expected
