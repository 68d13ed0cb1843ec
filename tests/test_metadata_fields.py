"""Typed metadata fields (`[metadata] fields`, `retriever/metadata_fields.py`): every operator through the typed
columns gives the rows the JSON path gives on the same data (one real index, a real DuckDB file), through the
store and through `Retriever.search`; writes keep the side table in step; adding a field fills it from the stored
JSON in one transaction or changes nothing; bad declarations and mismatched configs are refused by name; an index
made before typed fields opens and takes them."""
from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from retriever import ConfigError, Document, InputError, Retriever, RetrieverConfig
from retriever.config import DEFAULT_EMBEDDING_MODEL
from retriever.embedding import FINGERPRINT_PROBES
from retriever.filters import compile_filter, compile_filter_for, compile_where
from retriever.generation import Generation
from retriever.maintenance import embedder_record


class HashEmbedder:
    """A fast stand-in for the bi-encoder (after the fakes of sentence-transformers' and LlamaIndex's tests): a
    text's vector is the sum of seeded random vectors of its words, unit length. Tokens are words."""
    name, backend, dim, max_seq_length = DEFAULT_EMBEDDING_MODEL, "onnx", 32, 130

    def max_content_tokens(self) -> int:
        return 128

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]

    def encode(self, texts, *, show_progress_bar: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[i] += np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = out[i] if out[i].any() else 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_queries(self, texts) -> np.ndarray:
        return self.encode(texts)

    def fingerprint(self) -> dict:
        return {"probes": [[round(float(x), 5) for x in row] for row in self.encode(FINGERPRINT_PROBES)]}


def _create(path: Path, config: RetrieverConfig | None = None) -> Retriever:
    """A new index embedded by HashEmbedder (no model to load); reopened later, only what needs no model is used."""
    fake = HashEmbedder()
    config = config or RetrieverConfig()
    return Retriever(Generation.create(Path(path), config, embedder_record(fake, fake.fingerprint())), fake)

FIELDS = {"n": "int", "x": "float", "s": "str", "b": "bool", "tags": "list[str]", "nums": "list[int]",
          "meta.k": "int", "dash-f": "str"}
MISSING = object()
BIG = 2 ** 53
# the values each declared field takes across the rows (MISSING: the key is absent)
POOLS = {
    "n": [1, 2, -3, 0, BIG, -BIG, 2020, None, MISSING],
    "x": [1.0, 1, 0.5, -0.0, 1e300, -2.5, 3, None, MISSING],
    "s": ["1", "a", "é", "", 'A"b', "ab", "2020-01-01", "b\\c", None, MISSING],
    "b": [True, False, None, MISSING],
    "tags": [["x", "y"], [], ["é"], [""], ["1"], ["a", "é", 'q"'], ["x"], None, MISSING],
    "nums": [[1, 2], [], [BIG], [-1], [1], None, MISSING],
    "dash-f": ["v", "w", None, MISSING],
}
META = [{"k": 1}, {"k": 2}, {}, None, {"k": None}, [1], {"k": -3}, MISSING]  # the parent of the nested field
UNDECLARED = ["en", 1, True, ["en"], None, MISSING]  # "u": always on the JSON path
# filter values that probe type-aware equality: int vs float vs bool vs the string "1", null, the exact edge
PROBES = [1, 1.0, 1.5, True, False, "1", "x", "a", "é", "", None, 0, -0.0, BIG, BIG + 1, 2020, 2020.0, "2020-01-01",
          -3, 'A"b', 'q"', 2, -1]


def _rows(n: int = 96, seed: int = 7) -> list[Document]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        meta = {}
        for name, pool in POOLS.items():
            v = pool[i % len(pool)] if i < 3 * len(pool) else rng.choice(pool)
            if v is not MISSING:
                meta[name] = v
        parent = rng.choice(META)
        if parent is not MISSING:
            meta["meta"] = parent
        u = rng.choice(UNDECLARED)
        if u is not MISSING:
            meta["u"] = u
        docs.append(Document(f"d{i:03d}", f"document {i} about {rng.choice(['rivers', 'taxes', 'cells', 'stars'])}",
                             meta))
    return docs


DOCS = _rows()


@pytest.fixture(scope="module")
def typed_index(tmp_path_factory):
    """A real index (a real DuckDB file, FAISS and BM25; HashEmbedder's vectors) declaring FIELDS, over DOCS."""
    path = tmp_path_factory.mktemp("typed") / "index"
    r = _create(path, RetrieverConfig().replace(metadata={"fields": FIELDS}))
    r.upsert(DOCS)
    yield r
    r.close()


def _json(r, f) -> list[int]:
    return sorted(r.store.filter_vids(*compile_filter(f)).tolist())


def _typed(r, f) -> list[int]:
    return sorted(r.store.filter_vids(*compile_where(f)).tolist())


def _filters():
    """Every operator on every declared field, with every probe value the operator takes."""
    for name in FIELDS:
        for v in PROBES:
            yield {name: v}
            yield {name: {"$ne": v}}
            if v is not None:
                yield {name: {"$contains": v}}
                yield {"$not": {name: v}}
            if v is not None and not isinstance(v, bool):
                for op in ("$gt", "$gte", "$lt", "$lte"):
                    yield {name: {op: v}}
            if isinstance(v, str) and v:
                yield {name: {"$text": v}}
        yield {name: {"$exists": True}}
        yield {name: {"$exists": False}}
        yield {"$not": {name: {"$exists": True}}}
        yield {name: {"$in": [1, "a", None]}}
        yield {name: {"$in": [1.5, 2, True, "x", "é"]}}
        yield {name: {"$nin": [1, "1", 1.0, None]}}
        yield {name: {"$nin": ["x", 2020, BIG]}}
        yield {name: {"$gte": 0, "$lt": 3}}


def test_typed_columns_give_the_json_rows_for_every_operator(typed_index):
    r = typed_index
    checked = matched = 0
    for f in _filters():
        compiled = compile_filter_for(f, r.store.fields)
        assert compiled.reads_fields and not compiled.reads_json, f  # the typed path, no JSON read
        want = _json(r, f)
        assert _typed(r, f) == want, f
        checked += 1
        matched += bool(want)
    assert checked > 900 and matched > 300  # the probes do match rows, on both paths


@pytest.mark.parametrize("f", [
    {"s": "a", "u": "en"},
    {"$or": [{"n": 1}, {"u": 1}, {"tags": "é"}]},
    {"$and": [{"nums": 1}, {"$not": {"u": {"$exists": True}}}]},
    {"$not": {"$or": [{"b": True}, {"u": True}]}},
    {"meta": None},                       # the parent of a declared nested field stays on the JSON
    {"meta.k": {"$gt": 0}, "meta": {"$exists": True}},
    {"u": ["en"][0], "x": {"$lt": 1}},
    {"tags": {"$nin": ["x"]}, "u": {"$ne": None}},
])
def test_mixed_typed_and_json_filters_agree(typed_index, f):
    r = typed_index
    compiled = compile_filter_for(f, r.store.fields)
    assert compiled.reads_json  # undeclared fields still read the JSON (joined with the typed columns)
    assert _typed(r, f) == _json(r, f)


def test_type_aware_equality_by_hand(typed_index):
    """A few cases computed by hand, so the two paths are not merely agreeing with each other."""
    r = typed_index
    ids = lambda f: sorted(row.id for row in r.store.fetch(r.store.filter_vids(*compile_where(f)).tolist()).values())  # noqa: E731
    by_meta = lambda pred: sorted(d.id for d in DOCS if pred(d.metadata))  # noqa: E731
    assert ids({"n": 1}) == ids({"n": 1.0}) == by_meta(lambda m: m.get("n") == 1 and m["n"] is not True)
    assert ids({"n": True}) == [] and ids({"n": "1"}) == []
    assert ids({"s": "1"}) == by_meta(lambda m: m.get("s") == "1")
    assert ids({"x": 1}) == by_meta(lambda m: m.get("x") == 1)          # 1 and 1.0 are one number
    assert ids({"b": False}) == by_meta(lambda m: m.get("b") is False)  # not 0
    assert ids({"tags": "é"}) == by_meta(lambda m: "é" in (m.get("tags") or []))
    assert ids({"nums": 1}) == by_meta(lambda m: 1 in (m.get("nums") or []))
    assert ids({"s": None}) == by_meta(lambda m: "s" in m and m["s"] is None)
    assert ids({"s": {"$exists": False}}) == by_meta(lambda m: "s" not in m)
    assert ids({"meta.k": 1}) == by_meta(lambda m: isinstance(m.get("meta"), dict) and m["meta"].get("k") == 1)
    assert ids({"n": {"$gte": BIG}}) == by_meta(lambda m: m.get("n") == BIG)
    assert ids({"n": {"$ne": 1}}) == by_meta(lambda m: m.get("n") != 1)  # missing and null rows included


def test_non_ascii_list_members_match_on_the_json_path_too(typed_index):
    """The JSON path used to compare a list's elements with json.dumps text (é as \\u00e9), so a non-ASCII tag
    never matched; it now takes the element text from DuckDB, like the stored one."""
    r = typed_index
    want = sorted(d.id for d in DOCS if "é" in (d.metadata.get("tags") or []))
    assert want
    got = sorted(row.id for row in r.store.fetch(r.store.filter_vids(*compile_filter({"tags": "é"})).tolist()).values())
    assert got == want


@pytest.mark.parametrize("threshold", [0, 100_000], ids=["faiss-id-selector", "exact-scan"])
def test_filtered_search_uses_the_typed_rows(typed_index, threshold):
    r = typed_index
    r.config = r.config.replace(index={"exact_filter_threshold": threshold})
    try:
        _, vectors = r.store.vectors(r.store.vids()[:3].tolist())
        for f in ({"tags": "x"}, {"n": {"$gte": 0}}, {"$or": [{"s": "a"}, {"u": 1}]}, {"b": {"$ne": True}}):
            allowed = {row.id for row in r.store.fetch(r.store.filter_vids(*compile_filter(f)).tolist()).values()}
            for v in vectors:
                hits = r.search_by_vector(v, k=10, filters=f)
                assert len(hits) == min(10, len(allowed)) and {h.id for h in hits} <= allowed, f
        hits = r.search("documents about rivers", k=5, filters={"tags": {"$contains": "x"}}, rerank=False)
        assert hits and all("x" in h.metadata["tags"] for h in hits)
    finally:
        r.config = r.config.replace(index={"exact_filter_threshold": 2048})


def _field_rows(r) -> int:
    return r.store.con.cursor().execute("SELECT count(*) FROM fields").fetchone()[0]


def test_writes_keep_the_typed_columns_in_step(tmp_path):
    with _create(tmp_path / "i", RetrieverConfig().replace(metadata={"fields": FIELDS})) as r:
        r.upsert(DOCS[:40])
        r.upsert([Document(d.id, d.text, {**d.metadata, "n": 7, "tags": ["new"]}) for d in DOCS[:10]])  # replace
        r.delete([d.id for d in DOCS[30:40]])
        long_text = " ".join(f"word{i} sentence about the law." for i in range(400))  # chunked: rows per chunk
        r.upsert([Document("long", long_text, {"n": 5, "tags": ["x"]})])
        assert _field_rows(r) == r.store.count()
        for f in ({"n": 7}, {"tags": "new"}, {"tags": "x"}, {"n": 5}, {"n": {"$exists": False}}, {"chunk_index": 1}):
            assert _typed(r, f) == _json(r, f), f
        assert len(_typed(r, {"n": 7})) == 10 and len(_typed(r, {"n": 5})) > 1  # the chunks of "long" too


def test_verify_checks_the_typed_columns_and_rebuild_makes_them_again(tmp_path):
    """A typed value changed, or a row lost, behind the store's back: verify names it and says to rebuild; rebuild
    fills the table again from the stored JSON, and the typed filters give the JSON's rows again."""
    from retriever.metadata_fields import value_column

    with _create(tmp_path / "i", RetrieverConfig().replace(metadata={"fields": FIELDS})) as r:
        r.upsert(DOCS)
        rep = r.verify(check_model=False)
        assert rep.ok and rep.checks["metadata_fields"] is True, rep.problems
        con = r.store.con
        con.execute(f"UPDATE fields SET {value_column('n')} = 424242 WHERE vid = (SELECT min(vid) FROM fields)")
        rep = r.verify(check_model=False)
        assert not rep.ok and rep.checks["metadata_fields"] is False
        said = " ".join(rep.problems)
        assert "differ from their metadata" in said and "'d000'" in said and "retriever rebuild" in said, said
        assert _typed(r, {"n": 424242}) != _json(r, {"n": 424242})  # the damage is real
        con.execute("DELETE FROM fields WHERE vid = (SELECT max(vid) FROM fields)")
        said = " ".join(r.verify(check_model=False).problems)
        assert f"hold {len(DOCS) - 1} rows and `documents` {len(DOCS)}" in said, said
        r.rebuild()
        rep = r.verify(check_model=False)
        assert rep.ok and rep.checks["metadata_fields"] is True, rep.problems
        assert _field_rows(r) == len(DOCS)
        for f in ({"n": 424242}, {"n": 1}, {"tags": "x"}, {"meta.k": {"$gte": 1}}):
            assert _typed(r, f) == _json(r, f), f


@pytest.mark.parametrize("meta, words", [
    ({"n": "2020"}, "'n' is declared 'int'"),
    ({"n": 1.0}, "'n' is declared 'int'"),
    ({"n": True}, "'n' is declared 'int'"),
    ({"n": 2 ** 60}, "within \\+-2\\*\\*53"),
    ({"x": "0.5"}, "'x' is declared 'float'"),
    ({"b": 1}, "'b' is declared 'bool'"),
    ({"s": 3}, "'s' is declared 'str'"),
    ({"tags": "x"}, "'tags' is declared 'list\\[str\\]'"),
    ({"tags": ["x", 1]}, "'tags' is declared 'list\\[str\\]'"),
    ({"tags": ["a\x1fb"]}, "U\\+001F"),
    ({"nums": [1.5]}, "'nums' is declared 'list\\[int\\]'"),
    ({"meta": {"k": "one"}}, "'meta.k' is declared 'int'"),
])
def test_a_value_of_another_type_is_refused_before_anything_is_written(typed_index, meta, words):
    r = typed_index
    before = r.store.count()
    with pytest.raises(InputError, match=words) as e:
        r.upsert([Document("bad", "a bad row", meta), Document("good", "a good row", {"n": 1})])
    assert "document 'bad'" in str(e.value) and "leave the field undeclared" in str(e.value)
    assert r.store.count() == before and r.get("good") is None
    with pytest.raises(InputError, match=words):  # the store refuses too, whatever path the rows come by
        r.store.upsert(["bad"], [("bad", None, "a bad row", meta)], np.zeros((1, r.store.dim), np.float32))
    assert r.store.count() == before


def test_adding_fields_fills_them_from_the_stored_json_and_survives_reopen(tmp_path):
    path = tmp_path / "i"
    with _create(path) as r:
        r.upsert(DOCS)
        probes = list(itertools.islice(_filters(), 0, None, 7))
        before = {json.dumps(f): _json(r, f) for f in probes}
        report = r.add_metadata_fields({"n": "int", "tags": "list[str]"})
        assert report["added"] == ["n", "tags"] and report["rows"] == r.store.count()
        assert r.add_metadata_fields({"x": "float"})["fields"] == {"n": "int", "tags": "list[str]", "x": "float"}
        for f in probes:  # the same rows as before, through the typed columns where declared
            assert _typed(r, f) == before[json.dumps(f)], f
        r.upsert([Document("later", "a row written after", {"n": 11, "tags": ["later"]})])
        assert len(_typed(r, {"n": 11})) == 1
    stored = json.loads((path / "manifest.json").read_text())["config"]["metadata"]
    assert stored == {"fields": {"n": "int", "tags": "list[str]", "x": "float"}}
    with Retriever.open(path, read_only=True) as r:
        assert r.store.fields == stored["fields"] and r.config.metadata.fields == stored["fields"]
        assert compile_filter_for({"n": 11}, r.store.fields).reads_json is False
        assert len(_typed(r, {"n": 11})) == 1 and _typed(r, {"tags": "x"}) == _json(r, {"tags": "x"})


def test_adding_a_field_that_a_stored_row_breaks_changes_nothing(tmp_path):
    path = tmp_path / "i"
    with _create(path) as r:
        r.upsert(DOCS[:20] + [Document("odd", "a year as text", {"n": "2020"})])
        manifest = (path / "manifest.json").read_text()
        with pytest.raises(InputError, match="document 'odd': metadata field 'n' is declared 'int'"):
            r.add_metadata_fields({"s": "str", "n": "int"})
        assert r.store.fields == {} and r.config.metadata.fields == {}
        assert (path / "manifest.json").read_text() == manifest and r.store.count() == 21
        assert r.get("odd").metadata == {"n": "2020"}
        assert _typed(r, {"n": 1}) == _json(r, {"n": 1})  # still answered, on the JSON
        r.add_metadata_fields({"s": "str"})
        with pytest.raises(InputError, match="'s' is declared 'str', not 'int'"):
            r.add_metadata_fields({"s": "int"})
        assert r.store.fields == {"s": "str"}


def test_the_cli_adds_fields(tmp_path, capsys):
    from retriever.cli import main

    path = tmp_path / "i"
    with _create(path) as r:
        r.upsert(DOCS[:12])
    assert main(["rebuild", str(path), "--metadata", "n=int", "--metadata", "tags=list[str]"]) == 0
    assert "n, tags added, 12 rows filled" in capsys.readouterr().out
    assert main(["rebuild", str(path), "--metadata", "n=integer"]) == 2
    assert 'allowed types: "int"' in capsys.readouterr().err
    with Retriever.open(path, read_only=True) as r:
        assert r.store.fields == {"n": "int", "tags": "list[str]"}


@pytest.mark.parametrize("fields, words", [
    ({"year": "integer"}, 'metadata.fields.year = \'integer\' is not a field type; allowed types: "int", "float"'),
    ({"bad name": "int"}, "field name 'bad name' is not allowed"),
    ({"a..b": "str"}, "field name 'a..b' is not allowed"),
    (["year"], "must be a table of field name to type"),
    ({"tags": "list[float]"}, "'list\\[float\\]' is not a field type"),
])
def test_bad_declarations_name_the_key_the_types_and_the_fix(fields, words):
    with pytest.raises(ConfigError, match=words):
        RetrieverConfig.from_dict({"metadata": {"fields": fields}})


def test_toml_declaration_and_a_mismatched_open_is_refused(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[metadata]\nfields = {year = "int", "a.b" = "str", tags = "list[str]"}\n')
    config = RetrieverConfig.from_toml(toml)
    assert config.metadata.fields == {"year": "int", "a.b": "str", "tags": "list[str]"}
    with _create(tmp_path / "i", config) as r:
        r.upsert([Document("a", "text", {"year": 2020, "a": {"b": "x"}, "tags": ["t"]}),
                  Document("b", "text", {"year": 2022, "a": {"b": "x"}})])
        vector = r.store.vectors()[1][0]
    with pytest.raises(InputError, match="has the typed metadata fields .* --metadata NAME=TYPE"):
        Retriever.open(tmp_path / "i", RetrieverConfig())
    with Retriever.open(tmp_path / "i", config) as r:
        assert [h.id for h in r.search_by_vector(vector, k=3, filters={"a.b": "x", "year": {"$lt": 2021}})] == ["a"]


FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.real
def test_a_legacy_index_opens_and_takes_typed_fields(tmp_path, model_cache):
    legacy = Path(shutil.copytree(FIXTURES / "legacy-index", tmp_path / "legacy-index"))
    expected = json.loads((FIXTURES / "legacy-index.expected.json").read_text())["filtered"]
    overrides = {"retrieval": {"results": "chunks", "mode": "dense"}}
    with Retriever.open(legacy, overrides=overrides) as r:
        assert r.store.fields == {} and r.config.metadata.fields == {}
        before = [h.id for h in r.search("capital city", k=10, filters={"lang": "en"}, rerank=False)]
        assert before == expected
        r.add_metadata_fields({"lang": "str", "year": "int", "tags": "list[str]"})
        assert [h.id for h in r.search("capital city", k=10, filters={"lang": "en"}, rerank=False)] == expected
        assert _typed(r, {"year": {"$gte": 2020}}) == _json(r, {"year": {"$gte": 2020}})
    with Retriever.open(legacy, read_only=True, overrides=overrides) as r:
        assert r.store.fields == {"lang": "str", "year": "int", "tags": "list[str]"}
        assert [h.id for h in r.search("capital city", k=10, filters={"lang": "en"}, rerank=False)] == expected


def test_a_sharded_index_adds_fields_on_every_shard(tmp_path, model_cache):
    docs = [Document(f"d{i}", f"Document number {i} of the set.", {"n": i}) for i in range(12)]
    query = {"n": {"$gte": 6}}
    with Retriever.create(tmp_path / "s", RetrieverConfig(), shards=2) as r:
        r.upsert(docs)
        want = sorted(h.id for h in r.search("document", k=12, rerank=False, filters=query))
        out = r.add_metadata_fields({"n": "int"})
        assert out["shards"] == 2 and out["rows"] == 12 and all(s.store.fields == {"n": "int"} for s in r.shards)
        assert sorted(h.id for h in r.search("document", k=12, rerank=False, filters=query)) == want
        assert want == sorted(f"d{i}" for i in range(6, 12))
    with Retriever.open(tmp_path / "s", read_only=True) as r:
        assert r.config.metadata.fields == {"n": "int"}
