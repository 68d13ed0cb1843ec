"""`retriever backup` and `retriever restore` (verified backups, `backup.py`); `retriever verify DEST` checks a
backup in `cli.cmd_verify`. Bad input raises InputError, which `cli.main` prints (exit 2)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import InputError, RetrieverError, WriterBusy


def add_backup_parsers(sub) -> None:
    s = sub.add_parser("backup", help="a verified, consistent copy of an index, safe while it is served and written")
    s.add_argument("index", metavar="DIR")
    s.add_argument("dest", metavar="DEST", help="a new (or empty) folder outside DIR")
    s.add_argument("--url", metavar="URL",
                   help="the server writing DIR (e.g. http://127.0.0.1:8000): it takes the backup under its writer "
                        "lock (POST /v1/admin/backup, token from $RETRIEVER_API_TOKEN); DEST is then a path on "
                        "its machine, directly inside the server's [server] backup_dir. Needed while a server writes DIR")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("restore", help="restore a backup into an index directory, verified before it is in place")
    s.add_argument("backup", metavar="DEST", help="a backup folder made by `retriever backup`")
    s.add_argument("index", metavar="DIR", help="the index directory to restore into (new or empty)")
    s.add_argument("--force", action="store_true", help="replace a non-empty DIR (never one a process is writing)")
    s.add_argument("--json", action="store_true")


def cmd_backup(args) -> int:
    from . import Retriever

    if args.url:
        report = _backup_through(args.url, str(Path(args.dest).absolute()))
    else:
        try:
            r = Retriever.open(args.index)
        except WriterBusy as e:
            raise InputError(f"{e}. If that process is `retriever serve`, take the backup through it: retriever "
                             f"backup {args.index} {args.dest} --url http://HOST:PORT (it copies under its writer "
                             f"lock); or stop it first") from None
        with r:
            report = r.backup(args.dest).to_dict()
    return _emit(report, args.json, f"backed up {report['documents']} documents ({report['files']} files, "
                 f"{report['bytes']:,} bytes) to {report['dest']} in {report['seconds']:.1f}s; check it with "
                 f"`retriever verify {report['dest']}`")


def _emit(out: dict, as_json: bool, text: str) -> int:
    print(json.dumps(out, indent=2) if as_json else text)
    return 0


def _backup_through(url: str, dest: str) -> dict:
    """POST /v1/admin/backup to the server writing the index."""
    import urllib.error
    import urllib.request

    headers = {"content-type": "application/json"}
    if os.environ.get("RETRIEVER_API_TOKEN"):
        headers["authorization"] = f"Bearer {os.environ['RETRIEVER_API_TOKEN']}"
    req = urllib.request.Request(url.rstrip("/") + "/v1/admin/backup", data=json.dumps({"dest": dest}).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=3600) as resp:
            return json.loads(resp.read())["backup"]
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(e)
        cls = InputError if 400 <= e.code < 500 else RetrieverError
        raise cls(f"--url {url}: the server refused the backup (HTTP {e.code}): {message}") from None
    except (urllib.error.URLError, OSError) as e:
        raise InputError(f"--url {url}: no server answers there ({e}); pass the address `retriever serve` "
                         f"printed") from None


def cmd_restore(args) -> int:
    from .backup import restore_backup

    out = restore_backup(args.backup, args.index, force=args.force)
    return _emit(out, args.json, f"restored {out['documents']} documents from {out['from']} (taken "
                 f"{out['created_at']}) into {out['restored']}; verified: FAISS, lexical arm and ids match DuckDB")
