"""Shared fixtures. Real models (the packaged MiniLM bi-encoder and ms-marco cross-encoder) are loaded once
per session; `corpus_index` is a real index over 300 fitz-gov documents, built once and only read."""
from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the session's Ray cluster (`ray_cluster`) uses token auth, Ray's default for local clusters since 2.59; Ray reads
# the mode when it is imported, so it is set before any test module imports ray
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# a token of this session's own (a fresh machine has no ~/.ray/auth_token, and `ray start` makes none)
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retriever import Document, Retriever, RetrieverConfig  # noqa: E402
from retriever.datasets import fitz_gov_subset  # noqa: E402


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """Where the prepared cross-encoder lives; shared with subprocesses through RETRIEVER_CACHE_DIR."""
    existing = os.environ.get("RETRIEVER_CACHE_DIR")
    if existing:
        return Path(existing)
    d = tmp_path_factory.mktemp("model-cache")
    os.environ["RETRIEVER_CACHE_DIR"] = str(d)
    return d


@pytest.fixture(scope="session")
def fitz300():
    """300 fitz-gov documents and the labeled queries they fully cover."""
    return fitz_gov_subset(300)


@pytest.fixture(scope="session")
def corpus_index(tmp_path_factory, fitz300, model_cache) -> Retriever:
    """A real index (real MiniLM, real FAISS, real DuckDB file) over 300 fitz-gov documents. Read-only use."""
    docs, _ = fitz300
    path = tmp_path_factory.mktemp("corpus") / "index"
    r = Retriever.create(path, RetrieverConfig())
    r.upsert(docs)
    r.save()
    yield r
    r.close()


@pytest.fixture(scope="session")
def fitz1000_index(tmp_path_factory, model_cache) -> Path:
    """The default pipeline over the default corpus (fitz_gov_subset(1000), default config, 1,109 vectors of real
    MiniLM embeddings), saved and closed. Copy it (copy_index) before changing it."""
    path = tmp_path_factory.mktemp("fitz1000") / "index"
    docs, _ = fitz_gov_subset(1000)
    with Retriever.create(path, RetrieverConfig()) as r:
        r.upsert(docs)
    return path


@pytest.fixture
def small_docs() -> list[Document]:
    return [
        Document("paris", "Paris is the capital and largest city of France.", {"lang": "en", "year": 2021, "tags": ["geo", "europe"]}),
        Document("berlin", "Berlin is the capital of Germany and its largest city.", {"lang": "en", "year": 2019, "tags": ["geo"]}),
        Document("banana", "Bananas are rich in potassium and easy to digest.", {"lang": "en", "year": 2023, "tags": ["food"]}),
        Document("madrid", "Madrid es la capital de España.", {"lang": "es", "year": 2020, "tags": ["geo", "europe"]}),
        Document("python", "Python is a programming language that emphasizes readability.", {"lang": "en", "year": 2018}),
    ]


@pytest.fixture
def small_index(tmp_path, small_docs, model_cache) -> Retriever:
    """A fresh writable real index with five short documents."""
    r = Retriever.create(tmp_path / "small", RetrieverConfig())
    r.upsert(small_docs)
    yield r
    r.close()


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One real local Ray cluster for the whole session (`ray start --head` on 127.0.0.1, 2 CPUs, no dashboard),
    with this process connected as a driver. Yields the cluster's address (for subprocesses: --address)."""
    import subprocess

    import ray

    ray_bin = Path(sys.executable).parent / "ray"
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run([str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port",
                              address.split(":")[1], "--num-cpus", "2", "--include-dashboard", "false",
                              "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
    if started.returncode:
        pytest.fail(f"`ray start --head` failed ({started.returncode}):\n{started.stderr[-3000:]}")
    os.environ["RAY_ADDRESS"] = address  # subprocesses started by tests join this cluster
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        yield address
    finally:
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)


def write_jsonl(path: Path, docs) -> Path:
    import json

    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "text": d.text, **d.metadata}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def fitz1000_sharded(ray_cluster, tmp_path_factory, model_cache):
    """The demo corpus (fitz_gov_subset(1000)) ingested on Ray into 4 shards, in one batch of 1000 (so its vectors
    are those of fitz1000_index's single upsert: int8 vectors depend on their batchmates). (path, report)."""
    from retriever.ingest import ingest

    docs, _ = fitz_gov_subset(1000)
    root = tmp_path_factory.mktemp("fitz1000-sharded")
    data = write_jsonl(root / "fitz1000.jsonl", docs)
    config = RetrieverConfig().replace(ingest={"commit_every": 1000})
    report = ingest(data, root / "index", shards=4, engine="ray", workers=1, config=config)
    return root / "index", report
