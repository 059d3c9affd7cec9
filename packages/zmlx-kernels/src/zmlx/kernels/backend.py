"""Which backend a stream runs on, and the cache of compiled kernel objects.

Dispatch rule: a Metal GPU stream runs the Metal kernel, a CUDA GPU stream the CUDA kernel, and a CPU stream
(or a machine without a GPU) the pure-MLX reference.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import mlx.core as mx

from .emit import Backend, EmittedSource, KernelSpec, emit

Target = Literal["metal", "cuda", "cpu"]


@functools.cache
@functools.cache
def gpu_backend() -> Backend | None:
    """The GPU backend MLX was built with on this machine, or None (fixed for the process: cached, since every
    op call asks)."""
    if mx.metal.is_available():
        return "metal"
    if mx.cuda.is_available():
        return "cuda"
    return None


def target_for(stream: mx.Stream | mx.Device | None = None) -> Target:
    """The backend that ops on ``stream`` (default: the default device) run on."""
    if stream is None:
        device = mx.default_device()
    elif isinstance(stream, mx.Stream):
        device = stream.device
    else:
        device = stream
    if device.type == mx.DeviceType.gpu:
        gpu = gpu_backend()
        if gpu is not None:
            return gpu
    return "cpu"


_KERNELS: dict[tuple[str, Backend], Any] = {}
_POISON: list[float] = []  # non-empty while poison_outputs() is active


@contextlib.contextmanager
def poison_outputs(value: float = float("nan")):
    """Fill every kernel output with ``value`` before the kernel runs (tests: unwritten elements show up)."""
    _POISON.append(value)
    try:
        yield
    finally:
        _POISON.pop()


def compiled(spec: KernelSpec, backend: Backend) -> Any:
    """The MLX kernel object for ``spec`` on ``backend``, built once per process.

    MLX itself caches each (dtype, template constants) instantiation under this object, so building it is the
    only per-spec cost; a decode step only pays the dictionary lookup.
    """
    key = (spec.kernel_name, backend)
    kern = _KERNELS.get(key)
    if kern is None:
        src = emit(spec, backend)
        names_in = [p.name for p in spec.inputs]
        names_out = [p.name for p in spec.outputs]
        if backend == "metal":
            kern = mx.fast.metal_kernel(
                name=spec.kernel_name, input_names=names_in, output_names=names_out,
                source=src.source, header=src.header, ensure_row_contiguous=True,
            )
        else:
            source, header = by_include(spec, src) or (src.source, src.header)
            kern = mx.fast.cuda_kernel(
                name=spec.kernel_name, input_names=names_in, output_names=names_out,
                source=source, header=header, ensure_row_contiguous=True,
            )
        _KERNELS[key] = kern
    return kern


def _include_dir() -> Path | None:
    for d in (Path.home() / ".cache" / "zmlx" / "cuda", Path(tempfile.gettempdir()) / f"zmlx-cuda-{os.getuid()}"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK) and '"' not in str(d) and "\n" not in str(d):
                return d
        except OSError:
            continue
    return None


def _write_once(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # atomic: a concurrent process reads the old file or the whole new one
    except BaseException:
        os.unlink(tmp)  # no half-written file left behind
        raise


def _shape_params(spec: KernelSpec, source: str) -> list[str]:
    """The ``<input>_shape/_strides/_ndim`` parameters MLX passes for ``source``: those it finds in the text."""
    return [f"{p.name}{sfx}" for p in spec.inputs for sfx in ("_shape", "_strides", "_ndim") if f"{p.name}{sfx}" in source]


def by_include(spec: KernelSpec, src: EmittedSource) -> tuple[str, str] | None:
    """(source, header) that ``#include`` the emitted body and header from files named by their content.

    MLX 0.32.4 rebuilds a custom kernel's whole source on every call and hashes it on every eval: dispatch grows
    ~0.25 us per 1000 characters (a 30000-character kernel 10.0 us, the same text #included 3.2 us; H100,
    tools/gpu/launch_cost.py, 2026-11-27). NVRTC compiles the same text either way. The short source still names
    every ``<input>_shape/_strides/_ndim`` the body uses, since MLX passes those only when its source mentions
    them. None (inline source) where no cache directory is writable.
    """
    d = _include_dir()
    if d is None:
        return None
    digest = hashlib.sha1((src.header + "\0" + src.source).encode()).hexdigest()[:16]
    body, head = d / f"{spec.name}_{digest}.body.cuh", d / f"{spec.name}_{digest}.header.cuh"
    try:
        _write_once(body, src.source)
        _write_once(head, src.header)
    except OSError:
        return None
    used = _shape_params(spec, src.source)
    source = f"  // uses {' '.join(used)}\n#include \"{body}\"\n"
    if _shape_params(spec, source) != used:
        return None  # the path itself would make MLX pass another parameter: keep the text inline
    return source, f'#include "{head}"\n'


# (values, dtype) -> array: the small parameter arrays kernels take (eps, alpha/limit, stand-ins for absent biases)
_CONSTANTS: dict[tuple[tuple[float, ...], mx.Dtype], mx.array] = {}


def constant(values: tuple[float, ...], dtype: mx.Dtype = mx.float32) -> mx.array:
    """A small kernel input built once per (values, dtype): a fresh array per call would cost an allocation and a
    graph input on every decode step."""
    arr = _CONSTANTS.get((values, dtype))
    if arr is None:
        arr = _CONSTANTS[(values, dtype)] = mx.array(values, dtype=dtype)
    return arr


# int32 0..n-1, written by the GPU: the source of per-call positions (RoPE offsets)
_POSITIONS: dict[str, mx.array] = {}
# the views handed out lately, by (start, n): arrays are immutable, so a step's layers can share one
_RECENT: dict[tuple[int, int], mx.array] = {}
_RECENT_MAX = 8


def positions(start: int, n: int = 1) -> mx.array:
    """int32 ``[start, start + n)`` as a slice (a view, no launch) of a table the GPU wrote once.

    A fresh ``mx.array([offset])`` per decode step is written by the host into MLX's CUDA managed memory, and the
    kernel reading it faults the page over to the device (qk_norm_rope measured 118-170 us under ncu, 2026-11-27);
    the table's pages live on the device. It grows by doubling when a position runs past it.
    """
    if start < 0 or n < 1:
        raise ValueError(f"positions: start must be >= 0 and n >= 1, got {start}, {n}")
    view = _RECENT.get((start, n))
    if view is not None:  # every layer of a decode step asks for the same position: one slice, not 48
        return view
    table = _POSITIONS.get("table")
    if table is None or table.shape[0] < start + n:
        table = _POSITIONS["table"] = mx.arange(max(4096, 1 << (start + n - 1).bit_length()), dtype=mx.int32)
    if len(_RECENT) >= _RECENT_MAX:
        _RECENT.clear()
    view = _RECENT[(start, n)] = table[start:start + n]
    return view


def position_input(offset: int | mx.array) -> mx.array:
    """A kernel's int32 ``(1,)`` position input: ``positions(offset)`` for an int, the array itself for an array
    (a traced decode step passes its position in, so one trace serves every step)."""
    if isinstance(offset, mx.array):
        if offset.dtype != mx.int32 or offset.size != 1:
            raise ValueError(f"offset array must be one int32, got {offset.dtype} of shape {offset.shape}")
        return offset.reshape(1)
    return positions(int(offset))


def launch(
    spec: KernelSpec,
    backend: Backend,
    *,
    inputs: Sequence[mx.array],
    output_shapes: Sequence[Sequence[int]],
    output_dtypes: Sequence[mx.Dtype],
    threads: int,
    threadgroup: int,
    blocks_y: int = 1,
    template: Sequence[tuple[str, Any]] = (),
    stream: mx.Stream | None = None,
) -> list[mx.array]:
    """Launch ``spec`` with ``threads`` logical threads in x, rounded up to whole threadgroups."""
    groups = max(1, -(-threads // threadgroup))
    return compiled(spec, backend)(
        inputs=list(inputs),
        output_shapes=[tuple(s) for s in output_shapes],
        output_dtypes=list(output_dtypes),
        grid=(groups * threadgroup, blocks_y, 1),
        threadgroup=(threadgroup, 1, 1),
        template=list(template),
        init_value=_POISON[-1] if _POISON else None,
        stream=stream,
    )
