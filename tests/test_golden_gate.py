"""CI runs the release gate on the golden set over the default corpus, and a gate fails for real when the
index is degraded on purpose (a wrong embedding model)."""
import shutil

import numpy as np
import pytest

from retriever import Retriever, RetrieverConfig
from retriever.cli import main
from retriever.models import resolve_embedder

from conftest import ROOT, copy_index

EVALS = ROOT / "evals"


@pytest.fixture(scope="module")
def demo_index(fitz1000_index):
    """The default pipeline over the default corpus: fitz_gov_subset(1000), default config."""
    return fitz1000_index


def _eval(index, capsys):
    code = main(["eval", str(index), "--queries", str(EVALS / "golden.jsonl"), "--gate", str(EVALS / "gate.toml"),
                 "--baseline", str(EVALS / "baseline.json"), "--concurrency", "2"])
    return code, capsys.readouterr().out


@pytest.mark.real
def test_release_gate_passes_on_the_golden_set(demo_index, capsys):
    code, out = _eval(demo_index, capsys)
    assert code == 0, out[-3000:]
    assert out.strip().splitlines()[-1].startswith("gate passed")


def _wrong_model(dst):
    """MiniLM with its word-embedding rows shuffled (seeded): a model that loads fine and embeds nonsense."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(resolve_embedder("builtin:all-MiniLM-L6-v2"), dst)
    weights = load_file(str(dst / "model.safetensors"))
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[name] = weights[name][np.random.default_rng(0).permutation(len(weights[name]))]
    save_file(weights, str(dst / "model.safetensors"))
    return dst


@pytest.mark.real
def test_gate_fails_with_exit_1_naming_the_metric_when_the_model_is_wrong(demo_index, tmp_path, capsys):
    degraded = copy_index(demo_index, tmp_path / "degraded")
    model = _wrong_model(tmp_path / "wrong-model")
    with Retriever.open(degraded) as r:
        r.reembed(str(model))  # the "rebuild script changed the model" regression
    code, out = _eval(degraded, capsys)
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[-1].startswith("gate FAILED") and "recall@10" in lines[-1] and "retrieval.recall@10" in lines[-1]
    assert any(line.startswith("FAIL  recall@10") for line in lines[-12:])
