"""HTTP retrieval service for chatbot backends: FastAPI on uvicorn, one :class:`Retriever` per process.

- Searches run on a bounded thread pool (one thread per core), never on the event loop; writes run one at a time on
  their own thread. A search sees a write whole or not at all (the Retriever's readers-writer lock).
- A read-only server opens DuckDB read-only, so several can serve one index while one writer process updates it;
  ``POST /v1/admin/reload`` (or SIGHUP) swaps in the newest generation while requests in flight finish on the old.
- Errors are JSON: ``{"error": {"status", "type", "message", "fields": [{"field", "rule", "message"}]},
  "request_id"}``. Bad input is 4xx naming the field and the rule; an internal failure is 500 with the request id.

    retriever serve DIR --host 127.0.0.1 --port 8000 [--read-only]

Modules: `app` (create_app, build_asgi, serve), `routes`, `service` (Service, Serving), `schemas`, `errors`,
`metrics`, `body_limit`.
"""

from .app import build_asgi, create_app, serve
from .service import Service

__all__ = ["create_app", "build_asgi", "serve", "Service"]
