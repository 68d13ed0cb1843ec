"""The Prometheus metrics of one server process (its own registry)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily

from ..searcher import STAGES  # the timed stages of a search, in order

disable_created_metrics()  # no *_created series: counters and histograms only

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """`serving` is the service's `Serving`: the filter-starvation counter is read from the Retriever in use."""

    def __init__(self, serving):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("retriever_http_requests_total", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("retriever_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("retriever_search_stage_seconds", f"Search time per stage ({', '.join(STAGES)}, "
                               "queue = waiting for a search thread)", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.rerank_timeouts = Counter("retriever_rerank_timeouts_total",
                                       "Searches whose rerank budget ran out (answered in retrieval order)", registry=r)
        self.partial = Counter("retriever_partial_results_total",
                               "Searches answered without some shards (serve --engine ray: a shard had no replica)",
                               registry=r)
        self.in_flight = Gauge("retriever_searches_in_flight", "Searches queued or running", registry=r)
        self.reloads = Counter("retriever_reloads_total", "Reloads by result (swapped, unchanged, failed)",
                               ["result"], registry=r)
        self.documents = Gauge("retriever_documents", "Documents in the index being served", registry=r)
        self.generation = Gauge("retriever_generation", "Index generation being served", registry=r)
        self._serving = serving
        self._retired_fallbacks = 0
        r.register(self)  # collect() below: the filter-starvation counter lives on the Retriever

    def retire(self, old) -> None:
        """Keep the starvation count of a Retriever a reload swapped out."""
        self._retired_fallbacks += old.fallbacks

    def collect(self):
        c = CounterMetricFamily("retriever_filter_starvation",
                                "ANN searches that came back with fewer than min(k, matches) hits (a selective filter "
                                "or masked vectors starved them) and were completed by an exact scan")
        c.add_metric([], self._retired_fallbacks + self._serving.current.fallbacks)
        yield c

    def describe(self):
        return []
