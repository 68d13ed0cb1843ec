"""`BodyLimit`: the ASGI wrapper that refuses oversize request bodies with 413 before the app reads them."""

from fastapi.responses import JSONResponse

from .errors import error_body, request_id

DRAIN_FACTOR = 8  # an oversize body up to 8x the limit is read and dropped before the 413; larger ones are cut off


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 before the app reads them (Content-Length, or counted while
    streaming). Outermost, so the app never sees a truncated body."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        rid = request_id(headers.get(b"x-request-id", b"").decode("latin-1"))
        if declared is not None and not declared.isdigit():
            return await self._refuse(scope, receive, send, rid)
        if declared is not None and int(declared) > self.max_bytes:
            if int(declared) <= DRAIN_FACTOR * self.max_bytes:
                await self._drain(receive)  # most clients send the whole body before they read the answer
            return await self._refuse(scope, receive, send, rid)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                if message.get("more_body"):
                    await self._drain(receive, size)
                return await self._refuse(scope, receive, send, rid)
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _drain(self, receive, size: int = 0) -> None:
        while size <= DRAIN_FACTOR * self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                return

    async def _refuse(self, scope, receive, send, rid: str):
        n = self.max_bytes
        body = error_body(413, "too_large", f"request body over server.max_body_bytes = {n}; send smaller batches",
                          [{"field": "body", "rule": f"at most {n} bytes", "message": "too large"}], rid)
        response = JSONResponse(body, status_code=413, headers={"x-request-id": rid, "connection": "close"})
        await response(scope, receive, send)
