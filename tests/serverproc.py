"""A real `retriever serve` process on 127.0.0.1 for the HTTP tests, and a small JSON client (standard library)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body=None, *, headers: dict | None = None, raw: bytes | None = None,
         timeout: float = 120) -> tuple[int, dict | str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read().decode()
        try:
            return resp.status, json.loads(payload)
        except json.JSONDecodeError:
            return resp.status, payload
    finally:
        conn.close()


class Server:
    """`retriever serve DIR` in a subprocess; `start()` waits until /readyz answers 200."""

    def __init__(self, index: Path, *args: str, env: dict | None = None, log: Path | None = None):
        self.index, self.args, self.port = Path(index), list(args), free_port()
        self.env = {**os.environ, **(env or {})}
        self.log = log or self.index.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "Server":
        code = "import sys; from retriever.cli import main; sys.exit(main())"
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", str(self.index), "--port", str(self.port), "--log-level", "warning",
             *self.args], cwd=ROOT, env=self.env, stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()[-3000:]}")
            try:
                status, _ = call(self.port, "GET", "/readyz", timeout=5)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout} s: {self.output()[-3000:]}")

    def call(self, method: str, path: str, body=None, **kw):
        return call(self.port, method, path, body, **kw)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM: uvicorn finishes requests in flight, then the index is saved and closed."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)
