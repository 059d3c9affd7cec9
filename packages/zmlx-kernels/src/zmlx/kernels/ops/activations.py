"""Gated activations: SwiGLU, GeGLU (exact erf and tanh GELU) and gpt-oss's clamped SwiGLU.

References are exactly what mlx-lm runs: ``nn.silu(gate) * up`` under ``mx.compile(shapeless=True)`` and so on.
The kernels evaluate the same op sequence in the array dtype, one rounding per op, through the prelude's
``zm_*`` helpers (MLX's own functors on CUDA), so on a GPU they are bit-identical to the reference there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..backend import constant, launch, target_for
from ..emit import KernelSpec, Param
from ._base import DTYPES, REF_TOLERANCE, CheckCase, OpInfo, RefCheck, dtype_name

# --- references (pure MLX, op for op what mlx-lm computes) ---------------------------------------------


@partial(mx.compile, shapeless=True)
def swiglu_reference(gate: mx.array, up: mx.array) -> mx.array:
    return nn.silu(gate) * up


def geglu_reference(gate: mx.array, up: mx.array, *, approximate: bool) -> mx.array:
    # Gemma MLPs call the compiled nn.gelu / nn.gelu_approx, then multiply eagerly (not one compiled graph:
    # compiling the product too changes the rounding on CUDA).
    return (nn.gelu_approx if approximate else nn.gelu)(gate) * up


@partial(mx.compile, shapeless=True)
def swiglu_oai_reference(gate: mx.array, up: mx.array, alpha: float = 1.702, limit: float = 7.0) -> mx.array:
    # mlx_lm.models.activations.swiglu_oai: clip the gate from above only, add 1 to the linear part.
    gate = mx.minimum(gate, limit)
    up = mx.clip(up, -limit, limit)
    return (up + 1.0) * (gate * mx.sigmoid(alpha * gate))


# --- one kernel body per variant --------------------------------------------------------------------------

_ELEMENTWISE = """\
  int n = 1;
  for (int d = 0; d < gate_ndim; ++d) n *= gate_shape[d];
  const int i = int(zm_bid * zm_bdim + zm_tid);
  if (i >= n) return;
  const T g = gate[i];
  const T u = up[i];
@EXPR@
  out[i] = y;
"""

_EXPR = {
    "swiglu": """\
  // nn.silu(g) * u  ==  (g * sigmoid(g)) * u, rounding to T after each op
  const T y = zm_mul(zm_mul(g, zm_sigmoid(g)), u);""",
    "geglu_erf": """\
  // nn.gelu(g) * u  ==  ((g * (1 + erf(g / sqrt(2)))) / 2) * u
  const T erf_t = zm_erf(zm_div(g, T(1.4142135623730951f)));
  const T gel = zm_div(zm_mul(g, zm_add(T(1.0f), erf_t)), T(2.0f));
  const T y = zm_mul(gel, u);""",
    "geglu_tanh": """\
  // nn.gelu_approx(g) * u  ==  ((0.5 * g) * (1 + tanh(sqrt(2/pi) * (g + 0.044715 * g**3)))) * u
  const T inner = zm_add(g, zm_mul(T(0.044715f), zm_pow(g, T(3.0f))));
  const T th = zm_tanh(zm_mul(T(0.7978845608028654f), inner));
  const T gel = zm_mul(zm_mul(T(0.5f), g), zm_add(T(1.0f), th));
  const T y = zm_mul(gel, u);""",
    "swiglu_oai": """\
  // (clip(u, -limit, limit) + 1) * (gm * sigmoid(alpha * gm)),  gm = min(g, limit)
  const T alpha = T(params[0]);
  const T limit = T(params[1]);
  const T gm = zm_min(g, limit);
  const T um = zm_min(zm_max(u, T(-params[1])), limit);
  const T y = zm_mul(zm_add(um, T(1.0f)), zm_mul(gm, zm_sigmoid(zm_mul(alpha, gm))));""",
}


def _spec(variant: str) -> KernelSpec:
    inputs = (Param("gate"), Param("up"))
    if variant == "swiglu_oai":
        inputs += (Param("params", "float"),)
    return KernelSpec(
        name=variant,
        inputs=inputs,
        outputs=(Param("out"),),
        body=_ELEMENTWISE.replace("@EXPR@", _EXPR[variant]),
        templates=(("T", "float"),),
    )


SPECS: dict[str, KernelSpec] = {v: _spec(v) for v in _EXPR}
_THREADS = 256


def _run(variant: str, gate: mx.array, up: mx.array, extra: tuple[mx.array, ...], stream) -> mx.array:
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"{variant}: gate and up must share shape and dtype, got {gate.shape}/{gate.dtype} "
                         f"and {up.shape}/{up.dtype}")
    out = launch(
        SPECS[variant], target_for(stream), inputs=(gate, up, *extra), output_shapes=[gate.shape],
        output_dtypes=[gate.dtype], threads=gate.size, threadgroup=_THREADS, template=[("T", gate.dtype)],
        stream=stream,
    )
    return out[0]


# --- public ops -------------------------------------------------------------------------------------------


def swiglu(gate: mx.array, up: mx.array, *, stream: mx.Stream | None = None) -> mx.array:
    """``silu(gate) * up``, as mlx-lm's SwiGLU MLPs compute it."""
    if target_for(stream) == "cpu":
        return swiglu_reference(gate, up)
    return _run("swiglu", gate, up, (), stream)


def geglu(gate: mx.array, up: mx.array, *, approximate: bool, stream: mx.Stream | None = None) -> mx.array:
    """``gelu(gate) * up``; ``approximate=False`` is the exact erf GELU (Gemma), True the tanh one (Gemma 2/3)."""
    if target_for(stream) == "cpu":
        return geglu_reference(gate, up, approximate=approximate)
    return _run("geglu_tanh" if approximate else "geglu_erf", gate, up, (), stream)


def swiglu_oai(
    gate: mx.array, up: mx.array, *, alpha: float = 1.702, limit: float = 7.0, stream: mx.Stream | None = None
) -> mx.array:
    """gpt-oss's clamped SwiGLU: ``(clip(up, -limit, limit) + 1) * (g * sigmoid(alpha * g))``, ``g = min(gate, limit)``."""
    if target_for(stream) == "cpu":
        return swiglu_oai_reference(gate, up, alpha, limit)
    return _run("swiglu_oai", gate, up, (constant((alpha, limit)),), stream)


# --- checks -----------------------------------------------------------------------------------------------

# The kernel's template is the dtype alone (sizes are runtime), so shapes cost no compile: one decode row and
# one odd-sized 3-D batch per variant x dtype (12 instantiations in all).
_SHAPES = ((1, 33), (3, 5, 123))


def _inputs(shape, dtype, key) -> tuple[mx.array, mx.array]:
    k1, k2 = mx.random.split(key)
    # Scale 4 reaches the clamp of swiglu_oai (|x| > 7) and the saturated tails of sigmoid/tanh.
    return (4 * mx.random.normal(shape, key=k1)).astype(dtype), (4 * mx.random.normal(shape, key=k2)).astype(dtype)


def _float64(variant: str, g: np.ndarray, u: np.ndarray) -> np.ndarray:
    if variant == "swiglu":
        return g / (1 + np.exp(-g)) * u
    if variant == "geglu_erf":
        return 0.5 * g * (1 + np.vectorize(math.erf)(g / math.sqrt(2))) * u
    if variant == "geglu_tanh":
        return 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3))) * u
    gm = np.minimum(g, 7.0)
    return (np.clip(u, -7.0, 7.0) + 1) * gm / (1 + np.exp(-1.702 * gm))


# variant -> (public op, its reference), both called as f(gate, up)
_VARIANTS: dict[str, tuple[Callable[..., mx.array], Callable[..., mx.array]]] = {
    "swiglu": (swiglu, swiglu_reference),
    "swiglu_oai": (swiglu_oai, swiglu_oai_reference),
    "geglu_erf": (partial(geglu, approximate=False), partial(geglu_reference, approximate=False)),
    "geglu_tanh": (partial(geglu, approximate=True), partial(geglu_reference, approximate=True)),
}


def _ref(variant: str, g: mx.array, u: mx.array) -> mx.array:
    return _VARIANTS[variant][1](g, u)


def _fused(variant: str, g: mx.array, u: mx.array) -> mx.array:
    return _VARIANTS[variant][0](g, u)


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    for variant in SPECS:
        for dtype in DTYPES:
            for shape in _SHAPES:
                key, sub = mx.random.split(key)
                g, u = _inputs(shape, dtype, sub)
                cases.append(CheckCase(
                    op="activations", variant=variant, dtype=dtype_name(dtype),
                    kernel=lambda v=variant, g=g, u=u: [_fused(v, g, u)],
                    reference=lambda v=variant, g=g, u=u: [_ref(v, g, u)],
                    exact=True,
                ))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    out = []
    key = mx.random.key(seed)
    for variant in SPECS:
        for dtype in DTYPES:
            key, sub = mx.random.split(key)
            g, u = _inputs((7, 123), dtype, sub)
            got = np.array(_ref(variant, g, u).astype(mx.float32), dtype=np.float64)
            want = _float64(variant, np.array(g.astype(mx.float32), np.float64), np.array(u.astype(mx.float32), np.float64))
            err = float(np.max(np.abs(got - want) / (np.abs(want) + 1.0)))
            out.append(RefCheck("activations", variant, dtype_name(dtype), err, REF_TOLERANCE[dtype]))
    return out


OP = OpInfo(
    name="activations",
    summary="gated activations: silu(g)*u, gelu(g)*u (erf | tanh), gpt-oss clamped SwiGLU",
    variants=tuple(SPECS),
    reference="zmlx.kernels.ops.activations.{swiglu,geglu,swiglu_oai}_reference",
    kernel_specs=lambda: dict(SPECS),
    check_cases=check_cases,
    reference_checks=reference_checks,
)
