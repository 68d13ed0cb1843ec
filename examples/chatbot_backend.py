"""A minimal chat loop over the retrieval service, standard library only (urllib.request, json); no LLM.

Each turn searches the service, prints the top passages as numbered sources (id, rerank and cosine scores), a
short "grounded answer" (the first sentence of the top hit) and the server's per-stage timings.

Start a server first (the demo index is the bundled fitz-gov subset):

    retriever demo --index demo-index
    retriever serve demo-index --host 127.0.0.1 --port 8000

then:

    python examples/chatbot_backend.py --url http://127.0.0.1:8000
    python examples/chatbot_backend.py --url http://127.0.0.1:8000 --k 5 --filter '{"domain": "technology"}'
    python examples/chatbot_backend.py --url http://127.0.0.1:8000 --once "Why did the server crash?"

Exit codes: 0 done, 1 the server is not reachable (or failed), 2 the server refused the request (4xx, --once).
"""
import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request


class ServiceError(Exception):
    """The service answered with an error body: {"error": {"status", "type", "message", "fields"}, ...}."""

    def __init__(self, status: int, body: dict):
        err = body.get("error") if isinstance(body.get("error"), dict) else {}
        super().__init__(err.get("message") or f"HTTP {status}")
        self.status, self.fields, self.request_id = status, err.get("fields") or [], body.get("request_id", "-")


def call(url: str, method: str = "GET", payload: dict | None = None, timeout: float = 120.0) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:  # a status >= 400: the body is the service's JSON error
        try:
            body = json.loads(e.read() or b"{}")
        except ValueError:
            body = {}
        raise ServiceError(e.code, body if isinstance(body, dict) else {}) from None


def first_sentence(hit: dict, limit: int = 300) -> str:
    text = hit["text"]
    title = hit.get("metadata", {}).get("title")
    if title and text.startswith(title):  # fitz-gov texts start with their title: answer from the body
        text = text[len(title):]
    text = " ".join(text.split())
    sentence = re.split(r"(?<=[.!?])\s+", text, maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[:limit].rsplit(" ", 1)[0] + " ..."


def turn(base: str, question: str, k: int, filters: dict | None) -> None:
    t0 = time.perf_counter()
    out = call(f"{base}/v1/search", "POST", {"query": question, "k": k, "filters": filters, "rerank": True})
    round_trip = (time.perf_counter() - t0) * 1000
    hits = out["hits"]
    if not hits:
        print("No passage matches" + (" this filter." if filters else " (is the index empty?)."))
    else:
        if out.get("rerank_timed_out"):
            print("(the rerank budget ran out: this answer and its sources are in retrieval order, by cosine)")
        print(f"Answer: {first_sentence(hits[0])} [1]")
        print("Sources:")
        for i, h in enumerate(hits, 1):
            rr = "-" if h.get("rerank_score") is None else f"{h['rerank_score']:.3f}"
            snippet = " ".join(h["text"].split())[:110]
            print(f"  [{i}] {h['id']}  rerank {rr}  cosine {h['retrieval_score']:.3f}\n      {snippet}")
    t = out.get("timings_ms", {})
    stages = ", ".join(f"{s} {t[s]:.0f}" for s in ("queue", "embed", "search", "join", "rerank") if s in t)
    print(f"(server {t.get('total', 0):.0f} ms: {stages}; round trip {round_trip:.0f} ms; "
          f"generation {out.get('generation')})")


def json_arg(text: str):
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Chat with the retrieval service (grounded answers, no LLM).")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    p.add_argument("--k", type=int, default=3, help="passages per answer")
    p.add_argument("--filter", type=json_arg, help='metadata filter as JSON, e.g. \'{"domain": "technology"}\'')
    p.add_argument("--once", metavar="QUESTION", help="ask one question and exit")
    args = p.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        p.error(f"--url {args.url}: give the scheme, e.g. http://127.0.0.1:8000")
    base = args.url.rstrip("/")

    def ask(question: str) -> int:
        try:
            turn(base, question, args.k, args.filter)
            return 0
        except ServiceError as e:
            print(f"The service refused the request (HTTP {e.status}, request {e.request_id}): {e}", file=sys.stderr)
            for f in e.fields:
                print(f"  - {f.get('field')}: {f.get('message')} (rule: {f.get('rule')})", file=sys.stderr)
            return 2 if 400 <= e.status < 500 else 1

    try:
        call(f"{base}/healthz", timeout=5)
        if args.once is not None:
            return ask(args.once)
        print(f"Connected to {base}. Ask a question (empty line skips; 'quit' or Ctrl-D ends).")
        while True:
            try:
                question = input("\nyou> ").strip()
            except EOFError:
                print()
                return 0
            if question.lower() in ("quit", "exit"):
                return 0
            if question:
                ask(question)  # a refused request is reported and the loop goes on
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        print(f"Cannot reach the retrieval service at {base} ({reason}).\nStart one first, e.g.:\n"
              f"    retriever demo --index demo-index\n"
              f"    retriever serve demo-index --host 127.0.0.1 --port 8000", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print()
        return 0


if __name__ == "__main__":
    sys.exit(main())
