"""Evaluation: labeled query sets, retrieval metrics, latency, release gates and reports (`retriever eval`)."""
from .gate import Gate, load_gate
from .queries import LabeledQuery, load_queries
from .runner import evaluate

__all__ = ["Gate", "LabeledQuery", "evaluate", "load_gate", "load_queries"]
