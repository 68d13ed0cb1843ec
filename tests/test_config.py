"""Configuration: TOML into typed, validated settings; a wrong key or value names the key and the allowed values."""
from pathlib import Path

import pytest

from retriever import ConfigError, RetrieverConfig

ROOT = Path(__file__).resolve().parent.parent


def test_default_toml_equals_the_defaults():
    assert RetrieverConfig.from_toml(ROOT / "configs" / "default.toml") == RetrieverConfig()
    assert RetrieverConfig.from_toml(ROOT / "retriever" / "configs" / "default.toml") == RetrieverConfig()


def test_round_trip_through_dict():
    c = RetrieverConfig.from_dict({"rerank": {"candidates": 50, "enabled": False},
                                   "ingest": {"metadata_fields": ["a", "b"], "text_field": "content"}})
    assert c.rerank.candidates == 50 and c.ingest.metadata_fields == ("a", "b")
    assert RetrieverConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "data, words",
    [
        ({"rerank": {"candidate": 3}}, r"unknown key rerank\.candidate; allowed keys in \[rerank\]: enabled, model, backend, candidates"),
        ({"index": {"kind": "annoy"}}, r"index\.kind = 'annoy' is not allowed; allowed values: 'flat'"),
        ({"rerank": {"candidates": 0}}, r"rerank\.candidates = 0 is out of range; it must be between 1 and 10000"),
        ({"embedding": {"batch_size": "big"}}, r"embedding\.batch_size = 'big' must be of type int"),
        ({"embedding": {"device": "tpu"}}, r"allowed values: 'cpu', 'cuda', 'mps'"),
        ({"rerank": {"enabled": "yes"}}, r"rerank\.enabled = 'yes' must be of type bool"),
        ({"ingest": {"metadata_fields": [1, 2]}}, r"ingest\.metadata_fields = .* must be a list of strings"),
        ({"chunking": {"max_tokens": 64, "overlap": 64}}, r"chunking\.overlap = 64 must be smaller"),
        ({"searching": {}}, r"unknown section \[searching\]"),
    ],
)
def test_wrong_keys_and_values_are_named(data, words):
    with pytest.raises(ConfigError, match=words):
        RetrieverConfig.from_dict(data)


def test_toml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[rerank\ncandidates = 3\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        RetrieverConfig.from_toml(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[rerank]\ncandidatez = 3\n")
    with pytest.raises(ConfigError, match=r"wrong.toml: unknown key rerank\.candidatez"):
        RetrieverConfig.from_toml(wrong)
    with pytest.raises(ConfigError, match="cannot read config file"):
        RetrieverConfig.from_toml(tmp_path / "absent.toml")
