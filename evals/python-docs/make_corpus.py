"""Make `corpus.jsonl`: Python's own documentation as it ships with the interpreter, no download.

    python evals/python-docs/make_corpus.py          # rewrites evals/python-docs/corpus.jsonl

Two kinds of documents:
  topic-<name>   the language reference sections of `pydoc_data.topics` (what `help("with")` prints), long texts
  module-<name>  a stdlib module's docstring followed by the first paragraph of each public function's and class's
                 docstring (what `help(module)` summarizes), for the modules in MODULES

The texts depend on the interpreter version, so the corpus is committed (made with the Python named in each
record's `python` field) and the labels in `queries.jsonl` refer to it, not to whatever Python runs the eval.
"""
from __future__ import annotations

import importlib
import inspect
import json
import platform
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_WORDS = 6000  # a few module summaries run longer; the tail adds little

MODULES = (
    "abc argparse array ast asyncio base64 bisect bz2 calendar cmath codecs collections collections.abc concurrent.futures "
    "configparser contextlib contextvars copy csv dataclasses datetime decimal difflib dis email enum filecmp fnmatch "
    "fractions ftplib functools gc getopt getpass gettext glob graphlib gzip hashlib heapq hmac html html.parser "
    "http.client http.server imaplib importlib inspect io ipaddress itertools json keyword linecache locale logging "
    "lzma mailbox math mimetypes mmap multiprocessing numbers operator optparse os os.path pathlib pdb pickle pkgutil "
    "platform plistlib poplib pprint profile pstats queue quopri random re reprlib runpy sched secrets select "
    "selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl stat statistics string struct "
    "subprocess sys sysconfig tarfile tempfile textwrap threading time timeit token tokenize tomllib trace traceback "
    "types typing unicodedata unittest unittest.mock urllib.parse urllib.request uuid venv warnings weakref "
    "wsgiref xml.etree.ElementTree xml.dom.minidom zipfile zipimport zlib zoneinfo"
).split()


def first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def module_text(name: str) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mod = importlib.import_module(name)
        except Exception:
            return None
    head = inspect.getdoc(mod) or ""
    public = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    lines = []
    for attr in sorted(set(public)):
        obj = getattr(mod, attr, None)
        if obj is None or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", name) not in (name, f"_{name}", name.replace(".", "_")) and \
                not str(getattr(obj, "__module__", "")).startswith(name.split(".")[0]):
            continue  # re-exported from elsewhere
        para = first_paragraph(inspect.getdoc(obj))
        if para:
            lines.append(f"{attr}: {para}")
    text = f"{name}\n\n{head}\n\n" + "\n".join(lines)
    words = text.split(" ")
    if len(words) > MAX_WORDS:
        text = " ".join(words[:MAX_WORDS])
    return text if len(text.split()) >= 80 else None


def main() -> None:
    from pydoc_data.topics import topics

    python = platform.python_version()
    records = []
    for key in sorted(topics):
        records.append({"id": f"topic-{key}", "title": f"Python language reference: {key}",
                        "text": topics[key].strip(), "kind": "language-reference", "python": python})
    for name in MODULES:
        text = module_text(name)
        if text:
            records.append({"id": f"module-{name}", "title": f"Python module {name}", "text": text,
                            "kind": "module", "python": python})
    out = HERE / "corpus.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    words = sorted(len(r["text"].split()) for r in records)
    print(f"{len(records)} documents, {sum(words):,} words (median {words[len(words) // 2]}, max {words[-1]}), "
          f"{out.stat().st_size / 1e6:.1f} MB -> {out}")


if __name__ == "__main__":
    main()
