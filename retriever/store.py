"""DuckDB, the source of truth: ids, text, metadata, vectors and a changelog, written in ACID transactions."""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import duckdb
import numpy as np

from .errors import InputError, RetrieverError

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
    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, dim: int, read_only: bool):
        self.con = con
        self.path = path
        self.dim = dim
        self.read_only = read_only

    # ------------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: Path, dim: int) -> "Store":
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
        con.execute("CHECKPOINT")
        return cls(con, path, dim, read_only=False)

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
        return cls(con, path, int(info["dim"]), read_only)

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
        with self._transaction() as con:
            old = con.execute(
                "SELECT vid, coalesce(parent_id, id) FROM documents WHERE id IN (SELECT unnest(?::VARCHAR[])) "
                "OR parent_id IN (SELECT unnest(?::VARCHAR[]))",
                [key_list, key_list],
            ).fetchall()
            removed = np.array([r[0] for r in old], dtype=np.int64)
            if len(removed):
                con.execute("DELETE FROM documents WHERE vid IN (SELECT unnest(?::BIGINT[]))", [removed.tolist()]).fetchall()
                self._log(con, "del", removed)
            con.register("_batch", batch)
            added = con.execute(
                "INSERT INTO documents SELECT nextval('vid_seq'), id, parent_id, text, metadata::JSON, vector FROM _batch "
                "RETURNING vid, id"
            ).fetchall()
            con.unregister("_batch")
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
            seq = self._log(con, "del", removed)
        return WriteResult(np.zeros(0, np.int64), (), removed, frozenset(r[1] for r in old), seq)

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

    def filter_vids(self, sql: str, params: list[Any]) -> np.ndarray:
        try:
            res = self._cursor().execute(f"SELECT vid FROM documents WHERE {sql}", params).fetchnumpy()
        except duckdb.Error as e:
            raise InputError(f"the filter could not be evaluated over the metadata ({e}); check its values and types") from None
        return res["vid"].astype(np.int64)

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

