"""The peer pipelines of `bench_speed.py`: the same two models, top-20 retrieved, the cross-encoder keeps 10.

Every pipeline has the same small surface, used by `bench_speed.py` in its own subprocess:

    p = PIPELINES[name](embedder_path, reranker_path)   # loads the models (not timed)
    p.build(docs)                 # a fresh index of these documents (timed for the ingest rate)
    p.retrieve(q)                 # top-20 candidates as parent-document ids in rank order (duplicates kept)
    p.search(q)                   # top-20 -> cross-encoder -> 10, as parent-document ids in rank order
    p.search_batch(qs)            # the same for a batch (the library's batch API, else a loop: `batch_note`)
    p.info()                      # chunk/vector counts and the settings that matter, for the JSON

  bare        sentence-transformers + faiss + CrossEncoder, no framework: SentenceTransformer.encode(whole
              documents, batch_size=64, normalize_embeddings=True) (the model truncates at 256 tokens),
              faiss.IndexFlatIP, top-20, CrossEncoder(path).predict on the 20 (query, document) pairs (model
              defaults: max_length 512, batch_size 32), keep 10. Batched: one encode, one faiss search, one
              predict over all pairs of the batch.
  langchain   langchain-community FAISS (DistanceStrategy.MAX_INNER_PRODUCT over normalized vectors = cosine)
              with HuggingFaceEmbeddings(encode_kwargs={"normalize_embeddings": True}) on the chunks of the usual
              recipe RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200) (FAISS.from_documents
              does not chunk by itself); ContextualCompressionRetriever(CrossEncoderReranker(
              HuggingFaceCrossEncoder(path), top_n=10), vs.as_retriever(k=20)). No batched rerank: a loop
              (Runnable.batch is a thread pool over invoke, which only oversubscribes the 2 cores).
  llama-index VectorStoreIndex on FaissVectorStore(IndexFlatIP(384)), HuggingFaceEmbedding(normalize=True),
              LlamaIndex defaults otherwise (SentenceSplitter 1024/200, metadata embedded as MetadataMode.EMBED),
              as_retriever(similarity_top_k=20) + SentenceTransformerRerank(top_n=10). No batched rerank: a loop.
              (bench_llama_index.py runs this class beside our LlamaIndex adapter.)

Missing packages raise `PeerUnavailable` with the pip command; the caller prints it in the table row.
"""
from __future__ import annotations

import importlib.util

import numpy as np

TOP_K = 20     # retrieved candidates
KEEP = 10      # kept after the cross-encoder
DIM = 384      # all-MiniLM-L6-v2


class PeerUnavailable(RuntimeError):
    """A peer's packages are not installed (the message says what to install)."""


def require(modules: dict[str, str], extra: str) -> None:
    missing = [pkg for mod, pkg in modules.items() if _find_spec_safe(mod) is None]
    if missing:
        raise PeerUnavailable(f'not installed: pip install -c constraints.txt -e ".[{extra}]"  '
                              f"(or: pip install -c constraints.txt {' '.join(missing)})")


def _find_spec_safe(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


class Pipeline:
    """What bench_speed calls besides build/retrieve/search/search_batch/info; the peers keep no caches and no
    files, so these do nothing for them (ours, in bench_speed, overrides them)."""

    batch_is_loop = False  # True: no batch API, bench_speed reports the single-query loop as the batched row
    config_note: str | None = None  # settings worth a line under bench_speed's table

    def prepare(self) -> None:
        """Untimed, before each timed `build`."""

    def clear_caches(self) -> None:
        """Before every timed phase."""

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------- bare

class BarePipeline(Pipeline):
    name = "bare"
    batch_note = "one encode + one faiss search + one CrossEncoder.predict over all pairs of the batch"

    def __init__(self, embedder_path: str, reranker_path: str):
        import faiss
        from sentence_transformers import CrossEncoder, SentenceTransformer

        self._faiss = faiss
        self.st = SentenceTransformer(embedder_path, device="cpu")
        self.ce = CrossEncoder(reranker_path, device="cpu")
        self.index = None
        self.ids: list[str] = []
        self.texts: list[str] = []

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.st.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False).astype(np.float32, copy=False)

    def build(self, docs) -> None:
        self.ids = [d.id for d in docs]
        self.texts = [d.text for d in docs]
        index = self._faiss.IndexFlatIP(DIM)
        index.add(self.encode(self.texts))
        self.index = index

    def candidate_rows(self, queries: list[str]) -> np.ndarray:
        _, rows = self.index.search(self.encode(queries), TOP_K)
        return rows

    def retrieve(self, query: str) -> list[str]:
        return [self.ids[i] for i in self.candidate_rows([query])[0] if i >= 0]

    def search(self, query: str) -> list[str]:
        return self.search_batch([query])[0]

    def search_batch(self, queries: list[str]) -> list[list[str]]:
        rows = [[i for i in r if i >= 0] for r in self.candidate_rows(queries)]
        pairs = [(q, self.texts[i]) for q, r in zip(queries, rows) for i in r]
        scores = np.asarray(self.ce.predict(pairs, show_progress_bar=False), dtype=np.float64)
        out, at = [], 0
        for r in rows:
            s = scores[at:at + len(r)]
            at += len(r)
            order = np.argsort(-s, kind="stable")[:KEEP]
            out.append([self.ids[r[j]] for j in order])
        return out

    def info(self) -> dict:
        return {"vectors": int(self.index.ntotal) if self.index is not None else 0,
                "embedder_max_seq_length": int(self.st.max_seq_length),
                "cross_encoder_max_length": self.ce.max_seq_length,
                "chunking": "none (whole documents, truncated by the model)"}


# ---------------------------------------------------------------------------------------------- langchain

LANGCHAIN_PINS = "langchain-community==0.4.2 langchain-classic==1.0.8 langchain-text-splitters==1.1.3"


class LangChainPipeline(Pipeline):
    name = "langchain"
    batch_note = "loop of ContextualCompressionRetriever.invoke (no batched rerank in LangChain)"
    batch_is_loop = True

    def __init__(self, embedder_path: str, reranker_path: str):
        require({"langchain_community": "langchain-community", "langchain_classic": "langchain-classic",
                 "langchain_text_splitters": "langchain-text-splitters"}, "bench-langchain")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from langchain_classic.retrievers import ContextualCompressionRetriever
            from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
            from langchain_community.cross_encoders import HuggingFaceCrossEncoder
            from langchain_community.embeddings import HuggingFaceEmbeddings
            from langchain_community.vectorstores import FAISS
            from langchain_community.vectorstores.utils import DistanceStrategy
            from langchain_core.documents import Document as LCDocument
            from langchain_text_splitters import RecursiveCharacterTextSplitter
        with warnings.catch_warnings():  # after the imports: langchain_core installs its own warning filters
            warnings.simplefilter("ignore")
            # langchain-huggingface (the non-deprecated home of these two classes) pins huggingface-hub<2,
            # which would downgrade the hub library transformers 5 uses; the community classes are the same code
            self.embeddings = HuggingFaceEmbeddings(model_name=embedder_path, model_kwargs={"device": "cpu"},
                                                    encode_kwargs={"normalize_embeddings": True})
            cross = HuggingFaceCrossEncoder(model_name=reranker_path, model_kwargs={"device": "cpu"})
        self._FAISS, self._strategy, self._LCDocument = FAISS, DistanceStrategy.MAX_INNER_PRODUCT, LCDocument
        self._CCR = ContextualCompressionRetriever
        self.compressor = CrossEncoderReranker(model=cross, top_n=KEEP)
        self.splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
        self.vs = self.base = self.full = None
        self.chunks = 0

    def build(self, docs) -> None:
        self.vector_store(docs)
        self.base = self.vs.as_retriever(search_kwargs={"k": TOP_K})
        self.full = self._CCR(base_compressor=self.compressor, base_retriever=self.base)

    def vector_store(self, docs) -> list:
        """The usual recipe's chunks of `docs` in a LangChain FAISS store (`self.vs`); returns the chunks."""
        lc_docs = [self._LCDocument(page_content=d.text, metadata={**d.metadata, "doc_id": d.id}) for d in docs]
        chunks = self.splitter.split_documents(lc_docs)
        self.chunks = len(chunks)
        self.vs = self._FAISS.from_documents(chunks, self.embeddings, distance_strategy=self._strategy)
        return chunks

    def retrieve(self, query: str) -> list[str]:
        return [d.metadata["doc_id"] for d in self.base.invoke(query)]

    def search(self, query: str) -> list[str]:
        return [d.metadata["doc_id"] for d in self.full.invoke(query)]

    def search_batch(self, queries: list[str]) -> list[list[str]]:
        return [self.search(q) for q in queries]

    def info(self) -> dict:
        return {"vectors": self.chunks, "chunking": "RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)",
                "embeddings": "langchain_community HuggingFaceEmbeddings (normalize_embeddings=True, batch 32)",
                "distance": "MAX_INNER_PRODUCT", "pins": LANGCHAIN_PINS}


# -------------------------------------------------------------------------------------------- llama-index

class LlamaIndexPipeline(Pipeline):
    name = "llama-index"
    batch_note = "loop of retrieve + SentenceTransformerRerank.postprocess_nodes (no batched rerank in LlamaIndex)"
    batch_is_loop = True

    def __init__(self, embedder_path: str, reranker_path: str):
        require({"llama_index.core": "llama-index-core",
                 "llama_index.embeddings.huggingface": "llama-index-embeddings-huggingface",
                 "llama_index.vector_stores.faiss": "llama-index-vector-stores-faiss"}, "bench-llama-index")
        from llama_index.core import Settings
        from llama_index.core.llms import MockLLM
        from llama_index.core.postprocessor import SentenceTransformerRerank
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        Settings.llm = MockLLM()  # nothing may call OpenAI (LlamaIndex's default LLM)
        self.embed = HuggingFaceEmbedding(model_name=embedder_path, normalize=True, device="cpu")
        Settings.embed_model = self.embed
        self.rerank = SentenceTransformerRerank(model=reranker_path, top_n=KEEP, device="cpu")
        self.retriever = None
        self.nodes = 0

    def build(self, docs) -> None:
        self.retriever = self.vector_index(docs).as_retriever(similarity_top_k=TOP_K)

    def vector_index(self, docs):
        """LlamaIndex's VectorStoreIndex of `docs` on a FAISS IndexFlatIP, with its default splitter."""
        import faiss
        from llama_index.core import Document as LIDocument
        from llama_index.core import StorageContext, VectorStoreIndex
        from llama_index.vector_stores.faiss import FaissVectorStore

        flat = faiss.IndexFlatIP(DIM)
        store = FaissVectorStore(faiss_index=flat)
        li_docs = [LIDocument(text=d.text, id_=d.id, metadata=dict(d.metadata)) for d in docs]
        index = VectorStoreIndex.from_documents(li_docs, storage_context=StorageContext.from_defaults(vector_store=store),
                                                embed_model=self.embed)
        self.nodes = int(flat.ntotal)
        return index

    def retrieve_nodes(self, query: str) -> list:
        return self.retriever.retrieve(query)

    def search_nodes(self, query: str) -> list:
        return self.rerank.postprocess_nodes(self.retriever.retrieve(query), query_str=query)

    def retrieve(self, query: str) -> list[str]:
        return [n.node.ref_doc_id for n in self.retrieve_nodes(query)]

    def search(self, query: str) -> list[str]:
        return [n.node.ref_doc_id for n in self.search_nodes(query)]

    def search_batch(self, queries: list[str]) -> list[list[str]]:
        return [self.search(q) for q in queries]

    def info(self) -> dict:
        return {"vectors": self.nodes, "chunking": "LlamaIndex default SentenceSplitter(1024, 200), MetadataMode.EMBED",
                "embed_batch_size": self.embed.embed_batch_size}


# ------------------------------------------------------------------------------------------ hybrid recipes

class LangChainHybridPipeline(LangChainPipeline):
    """LangChain's own hybrid recipe: `EnsembleRetriever` (weighted reciprocal rank fusion) of the FAISS retriever and
    langchain-community's `BM25Retriever` (rank_bm25's BM25Okapi over the same chunks), weights [0.5, 0.5], k=20
    each, then the same CrossEncoderReranker top_n=10."""
    name = "langchain-hybrid"

    def __init__(self, embedder_path: str, reranker_path: str):
        require({"rank_bm25": "rank-bm25"}, "bench-langchain")
        super().__init__(embedder_path, reranker_path)

    def build(self, docs) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from langchain_classic.retrievers import EnsembleRetriever
            from langchain_community.retrievers import BM25Retriever
        chunks = self.vector_store(docs)
        bm25 = BM25Retriever.from_documents(chunks, k=TOP_K)
        self.base = EnsembleRetriever(retrievers=[self.vs.as_retriever(search_kwargs={"k": TOP_K}), bm25],
                                      weights=[0.5, 0.5])
        self.full = self._CCR(base_compressor=self.compressor, base_retriever=self.base)

    def retrieve(self, query: str) -> list[str]:
        return [d.metadata["doc_id"] for d in self.base.invoke(query)][:TOP_K]

    def info(self) -> dict:
        return {**super().info(), "hybrid": "EnsembleRetriever([FAISS k=20, BM25Retriever k=20], weights=[0.5, 0.5])"}


class LlamaIndexHybridPipeline(LlamaIndexPipeline):
    """LlamaIndex's own hybrid recipe: `QueryFusionRetriever` over the vector retriever and `BM25Retriever`
    (llama-index-retrievers-bm25, bm25s with its English stemmer) on the same nodes, mode "reciprocal_rerank",
    num_queries=1 (no LLM query rewriting), similarity_top_k=20, then the same SentenceTransformerRerank."""
    name = "llama-index-hybrid"

    def __init__(self, embedder_path: str, reranker_path: str):
        require({"llama_index.retrievers.bm25": "llama-index-retrievers-bm25"}, "bench-llama-index")
        super().__init__(embedder_path, reranker_path)

    def build(self, docs) -> None:
        from llama_index.core.retrievers import QueryFusionRetriever
        from llama_index.retrievers.bm25 import BM25Retriever

        index = self.vector_index(docs)
        bm25 = BM25Retriever.from_defaults(nodes=list(index.docstore.docs.values()), similarity_top_k=TOP_K)
        self.retriever = QueryFusionRetriever([index.as_retriever(similarity_top_k=TOP_K), bm25],
                                              similarity_top_k=TOP_K, num_queries=1, mode="reciprocal_rerank",
                                              use_async=False)

    def info(self) -> dict:
        return {**super().info(), "hybrid": "QueryFusionRetriever([vector k=20, BM25Retriever k=20], "
                                            "reciprocal_rerank, num_queries=1)"}


PIPELINES = {"bare": BarePipeline, "langchain": LangChainPipeline, "llama-index": LlamaIndexPipeline,
             "langchain-hybrid": LangChainHybridPipeline, "llama-index-hybrid": LlamaIndexHybridPipeline}
