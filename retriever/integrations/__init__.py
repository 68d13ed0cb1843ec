"""Adapters to other frameworks; each needs its extra (e.g. `pip install "rag-retriever[llama-index]"`)."""
