"""Maintenance of an open generation: stats, index status, verify, storing tuned search settings, rebuild and
re-embed. Written against the public faces of `Generation`, `CandidateSearch` and `ModelsInUse`."""
from __future__ import annotations

import logging
import shutil
import time
from typing import Any

import numpy as np

from . import runtime
from .config import RetrieverConfig
from .embedding import Embedder
from .errors import IndexMismatchError, InputError
from .index_plan import IndexPlan, check_settings, plan_index, retrain_due
from .lexical import ANALYZER, LEXICAL, LexicalIndex, library
from .manifest import Manifest, now
from .models import file_sha256
from .persistence import SNAPSHOT, STORE
from .rerank import Reranker
from .results import VerifyReport
from .snapshots import build_index, index_meta
from .store import Store

log = logging.getLogger("retriever")

MASKED_SHARE_WARN = 0.2


def stats(gen, models, cache_stats: dict, fallbacks: int) -> dict[str, Any]:
    gdir, manifest = gen.dir, gen.manifest
    last = gen.store.last_seq()
    return {
        "path": str(gen.root),
        "documents": gen.store.count_parents(),
        "vectors": len(gen.index),
        "dim": gen.index.dim,
        "embedding_model": gen.config.embedding.model,
        "embedding_backend": models.embedder.backend,
        "rerank_model": gen.config.rerank.model,
        "rerank_backend": models.reranker.backend,
        "caches": cache_stats,
        "index_kind": gen.index.kind,
        "index": index_status(gen, fallbacks),
        "generation": manifest.generation,
        "format_version": manifest.format_version,
        "created_at": manifest.created_at,
        "snapshot_seq": manifest.snapshot.seq if manifest.snapshot else None,
        "changelog_seq": last,
        "unsaved_changes": last != gen.saved_seq,
        "disk_bytes": sum(f.stat().st_size for f in gen.root.rglob("*") if f.is_file()),
        "store_bytes": (gdir / STORE).stat().st_size if (gdir / STORE).exists() else 0,
        "snapshot_bytes": (gdir / SNAPSHOT).stat().st_size if (gdir / SNAPSHOT).exists() else 0,
        "read_only": gen.read_only,
        "recovered": gen.recovered,
        "lexical": lexical_status(gen),
        "threads": runtime.current(),
    }


def lexical_status(gen) -> dict[str, Any]:
    """The lexical arm: chunks indexed, where it lives, what made it, and what was done to it on open."""
    lex, record = gen.lexical, gen.manifest.lexical or {}
    lexical_dir = gen.dir / LEXICAL
    return {"chunks": len(lex), "library": library(), "analyzer": ANALYZER,
            "in_memory": lex.path is None, "saved_seq": record.get("seq"),
            "bytes": sum(f.stat().st_size for f in lexical_dir.rglob("*") if f.is_file()) if lexical_dir.is_dir() else 0,
            "recovered": gen.lexical_recovered}


def index_status(gen, fallbacks: int) -> dict[str, Any]:
    """The built index: kind, parameters, why it was chosen, training, masked share, search settings, and
    warnings about maintenance that is due (retraining, compaction, a kind `auto` would now change)."""
    meta, cfg = gen.manifest.index, gen.config.index
    with gen.rw.read():
        index = gen.index
        live, masked = len(index), index.masked
        effective = index.effective()
    total = live + masked
    out = {
        "kind": index.kind, "requested": meta.get("requested", cfg.kind),
        "params": meta.get("params", {}), "reason": meta.get("reason", ""), "pending": meta.get("pending"),
        "trained": meta.get("trained"), "tuned": meta.get("tuned"),
        "search": {**effective, **({"rescore": gen.rescore} if index.lossy else {})},
        "masked": masked, "masked_share": round(masked / total, 4) if total else 0.0,
        "mmapped": index.mmapped, "fallbacks": fallbacks,
    }
    warnings = []
    if out["pending"]:
        warnings.append(out["reason"])
    due = retrain_due(IndexPlan(index.kind), meta.get("trained"), live, cfg.retrain_growth)
    if due:
        warnings.append(due)
    if out["masked_share"] >= MASKED_SHARE_WARN:
        warnings.append(f"{masked:,} of {total:,} HNSW vectors ({out['masked_share']:.0%}) are deleted and masked; "
                        f"`retriever rebuild {gen.root}` compacts them")
    if cfg.kind == "auto":
        later = plan_index(cfg, index.dim, live, strict=False)
        if later.kind != index.kind and not later.pending:
            warnings.append(f"auto would now choose {later.kind} ({later.reason}); `retriever rebuild {gen.root}`")
    tuned = out["tuned"]
    if tuned and tuned.get("vectors") and live >= cfg.retrain_growth * tuned["vectors"]:
        warnings.append(f"search settings were tuned on {tuned['vectors']:,} vectors, the corpus now has "
                        f"{live:,}; run `retriever tune {gen.root}` again")
    out["warnings"] = warnings
    return out


def verify(gen, models, fallbacks: int, *, check_model: bool = True) -> VerifyReport:
    """Check the index against its source of truth; returns problems instead of raising."""
    problems: list[str] = []
    checks: dict[str, Any] = {}
    snap, on_disk = gen.manifest.snapshot, gen.dir / SNAPSHOT
    if not on_disk.is_file():
        problems.append(f"{on_disk} is missing (run `retriever rebuild {gen.root}`)")
    elif snap and file_sha256(on_disk) != snap.sha256:
        problems.append(f"{on_disk} does not match the manifest's sha256 (run `retriever rebuild {gen.root}`)")
    checks["snapshot_checksum"] = not problems
    with gen.rw.read():
        problems += _check_vectors(gen, checks)
        problems += _check_lexical(gen, checks)
        fields = gen.store.field_problems()
        if gen.store.fields:
            checks["metadata_fields"] = not fields
        problems += [f"{p} (run `retriever rebuild {gen.root}`)" for p in fields]
    if check_model:
        try:
            models.checked = False
            models.checked_embedder(gen)
            checks["model_fingerprint"] = True
        except IndexMismatchError as e:
            checks["model_fingerprint"] = False
            problems.append(str(e))
    return VerifyReport(ok=not problems, problems=tuple(problems), checks=checks,
                        warnings=tuple(index_status(gen, fallbacks)["warnings"]))


def _check_vectors(gen, checks: dict[str, Any]) -> list[str]:
    """FAISS ids against DuckDB's rows, and a sample of FAISS vectors against the stored ones."""
    faiss_ids, store_vids = np.sort(gen.index.ids()), gen.store.vids()
    same = np.array_equal(faiss_ids, store_vids)
    checks.update(ids_match=bool(same), faiss_ntotal=int(len(faiss_ids)), duckdb_rows=int(len(store_vids)))
    fix = f"(run `retriever rebuild {gen.root}`)"
    if not same:
        return [f"FAISS holds {len(faiss_ids)} ids, DuckDB {len(store_vids)} rows, and they differ {fix}"]
    if not len(store_vids):
        return []
    problems = []
    sample = store_vids[np.linspace(0, len(store_vids) - 1, min(64, len(store_vids))).astype(int)]
    vids, vecs = gen.store.vectors(sample)
    decoded = np.stack([gen.index.reconstruct(v) for v in vids])
    if gen.index.lossy:  # PQ codes decode to approximations of the stored vectors
        cos = float(np.mean(np.sum(decoded * vecs, axis=1) / np.maximum(np.linalg.norm(decoded, axis=1), 1e-12)))
        checks["pq_decoded_cosine"] = cos
        if cos < 0.5:
            problems.append(f"PQ codes decode to vectors with mean cosine {cos:.2f} to DuckDB's {fix}")
    else:
        err = float(np.abs(decoded - vecs).max())
        checks["vector_max_abs_diff"] = err
        if err > 1e-5:
            problems.append(f"FAISS vectors differ from DuckDB's by {err:.2g} {fix}")
    checks["unit_norm"] = bool(np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4))
    if not checks["unit_norm"]:
        problems.append("stored vectors are not unit length (run `retriever rebuild`)")
    return problems


def _check_lexical(gen, checks: dict[str, Any]) -> list[str]:
    """The lexical arm's vids against DuckDB's rows, and that it answers a query."""
    fix = f"(run `retriever rebuild {gen.root}`)"
    where = gen.lexical.path or "the in-memory lexical index"
    try:
        lex_vids = gen.lexical.vids()
        gen.lexical.search("index", 1)
    except Exception as e:  # a damaged segment surfaces as a tantivy error here
        checks["lexical_ids_match"] = False
        return [f"{where} cannot be read ({e}) {fix}"]
    same = np.array_equal(lex_vids, gen.store.vids())
    checks.update(lexical_ids_match=bool(same), lexical_chunks=int(len(lex_vids)))
    if not same:
        return [f"{where} holds {len(lex_vids)} chunks, DuckDB {gen.store.count()} rows, and they differ {fix}"]
    return []


def store_tuning(gen, report, k: int) -> None:
    """Record a tune report's chosen setting in the manifest, where every later open picks it up."""
    c = report.chosen
    if c is None or not c.params:
        return
    tuned = {"params": dict(c.params), "target_recall": report.target, "k": k, "recall": round(c.recall, 4),
             "recall_labeled": None if c.recall_labeled is None else round(c.recall_labeled, 4),
             "p50_ms": round(c.p50_ms, 3), "vectors": report.vectors, "sample": report.sample,
             "labeled_queries": report.labeled, "at": now()}
    gen.set_manifest(gen.manifest.replace(index={**gen.manifest.index, "tuned": tuned}))
    overridden = [key for key in c.params if getattr(gen.config.index, key)]
    if overridden:
        log.warning("index.%s is set in the config and overrides the tuned value", overridden[0])


def rebuild(gen, index: dict | None, codebook=None) -> int:
    """Rebuild FAISS, the lexical arm and the typed metadata fields from DuckDB's rows, with the [index] settings
    changed by `index`; then save. `codebook`: a sharded index's one training (its plan, checked on the whole
    corpus), used instead of training on this store alone."""
    config = gen.config.replace(index=index) if index else gen.config
    with gen.write_lock:
        n = gen.store.count()
        # bad settings fail before any work
        plan = codebook.plan if codebook is not None else plan_index(config.index, gen.index.dim, n, strict=True)
        if gen.store.fields:
            with gen.rw.write():
                gen.store.refill_fields()
        gen.rebuild_lexical()
        built, trained = build_index(gen.store, gen.index.dim, config.index, plan, codebook)
        _serve_built(gen, built, plan, trained, config)
        gen.save()
    return n


def _serve_built(gen, built, plan, trained, config=None) -> None:
    """Swap a freshly built index in; the tuned search settings stay when the kind and parameters do."""
    old, requested = gen.manifest.index, (config or gen.config).index.kind
    same = old.get("kind") == plan.kind and old.get("params") == plan.params
    gen.swap_index(built, index_meta(plan, requested, trained, old.get("tuned") if same else None), config)


def adopt_codebook(gen, codebook) -> None:
    """Rebuild only FAISS, from the stored vectors and a sharded index's shared codebook (nothing trained here);
    saved at the next save. The tuned search settings stay when the kind and parameters do."""
    with gen.write_lock:
        built, trained = build_index(gen.store, gen.index.dim, gen.config.index, codebook.plan, codebook)
        _serve_built(gen, built, codebook.plan, trained)


def add_metadata_fields(gen, fields: dict[str, str]) -> dict[str, Any]:
    """Declare more typed metadata fields on an open index: the store fills their columns from the stored JSON in
    one transaction (a stored value of another type refuses the step and names its document; nothing changes),
    then the manifest's config records them. Searches wait for the fill, which reads every row's metadata."""
    t0 = time.perf_counter()
    if not isinstance(fields, dict) or not fields:
        raise InputError('fields must be a non-empty dict of field name to type, e.g. {"year": "int"}')
    with gen.write_lock:
        merged = RetrieverConfig.from_dict(
            {"metadata": {"fields": {**gen.store.fields, **fields}}}, source="add_metadata_fields").metadata.fields
        added = [name for name in fields if name not in gen.store.fields]
        with gen.rw.write():
            rows = gen.store.add_fields(fields)
            gen.config = gen.config.replace(metadata={"fields": merged})
        stored = RetrieverConfig.from_dict(gen.manifest.config).replace(metadata={"fields": merged})
        gen.set_manifest(gen.manifest.replace(config=stored.to_dict()))
    return {"added": added, "fields": merged, "rows": rows, "seconds": round(time.perf_counter() - t0, 3)}


def reembed(gen, models, searcher, model: str, *, batch_size: int | None, backend: str | None,
            show_progress: bool) -> dict[str, Any]:
    """Every stored text embedded again by `model` into a new generation, which replaces the current one once it
    is complete (the manifest switch last); the old one is then removed unless a reader serves it."""
    if not isinstance(model, str) or not model.strip():
        raise InputError("model must be a sentence-transformers model name or path, or a builtin: name")
    t0 = time.perf_counter()
    config = gen.config.replace(embedding={"model": model, **({"backend": backend} if backend is not None else {}),
                                           **({"batch_size": batch_size} if batch_size else {})})
    embedder = Embedder.from_config(config.embedding)
    dim, fingerprint = embedder.dim, embedder.fingerprint()
    with gen.write_lock:
        old_gen = gen.number
        new_gen, gdir = gen.new_generation_dir()
        store = Store.create(gdir / STORE, dim, gen.store.fields)
        done, total = 0, gen.store.count()
        try:
            check_settings(config.index, dim)
            for batch in gen.store.iter_texts(batch=max(256, config.embedding.batch_size * 8)):
                vecs = embedder.encode([t for _, _, _, t, _ in batch], show_progress_bar=show_progress)
                store.upsert([i for _, i, _, _, _ in batch], [(i, p, t, m) for _, i, p, t, m in batch], vecs)
                done += len(batch)
                log.info("reembed: %d/%d", done, total)
            plan = plan_index(config.index, dim, store.count(), strict=False)
            index, trained = build_index(store, dim, config.index, plan)
            lexical = LexicalIndex.build(store, gdir / LEXICAL)
        except BaseException:
            store.close()
            shutil.rmtree(gdir, ignore_errors=True)
            raise
        manifest = Manifest.new(config.to_dict(), embedder_record(embedder, fingerprint), new_gen,
                                index_meta(plan, config.index.kind, trained))
        manifest = manifest.replace(created_at=gen.manifest.created_at, stable=gen.manifest.stable,
                                    extra={**manifest.extra, "reembedded_at": now()})
        with gen.rw.write():  # searches see the old generation with its caches, or the new one with none
            old_store = gen.swap_contents(store, index, lexical, manifest, config)
            models.embedder, models.checked = embedder, True
            models.reranker = Reranker.from_config(config)
            searcher.clear_caches()  # the new file numbers vids afresh
        gen.save()  # the manifest now points at the new generation
        old_store.close()
        gen.remove_generation(old_gen)
    return {"generation": new_gen, "vectors": done, "dim": dim, "model": model, "backend": embedder.backend,
            "seconds": round(time.perf_counter() - t0, 2)}


def embedder_record(embedder: Embedder, fingerprint: dict) -> dict[str, Any]:
    """The manifest's `embedder` record: what made the stored vectors."""
    return {"name": embedder.name, "backend": embedder.backend, "dim": embedder.dim,
            "max_seq_length": embedder.max_seq_length, "fingerprint": fingerprint}
