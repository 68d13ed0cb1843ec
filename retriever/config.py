"""Typed, validated settings, loaded from TOML (``configs/default.toml``).

A wrong key or value raises :class:`ConfigError` naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .metadata_fields import check_fields

DEFAULT_EMBEDDING_MODEL = "builtin:all-MiniLM-L6-v2"
DEFAULT_RERANK_MODEL = "builtin:ms-marco-MiniLM-L-12-v2"


def _rule(*, choices: tuple | None = None, min: float | None = None, max: float | None = None) -> dict:
    return {"choices": choices, "min": min, "max": max}


@dataclass(frozen=True)
class EmbeddingConfig:
    model: str = DEFAULT_EMBEDDING_MODEL
    # onnx: the model exported once to int8 ONNX (cached) and run by onnxruntime, the fast path; torch: the
    # sentence-transformers reference path (any model). The manifest records which one embedded an index.
    backend: str = field(default="onnx", metadata=_rule(choices=("onnx", "torch")))
    # texts per forward pass (sorted by length first); 32 measured 15% faster than 64 on the onnx path
    batch_size: int = field(default=32, metadata=_rule(min=1, max=4096))
    device: str = field(default="cpu", metadata=_rule(choices=("cpu", "cuda", "mps")))
    max_seq_length: int | None = field(default=None, metadata=_rule(min=8, max=8192))


@dataclass(frozen=True)
class IndexConfig:
    # flat (exact), hnsw, ivf_flat, ivf_pq, or auto (picked from the corpus size and memory_budget_mb)
    kind: str = field(default="flat", metadata=_rule(choices=("flat", "hnsw", "ivf_flat", "ivf_pq", "auto")))
    # below this many allowed documents a filtered search scans them exactly instead of using FAISS
    exact_filter_threshold: int = field(default=2048, metadata=_rule(min=0))
    # hnsw: graph degree M, build-time and search-time beam widths (ef_search 0 = tuned value, else 64)
    hnsw_m: int = field(default=32, metadata=_rule(min=4, max=256))
    ef_construction: int = field(default=100, metadata=_rule(min=8, max=4096))
    ef_search: int = field(default=0, metadata=_rule(min=0, max=65536))
    # ivf_flat / ivf_pq: number of lists (0 = about 4*sqrt(n)) and lists probed per query (0 = tuned value,
    # else 2*sqrt(nlist))
    nlist: int = field(default=0, metadata=_rule(min=0, max=65536))
    nprobe: int = field(default=0, metadata=_rule(min=0, max=65536))
    # ivf_pq: sub-quantizers (0 = one per 8 dimensions; must divide the dimension), bits per code, OPQ rotation
    pq_m: int = field(default=0, metadata=_rule(min=0, max=4096))
    pq_nbits: int = field(default=8, metadata=_rule(min=4, max=16))
    opq: bool = False
    # ivf_pq: re-score the top k*rescore candidates with the exact vectors stored in DuckDB (0 = the tuned value,
    # else 16: measured at 1M vectors, 4 gives recall@10 0.84 on real queries and 16 gives 0.99)
    rescore: int = field(default=0, metadata=_rule(min=0, max=1000))
    # vectors sampled from DuckDB to train IVF/PQ (0 = 64 per list, at least 10,000, all when fewer)
    train_sample: int = field(default=0, metadata=_rule(min=0))
    # auto: RAM for the index in MB (0 = no limit); IVF-PQ when the flat vectors would not fit
    memory_budget_mb: int = field(default=0, metadata=_rule(min=0))
    # info/verify warn that retraining is due when the corpus reaches this multiple of its size at training
    retrain_growth: float = field(default=2.0, metadata=_rule(min=1.0, max=1000.0))
    # read-only opens memory-map the FAISS snapshot (a server starts without reading it all into RAM)
    mmap: bool = True


@dataclass(frozen=True)
class RerankConfig:
    enabled: bool = True
    model: str = DEFAULT_RERANK_MODEL
    # onnx: an int8 ONNX cross-encoder run by onnxruntime (the builtin, or a folder with model.onnx and
    # tokenizer.json), the fast path; torch: sentence-transformers CrossEncoder, the reference (any model)
    backend: str = field(default="onnx", metadata=_rule(choices=("onnx", "torch")))
    # candidates and max_length from benchmarks/rerank_curve.py (the recall/latency curve on a holdout of fitz-gov
    # queries, run it for today's numbers): 15 candidates at 384 tokens were the cheapest int8 setting within 0.01
    # MRR@10 of the fp32 cross-encoder at 512 tokens on 20 candidates; 10 candidates, or 128 tokens, lost more
    candidates: int = field(default=15, metadata=_rule(min=1, max=10000))
    # pairs per forward pass, sorted by length first; 0 = auto: 1 on onnx (exact: dynamic int8 scales activations
    # per batch, so batching would make a pair's score depend on its batchmates), 8 on torch
    batch_size: int = field(default=0, metadata=_rule(min=0, max=4096))
    max_length: int = field(default=384, metadata=_rule(min=16, max=512))
    # onnx: whether onnxruntime's intra-op threads spin-wait between the model's parallel steps (true until issue
    # 16). Scores are the same either way; spinning burns the cores that concurrent searches, the other search
    # threads of a server and any other process need (benchmarks/bench_server.py, bench_reranker_export.py)
    thread_spinning: bool = False
    # onnx: how many pairs run at once, each on one intra-op thread (a pair still runs alone, so its score is the
    # same bit for bit); 0 = auto: one per core on onnx, 1 on torch; 1 = one pair at a time on every core (before
    # issue 16). A process-wide pool, shared by concurrent searches, so they never run more pairs than this at once.
    # One thread per pair wastes less than two threads on one small matrix: reranked p95 400 vs 461 ms on 2 cores
    # (benchmarks/bench_speed.py, ours vs ours-serial; bench_server.py's "off, before" server under load)
    pair_workers: int = field(default=0, metadata=_rule(min=0, max=256))
    # milliseconds the cross-encoder may spend on one search (0 = no limit); past it the hits come back in
    # retrieval order and the trace / HTTP response says `rerank_timed_out`
    budget_ms: float = field(default=0.0, metadata=_rule(min=0, max=600_000))
    # the final order of reranked documents (benchmarks/fusion_curve.py chose blend at 35 over three labeled sets
    # and the golden set): blend = the cross-encoder's log-odds + retrieval_weight * the retrieval score min-max
    # normalized over the window, so a confident cross-encoder overturns the retrieval order and an unsure one
    # leaves it; rrf = 1/(rrf_k + rerank rank) + retrieval_weight/(rrf_k + retrieval rank); cross_encoder = its
    # score alone. Chunks mode always orders by the cross-encoder alone (the pipeline before documents mode).
    fusion: str = field(default="blend", metadata=_rule(choices=("blend", "rrf", "cross_encoder")))
    rrf_k: int = field(default=60, metadata=_rule(min=1, max=10_000))
    retrieval_weight: float = field(default=35.0, metadata=_rule(min=0.0, max=100.0))


@dataclass(frozen=True)
class RetrievalConfig:
    """What a search returns and which arms find it. Defaults from `benchmarks/fusion_curve.py` (the curve over
    the labeled sets of `evals/`, tuned on their tuning split, checked on the held-out queries)."""
    # documents: k distinct documents per search (a hit's id and metadata are the document's, its text the best
    # passage, `passages` the matched chunks); chunks: k chunks, the pipeline before documents mode, exactly
    results: str = field(default="documents", metadata=_rule(choices=("documents", "chunks")))
    # dense: FAISS cosine; lexical: BM25 over the stored text (tantivy); hybrid: both, fused
    mode: str = field(default="hybrid", metadata=_rule(choices=("dense", "lexical", "hybrid")))
    # how hybrid fuses the two ranked lists of documents: rrf (reciprocal rank, 1 / (rrf_k + rank)) or convex
    # (weight * dense + (1 - weight) * lexical, each score min-max normalized over the query's candidates)
    fusion: str = field(default="convex", metadata=_rule(choices=("rrf", "convex")))
    rrf_k: int = field(default=60, metadata=_rule(min=1, max=10_000))
    # the dense arm's weight: in convex, its share; in rrf, a factor on its 1/(rrf_k + rank) (lexical's is 1 - weight)
    weight: float = field(default=0.7, metadata=_rule(min=0.0, max=1.0))
    # documents each arm retrieves before fusion, reranked or not (0 = [rerank] candidates; at least k)
    candidates: int = field(default=0, metadata=_rule(min=0, max=10_000))


@dataclass(frozen=True)
class ChunkingConfig:
    # None: the embedding model's max sequence length minus its special tokens
    max_tokens: int | None = field(default=None, metadata=_rule(min=16, max=8192))
    overlap: int = field(default=32, metadata=_rule(min=0, max=4096))


@dataclass(frozen=True)
class IngestConfig:
    id_field: str = "id"
    text_field: str = "text"
    # None: every other field becomes metadata; a list keeps only those fields
    metadata_fields: tuple[str, ...] | None = None
    # fields joined in front of the text field (for example a title), separated by a blank line
    prepend_fields: tuple[str, ...] = ()
    commit_every: int = field(default=512, metadata=_rule(min=1))


@dataclass(frozen=True)
class RuntimeConfig:
    # 0 = one per core. onnxruntime (or torch, on the torch backends) runs the models; FAISS (OpenMP) searches.
    # They run one after the other in a query, so the default gives the models every core and FAISS and BLAS
    # one thread each (their work here is tiny).
    torch_threads: int = field(default=0, metadata=_rule(min=0, max=1024))
    faiss_threads: int = field(default=1, metadata=_rule(min=0, max=1024))
    onnx_threads: int = field(default=0, metadata=_rule(min=0, max=1024))
    blas_threads: int = field(default=1, metadata=_rule(min=0, max=1024))


@dataclass(frozen=True)
class CacheConfig:
    # entries kept (least recently used go first; 0 turns a cache off). A query embedding is dim*4 bytes
    # (1.5 KB at 384-d); a rerank score about 200 bytes with its key.
    query_embeddings: int = field(default=4096, metadata=_rule(min=0, max=10_000_000))
    rerank_scores: int = field(default=65536, metadata=_rule(min=0, max=100_000_000))


@dataclass(frozen=True)
class ServerConfig:
    """`retriever serve`: one search thread per core by default, each running the model on every core (the
    `[runtime]` layout). `benchmarks/bench_server.py` measures throughput and latency at 1, 4 and 16 clients."""
    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=_rule(min=0, max=65535))
    workers: int = field(default=0, metadata=_rule(min=0, max=256))          # search threads (0 = one per core)
    max_pending: int = field(default=256, metadata=_rule(min=1))            # searches queued or running; past it 503
    max_body_bytes: int = field(default=8 * 1024 * 1024, metadata=_rule(min=1024))
    max_batch_documents: int = field(default=1000, metadata=_rule(min=1, max=100_000))
    max_batch_queries: int = field(default=64, metadata=_rule(min=1, max=10_000))
    max_k: int = field(default=1000, metadata=_rule(min=1, max=10_000))
    # bearer token for writes and admin routes, read from this environment variable (unset or empty: no auth)
    token_env: str = "RETRIEVER_API_TOKEN"
    auth_reads: bool = False                                                 # require the token for searches too
    # a writing server saves the FAISS snapshot this often when something changed (DuckDB commits every write
    # at once; the snapshot only shortens the replay on the next open), and publishes it to read-only servers
    save_interval_s: float = field(default=10.0, metadata=_rule(min=0.1, max=86_400))
    # `serve --engine ray`: how long the router waits for a shard's replicas before answering without that shard
    # (the response then says "partial": true and names the shard in "missed_shards")
    shard_timeout_ms: float = field(default=3000.0, metadata=_rule(min=10, max=600_000))
    # the folder POST /v1/admin/backup may write backups into (each a new folder inside it); "" = that route is
    # off, so no request can make the server write anywhere else
    backup_dir: str = ""


@dataclass(frozen=True)
class MetadataConfig:
    """Metadata fields filtered through typed, indexed DuckDB columns instead of the JSON (`metadata_fields`):
    {name: type}, type one of "int", "float", "str", "bool", "list[str]", "list[int]"; a dotted name is a nested
    field. Filters give the same rows either way; at 1M documents a typed equality or range takes milliseconds
    where the JSON takes hundreds (benchmarks/bench_filters.py). A document whose declared field holds a value
    of another type is refused. Fields of an existing index are added with `retriever rebuild DIR --metadata
    NAME=TYPE` (`Retriever.add_metadata_fields`), which fills them from the stored JSON."""
    fields: dict[str, str] = field(default_factory=dict)


_SECTIONS = {
    "embedding": EmbeddingConfig,
    "index": IndexConfig,
    "rerank": RerankConfig,
    "retrieval": RetrievalConfig,
    "chunking": ChunkingConfig,
    "ingest": IngestConfig,
    "runtime": RuntimeConfig,
    "cache": CacheConfig,
    "server": ServerConfig,
    "metadata": MetadataConfig,
}


@dataclass(frozen=True)
class RetrieverConfig:
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, cls):
                raise ConfigError(f"config section [{name}] must be a {cls.__name__}, got {type(section).__name__}")
            _validate_section(name, section)
        if self.chunking.max_tokens is not None and self.chunking.overlap >= self.chunking.max_tokens:
            raise ConfigError(
                f"chunking.overlap = {self.chunking.overlap} must be smaller than chunking.max_tokens = "
                f"{self.chunking.max_tokens}; lower the overlap or raise max_tokens"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "RetrieverConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table of sections, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            raise ConfigError(f"{source}: unknown section [{unknown[0]}]; allowed sections: {', '.join(_SECTIONS)}")
        sections = {}
        for name, section_cls in _SECTIONS.items():
            raw = data.get(name, {})
            if not isinstance(raw, dict):
                raise ConfigError(f"{source}: [{name}] must be a table, got {type(raw).__name__}")
            sections[name] = _build_section(name, section_cls, raw, source)
        return cls(**sections)

    @classmethod
    def from_toml(cls, path: str | Path) -> "RetrieverConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}; pass an existing TOML file") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e}); fix the syntax at that line") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in section.items()}
        return out

    def replace(self, **sections: Any) -> "RetrieverConfig":
        """A copy with some sections replaced, e.g. ``config.replace(rerank={"enabled": False})``."""
        data = self.to_dict()
        for name, values in sections.items():
            if name not in _SECTIONS:
                raise ConfigError(f"unknown section [{name}]; allowed sections: {', '.join(_SECTIONS)}")
            data[name] = {**data[name], **(dataclasses.asdict(values) if dataclasses.is_dataclass(values) else values)}
        return RetrieverConfig.from_dict(data)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build_section(name: str, cls: type, raw: dict[str, Any], source: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key {name}.{unknown[0]}; allowed keys in [{name}]: {', '.join(fields)}")
    values = {}
    for key, value in raw.items():
        if isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return cls(**values)


def _check_type(key: str, value: Any, annotation: str) -> None:
    ann = annotation.replace(" ", "")
    optional = "|None" in ann
    base = ann.replace("|None", "")
    if value is None:
        if optional:
            return
        raise ConfigError(f"{key} must not be empty (expected {base})")
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "tuple[str,...]": lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v),
        "dict[str,str]": lambda v: check_fields(v, key) is not None,  # metadata.fields: names and types checked
    }[base](value)
    if not ok:
        expected = "a list of strings" if base.startswith("tuple") else f"of type {base}"
        raise ConfigError(f"{key} = {value!r} must be {expected}")


def _validate_section(name: str, section: Any) -> None:
    for f in dataclasses.fields(section):
        key = f"{name}.{f.name}"
        value = getattr(section, f.name)
        if isinstance(value, list):  # constructed in Python with a list
            value = tuple(value)
            object.__setattr__(section, f.name, value)
        _check_type(key, value, f.type if isinstance(f.type, str) else _type_name(f.type))
        rule = f.metadata or {}
        if value is None:
            continue
        if rule.get("choices") and value not in rule["choices"]:
            raise ConfigError(f"{key} = {value!r} is not allowed; allowed values: {', '.join(map(repr, rule['choices']))}")
        lo, hi = rule.get("min"), rule.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ConfigError(f"{key} = {value!r} is out of range; it must be {rng}")
