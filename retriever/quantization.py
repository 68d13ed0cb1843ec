"""Dequantize an onnxruntime dynamic-int8 BERT export into a float32 safetensors checkpoint.

Adapted from the verified recipe in ``shared/reference/dequant_onnx_bert.py``: named quantized tensors map
to their HF names; anonymous MatMul weights are named by the bias Add that follows them.
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np


def _dequant(inits: dict, base: str) -> np.ndarray:
    q = inits[base + "_quantized"].astype(np.float32)
    zero_point = inits[base + "_zero_point"].astype(np.float32)
    scale = inits[base + "_scale"].astype(np.float32)
    return (q - zero_point) * scale


def dequantize_onnx_bert(onnx_path: str | Path, out_path: str | Path) -> list[str]:
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import save_file

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    state: dict[str, np.ndarray] = {}
    for name, value in inits.items():
        if name.endswith(("_quantized", "_scale", "_zero_point")) or name.startswith("onnx::"):
            continue
        if value.dtype == np.float32:
            state[name] = value
    for name in list(inits):
        if name.endswith("_quantized") and not name.startswith("onnx::"):
            base = name[: -len("_quantized")]
            w = _dequant(inits, base)
            state[base] = w if "embeddings" in base else w.T.copy()  # MatMul [in,out] -> Linear [out,in]
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        wq = node.input[1]
        if not (wq.endswith("_quantized") and wq.startswith("onnx::")):
            continue
        frontier, seen, bias = [node.output[0]], set(), None
        for _ in range(6):
            nxt = []
            for t in frontier:
                for c in consumers[t]:
                    if c.name in seen:
                        continue
                    seen.add(c.name)
                    if c.op_type == "Add":
                        bias = next((i for i in c.input if i.endswith(".bias") and i in inits), bias)
                    nxt.extend(c.output)
            if bias:
                break
            frontier = nxt
        if bias is None:
            raise RuntimeError(f"{onnx_path}: no bias found after {wq}; not an int8 BERT export this code knows")
        state[bias[: -len(".bias")] + ".weight"] = _dequant(inits, wq[: -len("_quantized")]).T.copy()
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(out_path))
    return sorted(state)
