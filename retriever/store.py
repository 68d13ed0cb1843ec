"""DuckDB, the source of truth: ids, text, metadata, vectors and a changelog, written in ACID transactions."""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import duckdb
import numpy as np

from . import metadata_fields as typed
from .errors import InputError, RetrieverError
from .filters import compile_filter_for

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Row:
    vid: int
    id: str
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class WriteResult:
    added_vids: np.ndarray
    added_ids: tuple[str, ...]
    removed_vids: np.ndarray
    replaced_keys: frozenset[str]
    seq: int


class StoreBusy(RetrieverError):
    """The DuckDB file is locked by another process (a writer, or readers when opening for writing)."""


class Store:
    """Writes go through `self.con` inside explicit transactions; every result on it is fetched to the end
    (DuckDB refuses new work on a connection with an unfinished result). Reads use a fresh cursor each."""
    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, dim: int, read_only: bool,
                 fields: dict[str, str] | None = None):
        self.con = con
        self.path = path
        self.dim = dim
        self.read_only = read_only
        # the declared metadata fields {name: type} whose typed columns the table `fields` holds (metadata_fields)
        self.fields: dict[str, str] = dict(fields or {})

    # ------------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: Path, dim: int, fields: dict[str, str] | None = None) -> "Store":
        """A new store; `fields` {name: type} are the declared metadata fields, given typed columns."""
        con = duckdb.connect(str(path))
        con.execute(f"""
            CREATE SEQUENCE vid_seq START 1;
            CREATE SEQUENCE changelog_seq START 1;
            CREATE TABLE documents (
                vid BIGINT PRIMARY KEY,
                id VARCHAR NOT NULL UNIQUE,
                parent_id VARCHAR,
                text VARCHAR NOT NULL,
                metadata JSON NOT NULL,
                vector FLOAT[{int(dim)}] NOT NULL
            );
            CREATE TABLE changelog (seq BIGINT PRIMARY KEY, op VARCHAR NOT NULL, vid BIGINT NOT NULL);
            CREATE TABLE info (key VARCHAR PRIMARY KEY, value VARCHAR);
            INSERT INTO info VALUES ('schema_version', '{SCHEMA_VERSION}'), ('dim', '{int(dim)}');
        """)
        store = cls(con, path, dim, read_only=False)
        if fields:
            store.add_fields(fields)
        con.execute("CHECKPOINT")
        return store

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> "Store":
        if not path.is_file():
            raise RetrieverError(f"{path} is missing; this is not a complete index (create it with `retriever ingest`)")
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            raise StoreBusy(
                f"cannot open {path} ({e}); another process may hold it for writing: open it read-only or stop the writer"
            ) from None
        info = dict(con.execute("SELECT key, value FROM info").fetchall())
        if int(info.get("schema_version", -1)) != SCHEMA_VERSION:
            raise RetrieverError(f"{path}: schema version {info.get('schema_version')} is not {SCHEMA_VERSION}")
        fields = json.loads(info.get("metadata_fields") or "{}")  # none in a store made before typed fields
        return cls(con, path, int(info["dim"]), read_only, fields)

    def close(self) -> None:
        try:
            if not self.read_only:
                self.con.execute("CHECKPOINT").fetchall()
        finally:
            self.con.close()

    # ---------------------------------------------------------------------------------------------- writes
    @contextmanager
    def _transaction(self):
        con = self.con
        con.begin()
        try:
            yield con
            con.commit()
        except BaseException:
            con.rollback()
            raise

    def upsert(self, keys: Sequence[str], rows: Sequence[tuple[str, str | None, str, dict]], vectors: np.ndarray) -> WriteResult:
        """Replace every row whose id or parent_id is in `keys` with `rows` (id, parent_id, text, metadata), in one
        transaction with its changelog entries."""
        import pyarrow as pa

        if len(rows) != len(vectors):
            raise RetrieverError(f"internal: {len(rows)} rows for {len(vectors)} vectors")
        batch = pa.table({
            "id": pa.array([r[0] for r in rows], pa.string()),
            "parent_id": pa.array([r[1] for r in rows], pa.string()),
            "text": pa.array([r[2] for r in rows], pa.string()),
            "metadata": pa.array([json.dumps(r[3], ensure_ascii=False) for r in rows], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors, np.float32).ravel()), self.dim),
        })
        key_list = list(keys)
        columns = typed.column_values(self.fields, [r[0] for r in rows], [r[3] for r in rows]) if self.fields else None
        with self._transaction() as con:
            old = con.execute(
                "SELECT vid, coalesce(parent_id, id) FROM documents WHERE id IN (SELECT unnest(?::VARCHAR[])) "
                "OR parent_id IN (SELECT unnest(?::VARCHAR[]))",
                [key_list, key_list],
            ).fetchall()
            removed = np.array([r[0] for r in old], dtype=np.int64)
            if len(removed):
                con.execute("DELETE FROM documents WHERE vid IN (SELECT unnest(?::BIGINT[]))", [removed.tolist()]).fetchall()
                self._delete_fields(con, removed)
                self._log(con, "del", removed)
            con.register("_batch", batch)
            added = con.execute(
                "INSERT INTO documents SELECT nextval('vid_seq'), id, parent_id, text, metadata::JSON, vector FROM _batch "
                "RETURNING vid, id"
            ).fetchall()
            con.unregister("_batch")
            if columns is not None:
                self._insert_fields(con, rows, added, columns)
            added_vids = np.array([r[0] for r in added], dtype=np.int64)
            seq = self._log(con, "add", added_vids)
        return WriteResult(added_vids, tuple(r[1] for r in added), removed, frozenset(r[1] for r in old), seq)

    def delete(self, keys: Sequence[str]) -> WriteResult:
        key_list = list(keys)
        with self._transaction() as con:
            old = con.execute(
                "DELETE FROM documents WHERE id IN (SELECT unnest(?::VARCHAR[])) OR parent_id IN (SELECT unnest(?::VARCHAR[])) "
                "RETURNING vid, coalesce(parent_id, id)",
                [key_list, key_list],
            ).fetchall()
            removed = np.array([r[0] for r in old], dtype=np.int64)
            self._delete_fields(con, removed)
            seq = self._log(con, "del", removed)
        return WriteResult(np.zeros(0, np.int64), (), removed, frozenset(r[1] for r in old), seq)

    # ------------------------------------------------------------------------------- typed metadata fields
    def _insert_fields(self, con, rows: Sequence[tuple], added: list[tuple], columns: dict[str, list]) -> None:
        """The typed columns of the rows just inserted (`added`: (vid, id)), in the same transaction."""
        position = {r[0]: i for i, r in enumerate(rows)}
        order = [position[i] for _, i in added]
        picked = {c: [values[i] for i in order] for c, values in columns.items()}
        con.register("_fields", typed.arrow_table(self.fields, [v for v, _ in added], picked))
        con.execute(typed.insert_sql(self.fields, "_fields")).fetchall()
        con.unregister("_fields")

    def _delete_fields(self, con, vids: np.ndarray) -> None:
        if self.fields and len(vids):
            con.execute(f"DELETE FROM {typed.TABLE} WHERE vid IN (SELECT unnest(?::BIGINT[]))",
                        [vids.tolist()]).fetchall()

    def add_fields(self, new: dict[str, str], batch: int = 65536) -> int:
        """Declare more metadata fields: every stored row's metadata is checked against the new types and the
        `fields` table rebuilt with the old and new columns, in one transaction (a row of another type refuses
        the whole step, naming it; `documents` is never changed). Returns the rows filled."""
        fields = {**self.fields, **typed.check_fields(new)}
        for name, ftype in new.items():
            if self.fields.get(name, ftype) != ftype:
                raise InputError(f"metadata field {name!r} is declared {self.fields[name]!r}, not {ftype!r}; a "
                                 f"declared field keeps its type (filter it under another name, or re-ingest)")
        with self._transaction() as con:
            cur = con.execute("SELECT vid, id, metadata FROM documents ORDER BY vid")
            vids: list[int] = []
            columns: dict[str, list] = {}
            while chunk := cur.fetchmany(batch):
                part = typed.column_values(fields, [r[1] for r in chunk], [json.loads(r[2]) for r in chunk])
                vids.extend(r[0] for r in chunk)
                for c, values in part.items():
                    columns.setdefault(c, []).extend(values)
            if not vids:
                columns = typed.column_values(fields, [], [])
            con.register("_fields", typed.arrow_table(fields, vids, columns))
            con.execute(f"DROP TABLE IF EXISTS {typed.TABLE}").fetchall()
            for statement in typed.table_sql(fields, "_fields"):
                con.execute(statement).fetchall()
            con.unregister("_fields")
            con.execute("INSERT OR REPLACE INTO info VALUES ('metadata_fields', ?)", [json.dumps(fields)]).fetchall()
        self.fields = fields
        return len(vids)

    def field_problems(self, sample: int = 64) -> list[str]:
        """The typed columns against the JSON they are derived from: the same vids as `documents`, and a sample of
        rows (evenly spread) holding the values their metadata gives. [] when no field is declared."""
        if not self.fields:
            return []
        cur = self._cursor()
        have = cur.execute(f"SELECT vid FROM {typed.TABLE} ORDER BY vid").fetchnumpy()["vid"].astype(np.int64)
        vids = self.vids()
        if not np.array_equal(have, vids):
            return [f"the typed metadata fields hold {len(have)} rows and `documents` {len(vids)}, and their vids differ"]
        if not len(vids):
            return []
        pick = vids[np.unique(np.linspace(0, len(vids) - 1, min(sample, len(vids))).astype(int))].tolist()
        rows = cur.execute("SELECT id, metadata FROM documents WHERE vid IN (SELECT unnest(?::BIGINT[])) ORDER BY vid",
                           [pick]).fetchall()
        want = typed.column_values(self.fields, [r[0] for r in rows], [json.loads(r[1]) for r in rows])
        cols = list(want)
        got = cur.execute(f"SELECT {', '.join(cols)} FROM {typed.TABLE} WHERE vid IN (SELECT unnest(?::BIGINT[])) "
                          f"ORDER BY vid", [pick]).fetchall()
        wrong = [rows[i][0] for i, row in enumerate(got) if list(row) != [want[c][i] for c in cols]]
        return [f"the typed metadata fields of {len(wrong)} of {len(pick)} sampled documents differ from their "
                f"metadata (first: {wrong[0]!r})"] if wrong else []

    def refill_fields(self) -> int:
        """The `fields` table made again from every row's stored metadata (what `rebuild` does); the row count."""
        return self.add_fields(dict(self.fields)) if self.fields else 0

    @staticmethod
    def _log(con, op: str, vids: np.ndarray) -> int:
        if len(vids):
            con.execute(
                "INSERT INTO changelog SELECT nextval('changelog_seq'), ?, unnest(?::BIGINT[])", [op, vids.tolist()]
            ).fetchall()
        return int(con.execute("SELECT coalesce(max(seq), 0) FROM changelog").fetchall()[0][0])

    def prune_changelog(self, upto_seq: int) -> None:
        """Drop entries every kept snapshot already covers; remember the point so replays know their limit."""
        with self._transaction() as con:
            con.execute("DELETE FROM changelog WHERE seq <= ?", [int(upto_seq)]).fetchall()
            con.execute("INSERT OR REPLACE INTO info VALUES ('pruned_upto', ?)", [str(int(upto_seq))]).fetchall()

    def pruned_upto(self) -> int:
        v = self._cursor().execute("SELECT value FROM info WHERE key = 'pruned_upto'").fetchone()
        return 0 if v is None else int(v[0])

    def checkpoint(self) -> None:
        self.con.execute("CHECKPOINT").fetchall()

    # ----------------------------------------------------------------------------------------------- reads
    def _cursor(self):
        return self.con.cursor()

    def count(self) -> int:
        return int(self._cursor().execute("SELECT count(*) FROM documents").fetchone()[0])

    def count_parents(self) -> int:
        return int(self._cursor().execute("SELECT count(DISTINCT coalesce(parent_id, id)) FROM documents").fetchone()[0])

    def last_seq(self) -> int:
        """The newest changelog seq; it never goes back, even when pruning emptied the changelog."""
        return max(int(self._cursor().execute("SELECT coalesce(max(seq), 0) FROM changelog").fetchone()[0]),
                   self.pruned_upto())

    def changes_since(self, seq: int) -> tuple[np.ndarray, np.ndarray]:
        """(added vids, deleted vids) logged after `seq`."""
        rows = self._cursor().execute("SELECT op, vid FROM changelog WHERE seq > ? ORDER BY seq", [int(seq)]).fetchall()
        added = np.array([v for op, v in rows if op == "add"], dtype=np.int64)
        deleted = np.array([v for op, v in rows if op == "del"], dtype=np.int64)
        return added, deleted

    def vids(self) -> np.ndarray:
        return self._cursor().execute("SELECT vid FROM documents ORDER BY vid").fetchnumpy()["vid"].astype(np.int64)

    def vectors(self, vids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(vids, float32 matrix) for the given vids (all when None), in vid order."""
        cur = self._cursor()
        if vids is None:
            rel = cur.sql("SELECT vid, vector FROM documents ORDER BY vid")
        else:
            rel = cur.sql(
                "SELECT vid, vector FROM documents WHERE vid IN (SELECT unnest($vids::BIGINT[])) ORDER BY vid",
                params={"vids": np.asarray(list(vids), np.int64).tolist()},
            )
        table = rel.to_arrow_table()
        return table.column("vid").to_numpy().astype(np.int64), self._matrix(table)

    def _matrix(self, table) -> np.ndarray:
        """The `vector` column of an Arrow table as a contiguous (n, dim) float32 matrix."""
        flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(flat, dtype=np.float32).reshape(table.num_rows, self.dim)

    def document_ids(self) -> set[str]:
        """Every document id as the user knows it (a chunked document by its parent id)."""
        rows = self._cursor().execute("SELECT DISTINCT coalesce(parent_id, id) FROM documents").fetchall()
        return {r[0] for r in rows}

    def ids_and_vectors(self) -> tuple[list[str], np.ndarray]:
        """Every stored id with its vector (for exact-search references)."""
        table = self._cursor().sql("SELECT id, vector FROM documents ORDER BY vid").to_arrow_table()
        return table.column("id").to_pylist(), self._matrix(table)

    def filter_vids(self, sql: str, params: list[Any], filters: dict | None = None) -> np.ndarray:
        """The vids of the rows where `sql` (a compiled filter over `metadata`) holds. Given the filter itself
        (`filters.Where`), it is compiled again over this store's typed columns for the fields it declares."""
        table = "documents"
        if filters is not None and self.fields:
            compiled = compile_filter_for(filters, self.fields)
            sql, params = compiled.sql, compiled.params
            if compiled.reads_fields:
                table = f"documents JOIN {typed.TABLE} USING (vid)" if compiled.reads_json else typed.TABLE
        try:
            res = self._cursor().sql(f"SELECT vid FROM {table} WHERE {sql}", params=params).to_arrow_table()
        except duckdb.Error as e:
            raise InputError(f"the filter could not be evaluated over the metadata ({e}); check its values and types") from None
        return res.column("vid").to_numpy().astype(np.int64, copy=False)

    def fetch(self, vids: Sequence[int]) -> dict[int, Row]:
        if not len(vids):
            return {}
        rows = self._cursor().execute(
            "SELECT vid, id, text, metadata FROM documents WHERE vid IN (SELECT unnest(?::BIGINT[]))",
            [[int(v) for v in vids]],
        ).fetchall()
        return {int(v): Row(int(v), i, t, json.loads(m)) for v, i, t, m in rows}

    def get(self, doc_id: str) -> Row | None:
        r = self._cursor().execute("SELECT vid, id, text, metadata FROM documents WHERE id = ?", [doc_id]).fetchone()
        return None if r is None else Row(int(r[0]), r[1], r[2], json.loads(r[3]))

    def iter_texts(self, batch: int = 4096):
        """(vid, id, parent_id, text, metadata) of every row, in vid order, in batches (for re-embedding)."""
        cur = self._cursor()
        cur.execute("SELECT vid, id, parent_id, text, metadata FROM documents ORDER BY vid")
        while rows := cur.fetchmany(batch):
            yield [(int(v), i, p, t, json.loads(m)) for v, i, p, t, m in rows]

