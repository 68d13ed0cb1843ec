"""Secure by default (issue 16): `retriever serve` on a non-loopback host needs a bearer token of at least 16 bytes
or the explicit `--allow-unauthenticated`. Real `retriever serve` processes over a five-document real index, and
unit tests of `check_exposure` / `is_loopback` / `server_settings`."""
from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from retriever import Document, Retriever, RetrieverConfig
from retriever.errors import InputError
from retriever.server.exposure import MIN_TOKEN_BYTES, check_exposure, is_loopback, server_settings
from serverproc import Server, call, free_port

RETRIEVER = [sys.executable, "-c", "import sys; from retriever.cli import main; sys.exit(main())"]
TOKEN_ENV = "RETRIEVER_API_TOKEN"


@pytest.fixture(scope="module")
def index(tmp_path_factory, model_cache) -> Path:
    """Five short documents, saved and closed (each test's server opens it itself)."""
    path = tmp_path_factory.mktemp("exposure") / "index"
    with Retriever.create(path, RetrieverConfig()) as r:
        r.upsert([Document("paris", "Paris is the capital of France.", {"lang": "en"}),
                  Document("berlin", "Berlin is the capital of Germany.", {"lang": "en"}),
                  Document("banana", "Bananas are rich in potassium.", {"lang": "en"}),
                  Document("madrid", "Madrid es la capital de España.", {"lang": "es"}),
                  Document("python", "Python is a programming language.", {"lang": "en"})])
    return path


def _env(token: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    return env


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _refused(index: Path, *args: str, token: str | None = None) -> tuple[subprocess.CompletedProcess, int, float]:
    """Run a serve that must not start; returns the finished process, the port it was given, the seconds it ran."""
    port = free_port()
    before = sorted(p.name for p in index.rglob("*"))
    t0 = time.monotonic()
    out = subprocess.run([*RETRIEVER, "serve", str(index), "--port", str(port), *args], cwd=ROOT, env=_env(token),
                         capture_output=True, text=True, timeout=45)
    seconds = time.monotonic() - t0
    assert sorted(p.name for p in index.rglob("*")) == before, "a refused start changed the index directory"
    assert not _listening(port)
    return out, port, seconds


# ------------------------------------------------------------------------------------------ refused starts
@pytest.mark.real
def test_public_host_without_token_refuses_to_start(index):
    out, _, seconds = _refused(index, "--host", "0.0.0.0")
    assert out.returncode == 2, out.stderr
    assert seconds < 60
    assert out.stderr.startswith("error: refusing to serve on '0.0.0.0' without $RETRIEVER_API_TOKEN"), out.stderr
    assert "--allow-unauthenticated" in out.stderr and "secrets.token_urlsafe(32)" in out.stderr
    assert "Traceback" not in out.stderr and "Uvicorn running" not in out.stderr


@pytest.mark.real
def test_token_env_from_config_is_the_one_named(index, tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[server]\nhost = "::"\ntoken_env = "MY_SERVE_TOKEN"\n')
    out, _, _ = _refused(index, "--config", str(cfg), token=secrets.token_urlsafe(24))  # the default name is ignored
    assert out.returncode == 2, out.stderr
    assert "refusing to serve on '::' without $MY_SERVE_TOKEN" in out.stderr, out.stderr


@pytest.mark.real
def test_short_token_is_refused_even_on_loopback(index):
    out, _, _ = _refused(index, token="0123456789")  # 10 bytes, default host 127.0.0.1
    assert out.returncode == 2, out.stderr
    assert "$RETRIEVER_API_TOKEN is 10 bytes" in out.stderr and "at least 16 bytes" in out.stderr, out.stderr
    assert "secrets.token_urlsafe(32)" in out.stderr and "0123456789" not in out.stderr  # never echo the secret


# ------------------------------------------------------------------------------------------ allowed starts
@pytest.mark.real
def test_allow_unauthenticated_starts_on_a_public_host_with_one_warning(index, tmp_path):
    log = tmp_path / "serve.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([*RETRIEVER, "serve", str(index), "--host", "0.0.0.0", "--port", "0",
                                 "--allow-unauthenticated", "--log-level", "info"],
                                cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=logf)
    try:
        port, deadline = None, time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            m = re.search(r"Uvicorn running on http://0\.0\.0\.0:(\d+)", log.read_text(errors="replace"))
            port = int(m.group(1)) if m else None
            time.sleep(0.1)
        assert port, log.read_text(errors="replace")[-3000:]
        status, body = call(port, "GET", "/healthz", timeout=30)
        assert status == 200, body
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    warnings = [line for line in text.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: serving on '0.0.0.0' without $RETRIEVER_API_TOKEN (--allow-unauthenticated): "
                        "writes and admin routes are open to anyone on the network"], text[-3000:]


@pytest.mark.real
def test_public_host_with_a_long_token_guards_writes(index, tmp_path):
    token = secrets.token_urlsafe(24)
    assert len(token.encode()) == 32
    s = Server(index, "--host", "0.0.0.0", env=_env(token), log=tmp_path / "serve.log").start()
    try:
        doc = {"documents": [{"id": "lisbon", "text": "Lisbon is the capital of Portugal.", "metadata": {}}]}
        status, err = s.call("PUT", "/v1/documents", doc)
        assert status == 401 and err["error"]["fields"][0]["field"] == "header.authorization", err
        assert s.call("GET", "/v1/documents/lisbon")[0] == 404
        assert s.call("PUT", "/v1/documents", doc, headers={"Authorization": f"Bearer {token}"})[0] == 200
        status, got = s.call("GET", "/v1/documents/lisbon")
        assert status == 200 and got["text"] == doc["documents"][0]["text"], got
    finally:
        assert s.stop() == 0, s.output()[-3000:]
    assert "warning: " not in s.output()


# ------------------------------------------------------------------------------------------------ unit tests
@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.5.5", "127.255.255.254", "::1", "[::1]", "localhost",
                                  "LOCALHOST", " localhost ", "::ffff:127.0.0.1"])
def test_loopback_forms(host):
    assert is_loopback(host)
    assert check_exposure(host, None) is None  # no token, no flag: starts as before, silently


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "128.0.0.1", "126.255.255.255", "10.0.0.5",
                                  "192.168.1.10", "::2", "fe80::1", "::ffff:10.0.0.1", "example.com",
                                  "localhost.example.com", "my-localhost", ""])
def test_non_loopback_forms(host):
    assert not is_loopback(host)
    with pytest.raises(InputError) as e:
        check_exposure(host, None, "MY_TOKEN")
    assert "$MY_TOKEN" in str(e.value) and "--allow-unauthenticated" in str(e.value)
    assert check_exposure(host, "", "MY_TOKEN", allow_unauthenticated=True).startswith("warning: ")  # "" is unset
    assert check_exposure(host, "x" * MIN_TOKEN_BYTES, "MY_TOKEN") is None
    assert check_exposure(host, "x" * MIN_TOKEN_BYTES, "MY_TOKEN", allow_unauthenticated=True) is None


@pytest.mark.parametrize("token,size", [("x", 1), ("x" * 15, 15), ("é" * 7, 14)])
def test_short_tokens_are_refused_on_every_host(token, size):
    for host in ("127.0.0.1", "0.0.0.0"):
        for allow in (False, True):
            with pytest.raises(InputError, match=rf"^\$MY_TOKEN is {size} bytes; .*at least 16 bytes"):
                check_exposure(host, token, "MY_TOKEN", allow)


def test_token_length_is_counted_in_utf8_bytes():
    assert check_exposure("0.0.0.0", "é" * 8, "T") is None  # 8 characters, 16 bytes
    assert MIN_TOKEN_BYTES == 16


def test_a_non_string_host_is_an_input_error():
    with pytest.raises(InputError, match="host = None"):
        check_exposure(None, None)  # type: ignore[arg-type]


@pytest.mark.real
def test_server_settings_reads_the_stored_config_and_the_overrides(index):
    stored = server_settings(index)
    assert (stored.host, stored.token_env) == ("127.0.0.1", TOKEN_ENV)
    changed = server_settings(index, {"server": {"host": "0.0.0.0", "token_env": "OTHER"}})
    assert (changed.host, changed.token_env) == ("0.0.0.0", "OTHER")
    with pytest.raises(InputError):
        server_settings(index.parent / "missing")
