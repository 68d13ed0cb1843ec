"""Release gates in TOML: lowest allowed metrics, highest allowed costs, an optional drop against a baseline.

    max_drop = 0.02                 # top level, before the tables: every [min] metric may fall at most this
                                    # much below the baseline (when --baseline is given)
    [min]
    "recall@10" = 0.90              # bare name: the final (reranked) output
    "retrieval.recall@10" = 0.85    # stage-qualified: retrieval (the mode's list before the rerank), dense,
    "lexical.recall@10" = 0.80      # lexical, fused (both arms fused, in every mode), reranked (the final
    "fused.mrr@10" = 0.5            # output of a reranked run)
    "mrr@10" = 0.6
    [max]
    p95_ms = 2500                   # single-query total; also "rerank.p95_ms", "concurrent.p95_ms", ...
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..searcher import STAGES as SEARCH_STAGES
from .metrics import parse_metric_name

STAGES = ("final", "retrieval", "dense", "lexical", "fused", "reranked")
LATENCY_STAGES = (*SEARCH_STAGES, "concurrent")
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


def check_metric_name(name: str) -> tuple[str, str, int]:
    """(stage | "ann", metric, k) for a quality name such as "retrieval.ndcg@10" or "lexical.recall@10"."""
    stage, _, bare = name.rpartition(".")
    if name.startswith("ann_recall@"):
        _, k = parse_metric_name("recall@" + name.split("@", 1)[1])
        return "ann", "ann_recall", k
    if stage and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} in {name!r}; use a bare name (final output) or one of "
                         f"{', '.join(s + '.' for s in STAGES)}")
    metric, k = parse_metric_name(bare)
    return stage or "final", metric, k


def check_cost_name(name: str) -> None:
    stage, _, pct = name.rpartition(".")
    if stage.startswith("concurrent."):  # a stage under concurrent callers, e.g. "concurrent.rerank.p95_ms"
        stage = stage.split(".", 1)[1]
    if pct not in PERCENTILES or (stage and stage not in LATENCY_STAGES):
        allowed = ", ".join(PERCENTILES) + " (single-query total), or " + ", ".join(
            f"{s}.p95_ms" for s in LATENCY_STAGES)
        raise ValueError(f"unknown cost {name!r}; allowed: {allowed}")


@dataclass(frozen=True)
class Gate:
    source: str
    minimums: dict[str, float] = field(default_factory=dict)
    maximums: dict[str, float] = field(default_factory=dict)
    max_drop: float | None = None

    def ks(self) -> set[int]:
        return {check_metric_name(n)[2] for n in self.minimums}

    def check(self, flat: dict[str, float], baseline: dict[str, float] | None) -> list[dict[str, Any]]:
        """One row per rule: name, kind, value, limit, passed."""
        rows = []
        for name, limit in self.minimums.items():
            value = flat.get(name)
            rows.append({"name": name, "kind": "min", "value": value, "limit": limit,
                         "passed": value is not None and value >= limit})
            if self.max_drop is not None and baseline is not None and name in baseline:
                floor = baseline[name] - self.max_drop
                rows.append({"name": name, "kind": "drop", "value": value, "limit": floor,
                             "baseline": baseline[name], "passed": value is not None and value >= floor - 1e-12})
        for name, limit in self.maximums.items():
            value = flat.get(name)
            rows.append({"name": name, "kind": "max", "value": value, "limit": limit,
                         "passed": value is not None and value <= limit})
        return rows


def load_gate(path: str | Path) -> Gate:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"gate file {path}: {e.strerror}; pass an existing TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"gate file {path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - {"min", "max", "max_drop"})
    if unknown:
        raise InputError(f"gate file {path}: unknown key {unknown[0]!r}; allowed: [min], [max], max_drop")

    def table(name: str, check) -> dict[str, float]:
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise InputError(f"gate file {path}: [{name}] must be a table of name = number")
        out = {}
        for key, value in raw.items():
            try:
                check(key)
            except ValueError as e:
                raise InputError(f"gate file {path}: [{name}] {e}") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"gate file {path}: [{name}] {key!r} = {value!r} must be a number")
            out[key] = float(value)
        return out

    minimums = table("min", check_metric_name)
    maximums = table("max", check_cost_name)
    max_drop = data.get("max_drop")
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0):
        raise InputError(f"gate file {path}: max_drop = {max_drop!r} must be a number >= 0")
    if not minimums and not maximums:
        raise InputError(f"gate file {path}: no rules; add a [min] or [max] table")
    return Gate(str(path), minimums, maximums, None if max_drop is None else float(max_drop))
