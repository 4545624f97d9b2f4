"""Comparing arrays with Python numbers that may not fit their dtype.

An array library given a Python int outside its array's dtype range wraps it (torch and JAX: 200 as int8
is -56), refuses it (array-api-strict: OverflowError) or rounds it. Here the dtype's range decides such a
comparison statically, so the answer is exact on every backend, under ``jax.jit`` and on Dask.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from ._compat import default_dtype, device, is_jax_namespace

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "!=": operator.ne}  # fmt: skip


def dtype_range(dtype: Any, xp: Any) -> tuple[float, float]:
    """The smallest and largest finite value of a real dtype (integers exactly, as Python ints)."""
    if xp.isdtype(dtype, "integral"):
        info = xp.iinfo(dtype)
        return int(info.min), int(info.max)
    info = xp.finfo(dtype)
    return float(info.min), float(info.max)


def fits(value: int | float, dtype: Any, xp: Any) -> bool:
    lo, hi = dtype_range(dtype, xp)
    return lo <= value <= hi


def compare(x: Any, op: str, value: int | float, *, xp: Any) -> Any:
    """``x <op> value`` for a Python number, exact even where ``value`` lies outside the range of x's dtype.

    There no finite element of x can equal it and every one lies on the same side of it; a floating x
    differs from that only at the infinity on value's side.
    """
    if fits(value, x.dtype, xp):
        if xp.isdtype(x.dtype, "real floating") and isinstance(value, int):
            # JAX and torch refuse ints beyond int64 even against float arrays: compare as a float. An
            # int that no float64 holds exactly equals no element (orderings are within its rounding).
            if float(value) != value and op in ("==", "!="):
                return (xp.zeros_like if op == "==" else xp.ones_like)(x, dtype=xp.bool)
            value = float(value)
        elif isinstance(value, int) and is_jax_namespace(xp) and not -(2**31) <= value < 2**31:
            # JAX with x64 off parses a Python int as int32 however well it fits x (2**31 against uint32
            # labels overflows): pass a 0-D array of x's dtype, uncommitted (no device), so that it joins
            # x wherever x lives, sharded over several devices too.
            value = xp.asarray(value, dtype=x.dtype)
        return _OPS[op](x, value)
    above = value > 0  # value lies above every finite element of x (else below)
    if op in ("==", "!="):
        return (xp.zeros_like if op == "==" else xp.ones_like)(x, dtype=xp.bool)
    on_value_side = (op in ("<", "<=")) != above  # asks whether x lies beyond value, on value's side
    if xp.isdtype(x.dtype, "real floating"):
        # Only the infinity on value's side lies beyond it; every other x (not NaN) lies on the other side.
        if on_value_side:
            return x == (math.inf if above else -math.inf)
        return (x < math.inf) if above else (x > -math.inf)
    return (xp.zeros_like if on_value_side else xp.ones_like)(x, dtype=xp.bool)


def widened_labels(labels: Any, xp: Any) -> Any:
    """Class-index labels in a dtype every backend computes on: integers in the default index dtype when
    it holds every value of theirs (torch has no comparisons for uint16/32/64; narrow types wrap the class
    count), half-precision floats in float32. Others are returned as they are."""
    dtype = labels.dtype
    if xp.isdtype(dtype, "integral"):
        index = default_dtype(xp, "integral", device=device(labels))
        lo, hi = dtype_range(dtype, xp)
        if dtype != index and fits(lo, index, xp) and fits(hi, index, xp):
            return xp.astype(labels, index)
    elif xp.isdtype(dtype, "real floating") and xp.finfo(dtype).bits < 32:
        return xp.astype(labels, xp.float32)
    return labels
