"""One kernel body, two backends.

A kernel is written once in a small dialect (plain C++ plus the ``zm_*`` helpers and ``ZM_*`` macros of
``preludes/``) and emitted for Metal (``mx.fast.metal_kernel``) or CUDA (``mx.fast.cuda_kernel``).
The dialect gives every body these index variables, all unsigned and for the x dimension unless named:

    zm_tid    thread index within the threadgroup / block
    zm_bid    threadgroup / block index in the grid      (zm_bid_y for y)
    zm_bdim   threads per threadgroup / block
    zm_lane   lane within the simdgroup / warp (0..31)
    zm_warp   simdgroup / warp index within the threadgroup

Launches always use whole threadgroups (``grid`` is rounded up), so both backends run the same threads and
every body bounds-checks against its logical size.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

Backend = Literal["metal", "cuda"]
BACKENDS: tuple[Backend, ...] = ("metal", "cuda")

_METAL_INDEX = """\
  const uint zm_tid = thread_position_in_threadgroup.x;
  const uint zm_bid = threadgroup_position_in_grid.x;
  const uint zm_bid_y = threadgroup_position_in_grid.y;
  const uint zm_bdim = threads_per_threadgroup.x;
  const uint zm_lane = thread_index_in_simdgroup;
  const uint zm_warp = simdgroup_index_in_threadgroup;
"""

_CUDA_INDEX = """\
  const unsigned zm_tid = threadIdx.x;
  const unsigned zm_bid = blockIdx.x;
  const unsigned zm_bid_y = blockIdx.y;
  const unsigned zm_bdim = blockDim.x;
  const unsigned zm_lane = threadIdx.x % 32u;
  const unsigned zm_warp = threadIdx.x / 32u;
"""


@dataclass(frozen=True)
class Param:
    """A kernel input or output: its name and its element type in the dialect (``T``, ``float``, ``int32_t``...)."""

    name: str
    ctype: str = "T"


@dataclass(frozen=True)
class KernelSpec:
    """Everything needed to emit one kernel for either backend.

    ``templates`` maps each compile-time parameter to an example value; the example is what the CI syntax
    check instantiates (``"float"`` / ``"bfloat16_t"`` style type names for dtypes, ints or bools otherwise).
    """

    name: str
    inputs: tuple[Param, ...]
    outputs: tuple[Param, ...]
    body: str
    header: str = ""
    templates: tuple[tuple[str, str | int | bool], ...] = field(default_factory=tuple)

    # cached: kernel_name is read on every launch (decode hot path); a frozen spec never changes
    @functools.cached_property
    def digest(self) -> str:
        h = hashlib.sha1((self.header + "\0" + self.body).encode())
        return h.hexdigest()[:10]

    @functools.cached_property
    def kernel_name(self) -> str:
        # Unique per source: MLX caches compiled modules by name (ml-explore/mlx#4275 on older builds).
        return f"zmlx_{self.name}_{self.digest}"


@dataclass(frozen=True)
class EmittedSource:
    backend: Backend
    header: str
    source: str

    def full_text(self) -> str:
        return f"// ---- header ----\n{self.header}\n// ---- body ----\n{self.source}"


def prelude(backend: Backend) -> str:
    fname = {"metal": "metal.h", "cuda": "cuda.cuh"}[backend]
    return resources.files("zmlx.kernels.preludes").joinpath(fname).read_text()


def emit(spec: KernelSpec, backend: Backend) -> EmittedSource:
    """Return the header and body that MLX compiles for ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    header = prelude(backend) + ("\n" + spec.header if spec.header else "")
    index = _METAL_INDEX if backend == "metal" else _CUDA_INDEX
    source = index + spec.body
    return EmittedSource(backend=backend, header=header, source=source)


# --- whole translation units, as MLX generates them around the body (for `emit` and the CI syntax check) ---

_METAL_TYPES = {"float": "float", "float16": "half", "bfloat16": "bfloat16_t", "int32": "int", "uint32": "uint"}
_CUDA_TYPES = {"float": "float", "float16": "__half", "bfloat16": "__nv_bfloat16", "int32": "int32_t",
               "uint32": "uint32_t"}
_METAL_ATTRS = (
    ("uint3", "thread_position_in_threadgroup"),
    ("uint3", "threadgroup_position_in_grid"),
    ("uint3", "threads_per_threadgroup"),
    ("uint", "thread_index_in_simdgroup"),
    ("uint", "simdgroup_index_in_threadgroup"),
)


def _ctype(ctype: str, templates: dict[str, str | int | bool], table: dict[str, str]) -> str:
    """Resolve a Param ctype: a template dtype name (``T``) to its example type, else the type itself."""
    if _array_typed(ctype, templates):
        return "float"
    value = templates.get(ctype, ctype)
    return table.get(str(value), str(value))


_C_TYPES = {"float", "int", "uint", "bool", "int32_t", "uint32_t", "int64_t", "uint8_t", "half", "bfloat16_t"}


def _array_typed(ctype: str, tmpl: dict[str, str | int | bool]) -> bool:
    # A ctype that is neither a template nor a C type names "the dtype of the array passed in" (MLX generates the
    # pointer type from the input); emit it with the example type float.
    return ctype not in tmpl and ctype not in _C_TYPES and ctype not in _METAL_TYPES


def _metal_param_type(ctype: str, tmpl: dict[str, str | int | bool], table: dict[str, str]) -> str:
    # Metal keeps template type parameters (T) symbolic in the signature.
    if _array_typed(ctype, tmpl):
        return "float"
    return ctype if ctype in tmpl else table.get(ctype, ctype)


def full_source(spec: KernelSpec, backend: Backend, templates: dict[str, str | int | bool] | None = None) -> str:
    """The complete kernel source MLX would compile for ``spec``, instantiated with ``templates``.

    Mirrors MLX's generators (mlx/backend/metal/custom_kernel.cpp, mlx/backend/cuda/custom_kernel.cpp):
    shape/stride/ndim parameters appear only when the body names them. Template values default to the spec's
    examples. Metal keeps ``T`` a real template; CUDA turns templates into ``using``/``constexpr`` lines.
    """
    tmpl = dict(spec.templates)
    tmpl.update(templates or {})
    src = emit(spec, backend)
    table = _METAL_TYPES if backend == "metal" else _CUDA_TYPES
    params: list[str] = []

    def pointer(p: Param, const: bool) -> str:
        # one array parameter as MLX declares it: Metal buffers carry an address space and a slot
        if backend == "metal":
            return (f"{'const ' if const else ''}device {_metal_param_type(p.ctype, tmpl, table)}* {p.name} "
                    f"[[buffer({len(params)})]]")
        return f"{'const ' if const else ''}{_ctype(p.ctype, tmpl, table)}* {p.name}"

    for p in spec.inputs:
        params.append(pointer(p, const=True))
        for suffix, mty, cty in (("_shape", "const constant int*", "const __grid_constant__ Shape"),
                                 ("_strides", "const constant int64_t*", "const __grid_constant__ Strides"),
                                 ("_ndim", "const constant int&", "const __grid_constant__ int")):
            if f"{p.name}{suffix}" in src.source:
                params.append(f"{mty} {p.name}{suffix} [[buffer({len(params)})]]" if backend == "metal"
                              else f"{cty} {p.name}{suffix}")
    params.extend(pointer(p, const=False) for p in spec.outputs)
    name = f"custom_kernel_{spec.kernel_name}"
    if backend == "metal":
        params += [f"{ty} {attr} [[{attr}]]" for ty, attr in _METAL_ATTRS]
        tparams = ", ".join(
            f"{'bool' if isinstance(v, bool) else 'int' if isinstance(v, int) else 'typename'} {k}" for k, v in tmpl.items()
        )
        targs = ", ".join(
            ("true" if v else "false") if isinstance(v, bool) else str(v) if isinstance(v, int) else table.get(str(v), str(v))
            for v in tmpl.values()
        )
        sig = ",\n    ".join(params)
        return (
            "#include <metal_stdlib>\nusing namespace metal;\n"
            f"{src.header}\n"
            f"template <{tparams}>\n[[kernel]] void {name}(\n    {sig}) {{\n{src.source}}}\n\n"
            f'template [[host_name("{name}")]] [[kernel]] decltype({name}<{targs}>) {name}<{targs}>;\n'
        )
    consts = "".join(
        f"  constexpr bool {k} = {'true' if v else 'false'};\n" if isinstance(v, bool)
        else f"  constexpr int {k} = {v};\n" if isinstance(v, int)
        else f"  using {k} = {table.get(str(v), str(v))};\n"
        for k, v in tmpl.items()
    )
    sig = ",\n    ".join(params)
    return (
        '#include "mlx/backend/cuda/device/utils.cuh"\n#include <cooperative_groups.h>\n'
        f"{src.header}\n"
        "namespace mlx::core::cu {\nnamespace cg = cooperative_groups;\n"
        f"__global__ void {name}(\n    {sig}) {{\n{consts}{src.source}}}\n}} // namespace mlx::core::cu\n"
    )
