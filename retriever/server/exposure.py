"""Secure by default: whether a server may start on `host` with the bearer token it has (`check_exposure`), and
the `[server]` settings of an index read before it is opened (`server_settings`). Every serving engine calls both
before it opens anything: a refused start has changed nothing on disk."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ..config import ServerConfig
from ..errors import InputError

MIN_TOKEN_BYTES = 16
OPT_OUT = "--allow-unauthenticated"
TOKEN_FIX = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also as ::ffff:127.x.x.x or [::1]) and "localhost"; False for everything else:
    0.0.0.0, ::, other addresses and every other hostname (it may resolve to anything)."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def check_exposure(host: str, token: str | None, token_env: str = "RETRIEVER_API_TOKEN",
                   allow_unauthenticated: bool = False) -> str | None:
    """Refuse (InputError) a token shorter than MIN_TOKEN_BYTES on any host, and a non-loopback `host` without a
    token unless `allow_unauthenticated`. Returns the warning line to print when the start is allowed but the
    writes are open to the network, else None. `token`: the value of `$token_env` (None or "" when unset)."""
    if not isinstance(host, str):
        raise InputError(f"host = {host!r} must be an address or hostname, e.g. 127.0.0.1")
    if token:
        size = len(token.encode("utf-8", "surrogateescape"))
        if size < MIN_TOKEN_BYTES:
            raise InputError(
                f"${token_env} is {size} bytes; the bearer token must be at least {MIN_TOKEN_BYTES} bytes (UTF-8) "
                f"so it cannot be guessed; set a random one: export {token_env}=$({TOKEN_FIX})")
        return None
    if is_loopback(host):
        return None
    if not allow_unauthenticated:
        raise InputError(
            f"refusing to serve on {host!r} without ${token_env}: anyone who can reach this address could upsert, "
            f"delete, reload and publish; set a token of at least {MIN_TOKEN_BYTES} bytes "
            f"(export {token_env}=$({TOKEN_FIX})), bind 127.0.0.1, or pass {OPT_OUT} to accept anonymous writes "
            f"from the network")
    return (f"warning: serving on {host!r} without ${token_env} ({OPT_OUT}): writes and admin routes are open to "
            f"anyone on the network")


def server_settings(path: str | os.PathLike, overrides: dict | None = None) -> ServerConfig:
    """The `[server]` settings `Retriever.open(path, overrides=overrides)` would use (a sharded index: its first
    shard's, as `ShardedRetriever.config`), read from the manifest without opening, locking or forking anything."""
    from ..manifest import Manifest, open_config
    from ..sharding import is_sharded, read_layout

    root = Path(path)
    if is_sharded(root):
        root = root / read_layout(root)["dirs"][0]
    return open_config(root, Manifest.read(root), None, overrides or None).server
