"""Shared fixtures. Real models (the packaged MiniLM bi-encoder and ms-marco cross-encoder) are loaded once
per session; `corpus_index` is a real index over 300 fitz-gov documents, built once and only read."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
