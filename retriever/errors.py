"""Errors users can act on. Each message names the input, the rule and the fix."""


class RetrieverError(Exception):
    """Base class: something went wrong that is not the caller's input (CLI exit code 1)."""

    exit_code = 1


class InputError(RetrieverError, ValueError):
    """The caller's input breaks a rule (CLI exit code 2). Nothing stored was changed."""

    exit_code = 2


class ConfigError(InputError):
    """A configuration key or value is wrong."""


class FilterError(InputError):
    """A search filter is malformed or uses an unknown operator."""


class IndexMismatchError(RetrieverError):
    """The index on disk was built with a different embedding model or format."""


class ShardUnavailable(RetrieverError):
    """A shard of a sharded index served on Ray Serve has no replica answering (within `[server]
    shard_timeout_ms`). The router answers from the other shards and marks the result partial."""


class IndexCorruptError(RetrieverError):
    """The index on disk is damaged beyond automatic repair."""


class WriterBusy(RetrieverError):
    """Another process holds the index's writer lock (a server, an ingest): writes, backups and restores of that
    folder go through it, or wait until it stops."""
