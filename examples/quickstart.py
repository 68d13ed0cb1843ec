"""Create an index, add documents with metadata, search with a filter, with and without rerank.

    .venv/bin/python examples/quickstart.py
"""
import shutil
import tempfile
from pathlib import Path

from retriever import Document, Retriever, RetrieverConfig

DOCS = [
    Document("paris", "Paris is the capital and largest city of France.", {"lang": "en", "year": 2021}),
    Document("echo", "What is the capital of France? A frequently asked question about the capital of France.",
             {"lang": "en", "year": 2023}),
    Document("madrid", "Madrid es la capital de España.", {"lang": "es", "year": 2020}),
    Document("banana", "Bananas are rich in potassium.", {"lang": "en", "year": 2019}),
]

if __name__ == "__main__":
    path = Path(tempfile.mkdtemp()) / "quickstart-index"
    config = RetrieverConfig.from_toml(Path(__file__).resolve().parent.parent / "configs" / "default.toml")
    with Retriever.create(path, config) as r:
        print(r.upsert(DOCS))
        query = "what is the capital of france?"
        for label, hits in [
            ("retrieval only", r.search(query, k=3, rerank=False)),
            ("reranked", r.search(query, k=3)),
            ("english, 2021 or later", r.search(query, k=3, filters={"lang": "en", "year": {"$gte": 2021}})),
        ]:
            print(f"\n{label}:")
            for h in hits:
                rr = "-" if h.rerank_score is None else f"{h.rerank_score:.4f}"
                print(f"  {h.rank}. {h.id:<8} cosine {h.retrieval_score:.3f}  rerank {rr}")
    with Retriever.open(path, read_only=True) as r:
        print("\nreopened:", r.verify())
    shutil.rmtree(path.parent)
