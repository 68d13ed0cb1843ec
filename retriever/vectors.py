"""Vector hygiene: every vector that reaches FAISS is float32, C-contiguous, finite and of unit length."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

_ZERO_NORM = 1e-12


def as_unit_vectors(x: Any, dim: int, *, what: str = "vectors") -> np.ndarray:
    """Accept lists, float64 and non-contiguous arrays; return (n, dim) float32 L2-normalized rows.

    Refuses NaN/inf, all-zero rows and a wrong dimension with an InputError naming the row.
    """
    try:
        arr = np.asarray(x)
        if arr.dtype != np.float32:  # float32 input (every embedding, every stored vector) is never widened
            arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers shaped (n, {dim}); got {type(x).__name__} that is not numeric") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        got = arr.shape[-1] if arr.ndim >= 1 and arr.size else arr.shape
        raise InputError(f"{what} have dimension {got}; this index holds {dim}-dimensional vectors")
    # squared norms in float64 without a float64 copy of the matrix (1M x 384 would be 3 GB); a NaN or inf
    # anywhere in a row makes its norm non-finite, so the elementwise check runs only when one is
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))
    if not np.isfinite(norms).all():
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise InputError(f"{what}: row {int(np.argmax(bad))} contains NaN or inf; every value must be finite")
        # finite values whose squares overflow: scale each row by its largest magnitude first
        arr = arr / np.abs(arr).max(axis=1, keepdims=True)
        norms = np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))
    zero = norms <= _ZERO_NORM
    if zero.any():
        raise InputError(f"{what}: row {int(np.argmax(zero))} is all zeros; a zero vector has no direction (cosine is undefined)")
    out = np.empty(arr.shape, dtype=np.float32)
    np.divide(arr, norms[:, None], out=out, casting="unsafe")
    return out
