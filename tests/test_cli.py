"""The `retriever` command on a real index: ingest (JSONL, CSV, Parquet, field names, config), search --json,
delete, info --json, verify, rebuild, reembed; exit codes 0 / 2 / 1; --help without torch."""
import json
import os
import subprocess
import sys

import pytest

from retriever.cli import main

from conftest import ROOT

DOCS = [
    {"key": "paris", "body": "Paris is the capital and largest city of France.", "lang": "en", "year": 2021},
    {"key": "berlin", "body": "Berlin is the capital of Germany.", "lang": "en", "year": 2019},
    {"key": "banana", "body": "Bananas are rich in potassium.", "lang": "en", "year": 2023},
    {"key": "madrid", "body": "Madrid es la capital de España.", "lang": "es", "year": 2020},
]


@pytest.fixture
def data_files(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[ingest]\nid_field = "key"\ntext_field = "body"\n\n[rerank]\ncandidates = 10\n')
    return jsonl, cfg


def _json_out(capsys):
    return json.loads(capsys.readouterr().out)


@pytest.mark.real
def test_ingest_search_delete_info_verify_rebuild(tmp_path, data_files, capsys, model_cache):
    jsonl, cfg = data_files
    index = str(tmp_path / "ix")
    assert main(["ingest", str(jsonl), "--index", index, "--config", str(cfg)]) == 0
    assert "ingested 4 documents" in capsys.readouterr().out

    assert main(["search", index, "capital of France", "-k", "2", "--json"]) == 0
    hits = _json_out(capsys)["hits"]
    assert [h["id"] for h in hits][0] == "paris" and len(hits) == 2
    assert set(hits[0]) == {"id", "text", "metadata", "rank", "score", "retrieval_score", "rerank_score",
                            "lexical_score", "passages", "found_by"}
    assert hits[0]["metadata"] == {"lang": "en", "year": 2021} and hits[0]["rerank_score"] is not None

    assert main(["search", index, "capital", "-k", "5", "--no-rerank", "--json", "--filter", '{"lang": "es"}']) == 0
    hits = _json_out(capsys)["hits"]
    assert [h["id"] for h in hits] == ["madrid"] and hits[0]["rerank_score"] is None

    assert main(["search", index, "capital", "-k", "2"]) == 0
    assert "rerank" in capsys.readouterr().out

    assert main(["delete", index, "paris", "nobody"]) == 0
    out = capsys.readouterr()
    assert "deleted 1 documents" in out.out and "not found: nobody" in out.err
    assert main(["search", index, "capital of France", "-k", "10", "--json", "--no-rerank"]) == 0
    assert "paris" not in [h["id"] for h in _json_out(capsys)["hits"]]

    assert main(["info", index, "--json"]) == 0
    info = _json_out(capsys)
    assert info["documents"] == 3 and info["vectors"] == 3 and info["dim"] == 384
    assert info["index_kind"] == "flat" and info["embedding_model"] == "builtin:all-MiniLM-L6-v2"

    assert main(["verify", index]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")
    assert main(["rebuild", index]) == 0
    assert "rebuilt" in capsys.readouterr().out
    assert main(["verify", index, "--json"]) == 0
    assert _json_out(capsys)["ok"] is True

    # re-ingesting updates in place (upsert by id), and a CSV with other field names works
    csv = tmp_path / "more.csv"
    csv.write_text("key,body,lang,year\nparis,Paris is back.,fr,2024\nrome,Rome is the capital of Italy.,it,2022\n")
    assert main(["ingest", str(csv), "--index", index]) == 0  # the index remembers its [ingest] fields
    assert "2 documents" in capsys.readouterr().out
    assert main(["info", index, "--json"]) == 0
    assert _json_out(capsys)["documents"] == 5


@pytest.mark.real
def test_parquet_ingest_with_flags(tmp_path, model_cache, capsys):
    import duckdb

    pq = tmp_path / "d.parquet"
    duckdb.connect().execute(
        f"COPY (SELECT * FROM (VALUES ('x1', 'Solar panels convert sunlight into electricity.', 'energy'), "
        f"('x2', 'Wind turbines generate power from wind.', 'energy')) t(uid, content, topic)) TO '{pq}' (FORMAT parquet)"
    )
    index = str(tmp_path / "pq")
    assert main(["ingest", str(pq), "--index", index, "--id-field", "uid", "--text-field", "content",
                 "--metadata-fields", "topic"]) == 0
    capsys.readouterr()
    assert main(["search", index, "sunlight", "-k", "1", "--json", "--no-rerank"]) == 0
    hit = _json_out(capsys)["hits"][0]
    assert hit["id"] == "x1" and hit["metadata"] == {"topic": "energy"}


@pytest.mark.real
def test_exit_code_2_for_bad_input_and_nothing_written(tmp_path, data_files, capsys, model_cache):
    jsonl, cfg = data_files
    index = str(tmp_path / "ix")
    assert main(["ingest", str(jsonl), "--index", index, "--config", str(cfg)]) == 0
    capsys.readouterr()
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps({"key": "n1", "body": "new one"}) + "\n" + json.dumps({"key": "n1", "body": "again"}) + "\n")
    assert main(["ingest", str(dup), "--index", index]) == 2
    assert "repeats" in capsys.readouterr().err
    assert main(["search", index, "x", "--filter", "{not json"]) == 2
    assert "--filter is not valid JSON" in capsys.readouterr().err
    assert main(["search", index, "x", "--filter", '{"lang": {"$like": "e%"}}']) == 2
    assert "unknown operator '$like'" in capsys.readouterr().err
    assert main(["search", index, "x", "-k", "0"]) == 2
    assert main(["search", index, "   "]) == 2
    assert main(["search", str(tmp_path / "nope"), "x"]) == 2
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("[index]\nkind = 'hnswx'\n")
    assert main(["ingest", str(jsonl), "--index", str(tmp_path / "other"), "--config", str(bad_cfg)]) == 2
    assert "index.kind = 'hnswx' is not allowed" in capsys.readouterr().err
    assert main(["info", index, "--json"]) == 0
    assert _json_out(capsys)["documents"] == 4  # the bad batch changed nothing


@pytest.mark.real
def test_verify_exit_code_1_on_a_damaged_snapshot(tmp_path, data_files, capsys, model_cache):
    jsonl, cfg = data_files
    index = tmp_path / "ix"
    assert main(["ingest", str(jsonl), "--index", str(index), "--config", str(cfg)]) == 0
    from retriever import Retriever

    with Retriever.open(index, read_only=True) as r:
        snap = index / "gen-000001" / "vectors.faiss"
        data = bytearray(snap.read_bytes())
        data[len(data) // 2] ^= 0xFF
        snap.write_bytes(bytes(data))
        rep = r.verify(check_model=False)
    assert not rep.ok and "sha256" in rep.problems[0]


def test_help_does_not_import_torch():
    code = ("import sys\nfrom retriever.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and "usage: retriever" in out.stdout
    assert out.stderr.strip().endswith("NO-TORCH")


def test_console_script_is_installed_and_exit_codes_cross_the_process_boundary(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "retriever")
    assert os.path.exists(exe), "pip install -e . provides the `retriever` console script"
    out = subprocess.run([exe, "info", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a rag-retriever index" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.real
def test_demo_runs_on_the_bundled_corpus(tmp_path, capsys, model_cache):
    index = tmp_path / "demo"
    assert main(["demo", "--index", str(index), "--docs", "40", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "ingested 40 documents" in out
    assert out.count('query: "') == 4 and "rerank" in out and "cosine" in out
    assert main(["demo", "--index", str(index), "--docs", "0"]) == 2  # bad input, index left alone
    assert (index / "manifest.json").is_file()


def test_quickstart_example_runs(model_cache):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "reranked:" in out.stdout and "ok=True" in out.stdout
