"""rag-retriever inside LlamaIndex: ingest LlamaIndex Documents, answer through a RetrieverQueryEngine, and score
the retriever with LlamaIndex's RetrieverEvaluator (hit rate, MRR) on labeled queries.

    pip install "rag-retriever[llama-index]"
    .venv/bin/python examples/llama_index_query_engine.py

Runs offline: the LLM is LlamaIndex's MockLLM (swap in a real one to get real answers) and the embedding and
reranking models are ours, resolved from local folders.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from llama_index.core import Document as LIDocument, Settings  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.evaluation import RetrieverEvaluator  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402

from retriever import Retriever, RetrieverConfig  # noqa: E402
from retriever.datasets import fitz_gov_subset  # noqa: E402
from retriever.integrations.llama_index import LlamaIndexRetriever, ingest_nodes  # noqa: E402

# Nothing in this example may call OpenAI (LlamaIndex's default): a mock LLM, and no LlamaIndex embedding model
# (our Retriever embeds the queries itself).
Settings.llm = MockLLM(max_tokens=48)
Settings.embed_model = MockEmbedding(embed_dim=8)

if __name__ == "__main__":
    records, labeled = fitz_gov_subset(300)
    # Any LlamaIndex Documents (or nodes) will do: ids and metadata are kept, long texts are chunked by us.
    li_docs = [LIDocument(text=d.text, id_=d.id, metadata=d.metadata) for d in records]

    path = Path(tempfile.mkdtemp()) / "llama-index-example"
    try:
        with Retriever.create(path, RetrieverConfig()) as r:
            print(ingest_nodes(r, li_docs))

            # top-20 by cosine, reranked by our cross-encoder, 5 kept
            li_retriever = LlamaIndexRetriever(r, k=5, rerank=True)
            engine = RetrieverQueryEngine.from_args(li_retriever, llm=Settings.llm)
            question = labeled[0].query
            response = engine.query(question)
            print(f"\nQ: {question}")
            print(f"A (MockLLM, a placeholder): {str(response)[:200]!r}")
            print("sources:")
            for n in response.source_nodes:
                print(f"  {n.node.node_id:<22} rerank {n.score:.4f}  cosine {n.retrieval_score:.3f}  "
                      f"{n.node.get_content()[:60]!r}")

            # RetrieverEvaluator compares `expected_ids` with the retrieved node ids. A document longer than the
            # embedding model's window is stored as chunks "<doc id>#chunk-<i>" (r.get(doc_id) is then None), so
            # we evaluate on labeled queries whose relevant documents are all stored whole: there a node id is the
            # document id. (For chunked documents, map node.metadata["parent_id"] back to the document instead.)
            whole = [q for q in labeled if all(r.get(doc_id) is not None for doc_id in q.relevant)][:10]
            evaluator = RetrieverEvaluator.from_metric_names(["hit_rate", "mrr"], retriever=li_retriever)
            results = [evaluator.evaluate(query=q.query, expected_ids=list(q.relevant)) for q in whole]
            hit_rate = sum(res.metric_vals_dict["hit_rate"] for res in results) / len(results)
            mrr = sum(res.metric_vals_dict["mrr"] for res in results) / len(results)
            print(f"\nRetrieverEvaluator on {len(results)} labeled queries (top 5): "
                  f"hit rate {hit_rate:.3f}, MRR {mrr:.3f}")
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
