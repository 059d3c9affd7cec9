"""The repro capsule: one JSON file holding the environment, the method and every raw per-run number of a run.

Schema rules (msgspec schema evolution, shared with :mod:`zmlx.validate.record`):

- every record derives from :class:`zmlx.validate.record.Base` (frozen; unknown fields are skipped on decode, so
  a capsule written by a newer zmlx-bench stays readable by an older one) and repeats ``kw_only=True``, because
  msgspec applies ``kw_only`` only to the fields of the class that declares it;
- the top-level :class:`Capsule` is tagged ``"schema": "zmlx.capsule/1"``; the version lives inside the tag
  string (msgspec has no compound tags), and a breaking change means a new tag, ``zmlx.capsule/2``;
- fields are only ever added, always with a default; a field's type never changes.

The per-side numbers (:class:`~zmlx.validate.record.SideResult`) and the token comparison
(:class:`~zmlx.validate.record.Fidelity`) are zmlx-validate's own records, so both tools describe a run the same
way. ``zmlx-bench schema`` publishes the JSON Schema of :class:`Capsule`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import msgspec
from zmlx.validate.record import Base, Fidelity, SideResult, write_json_atomic

SCHEMA_FAMILY = "zmlx.capsule"
SCHEMA_TAG = f"{SCHEMA_FAMILY}/1"

__all__ = [
    "SCHEMA_TAG", "Capsule", "CapsuleError", "Environment", "KernelBench", "KernelTiming", "Methodology",
    "ModelResult", "Summary", "json_schema", "load_capsule", "save_capsule",
]


def _doc(text: str) -> msgspec.Meta:
    """A field description, published in the JSON Schema (``zmlx-bench schema``)."""
    return msgspec.Meta(description=text)


class Environment(Base, kw_only=True):
    """Where the numbers were measured. ``None`` means "could not be determined here", never a guess."""

    os: Annotated[str, _doc('platform.system(): "Darwin" | "Linux" | ...')]
    os_version: Annotated[str, _doc("macOS product version or Linux kernel release")]
    arch: Annotated[str, _doc('"arm64" | "x86_64" | ...')]
    backend: Annotated[str, _doc("metal | cuda | cpu: where ops on the default device run")]
    device: Annotated[str, _doc("GPU or chip name")]
    driver: Annotated[
        str | None, _doc("NVIDIA driver version (CUDA); None on Metal/CPU (os_version covers macOS)")
    ] = None
    device_memory_gb: Annotated[
        float | None, _doc("memory the device can address (unified memory on Apple silicon)")
    ] = None
    system_memory_gb: float | None = None
    python: str
    mlx: str
    mlx_lm: str | None = None
    mlx_builds: Annotated[
        dict[str, str], _doc("mlx's backend wheels: mlx-metal, mlx-cuda-13, mlx-cpu -> version")
    ] = {}
    packages: Annotated[dict[str, str], _doc("every installed zmlx distribution -> version")]
    git_commit: Annotated[str | None, _doc("of the zmlx checkout, None outside a git checkout")] = None
    git_dirty: Annotated[bool | None, _doc("uncommitted changes to tracked files")] = None
    mlx_env: Annotated[dict[str, str], _doc(
        "every MLX_* environment variable of the run: they select MLX's kernels (e.g. MLX_CUDA_USE_CUDNN_SDPA=0: "
        "MLX's own attention instead of cuDNN's on CUDA); zmlx itself reads none. Empty in capsules written "
        "before this field existed")] = {}


class Methodology(Base, kw_only=True):
    """How the numbers were measured: enough to run the same measurement again."""

    prompt_tokens: int
    max_tokens: Annotated[int, _doc("tokens generated per run (greedy; EOS does not stop a benchmark run)")]
    warmup_runs: Annotated[int, _doc("per side, not measured")]
    runs: Annotated[int, _doc("measured runs per side")]
    order: Annotated[
        str, _doc("baseline and patched runs alternate, so drift hits both sides alike")
    ] = "interleaved"
    patch_held: Annotated[bool | None, _doc(
        "True: patched once, in the warm-up; each baseline run ran inside zmlx.patch.suspended (original classes) "
        "and the patched runs reused compile_blocks' traces, as a user who patches once does. None: capsules "
        "written before this field (83afb11, 2026-11-27), which patched and unpatched around every patched run, so each "
        "re-traced its blocks")] = None
    decoding: str = "greedy"
    seed: int
    max_fused_tokens: Annotated[int, _doc("the patch's sequence-length guard: fused path for M <= this")]
    fuse_projections: Annotated[
        bool | str,
        _doc("patch(fuse_projections=...): quantized projections fused at decode; 'auto': patch()'s per-family "
             "default (each result's fuse_projections says what it resolved to; d999eb0's 'auto' fused the "
             "top-k >= 8 MoE experts on CUDA)"),
    ] = False
    compile_blocks: Annotated[
        bool | None, _doc("patch(compile_blocks=...): patched MoE blocks traced by mx.compile (None: older capsule)")
    ] = None
    fuse_router: Annotated[bool, _doc(
        "patch(fuse_router=...): an affine-quantized MoE router's projection inside the routing launch. False in "
        "capsules written before the option existed; three 2026-11-27 capsules (notes '(quantized_router)', "
        "commits 7466a9b and 01a6412) ran it as the default of those commits")] = False
    fuse_qkv: Annotated[bool, _doc(
        "patch(fuse_qkv=...): attention's q/k/v projections inside the q/k norm + RoPE launch")] = False
    fuse_conv_proj: Annotated[bool, _doc(
        "patch(fuse_conv_proj=...): LFM2's conv in_proj inside the short-conv launch")] = False
    patterns: Annotated[
        list[str] | None, _doc("--patterns as given (None: the patch's defaults for each family)")
    ] = None
    exclude: list[str] = []
    prompt: Annotated[
        str, _doc("how the prompt was made (deterministic; see zmlx.bench.run.synth_prompt_ids)")
    ]
    switches: Annotated[dict[str, bool], _doc(
        "zmlx's measurement switches as the run found them ('module.FLAG' -> value; zmlx.patch.measurement): "
        "pattern flags that pick between bit-identical kernel forms, not patch() arguments. Empty in capsules "
        "written before this field; those made by tools/gpu/capsule_switch.py name theirs in the note")] = {}
    bootstrap_resamples: int
    command: Annotated[list[str], _doc("argv of the run")]


class Summary(Base, kw_only=True):
    """Headline numbers of one model. Speedups are patched / baseline (> 1.0 means faster)."""

    decode_speedup: Annotated[float, _doc("median patched decode tok/s / median baseline decode tok/s")]
    prefill_speedup: float
    decode_speedup_ci95: Annotated[tuple[float, float], _doc("percentile bootstrap of the ratio of medians")]
    excludes_one: Annotated[bool, _doc(
        "the interval lies wholly above or below 1.0, a change outside run-to-run noise; never true with fewer "
        "than 5 runs per side (zmlx.bench.stats.MIN_RUNS_FOR_VERDICT)")]
    decode_ms_per_token_saved: Annotated[
        float, _doc("1000/baseline - 1000/patched (medians); negative when slower")
    ]
    peak_memory_change_gb: Annotated[float, _doc("patched - baseline")]


class ModelResult(Base, kw_only=True):
    model: Annotated[str, _doc("the spec as given on the command line (hub id, path or synthetic:NAME)")]
    name: Annotated[str, _doc("what the loader resolved it to")]
    model_type: str = ""
    patterns: Annotated[list[str], _doc("patterns the patch applied")]
    counts: Annotated[dict[str, int], _doc("pattern -> modules patched")]
    fidelity: Fidelity
    baseline: SideResult
    patched: SideResult
    summary: Summary
    load_s: float | None = None
    fuse_projections: Annotated[
        bool | None, _doc("projections fused for this model, the per-family default resolved (None: older capsule)")
    ] = None


class KernelTiming(Base, kw_only=True):
    """One op at one shape: median wall time per call, each call evaluated and synchronised on its own."""

    op: str
    case: Annotated[str, _doc("the model whose shapes it mirrors, e.g. qwen3-30b-a3b")]
    tokens: Annotated[int, _doc("M: 1 is decode, 512 prefill")]
    shapes: Annotated[list[list[int]], _doc("input shapes")]
    dtype: str
    reference_us: float
    fused_us: Annotated[float | None, _doc("None where no GPU kernel can run (CPU backend)")] = None
    speedup: Annotated[float | None, _doc("reference_us / fused_us")] = None
    identical: Annotated[bool | None, _doc("fused output bit-identical to the reference")] = None


class KernelBench(Base, kw_only=True):
    backend: str
    device: str
    repeats: int
    iterations: int
    note: str = ""
    results: list[KernelTiming]


class Capsule(Base, kw_only=True, tag_field="schema", tag=SCHEMA_TAG):
    """A repro capsule: what ``zmlx-bench run`` writes (and ``zmlx-bench kernels --out``)."""

    created_utc: Annotated[str, _doc("ISO 8601, seconds")]
    environment: Environment
    methodology: Annotated[Methodology | None, _doc("None in a kernels-only capsule")] = None
    results: list[ModelResult] = []
    kernels: KernelBench | None = None
    note: str = ""


class CapsuleError(Exception):
    """A capsule could not be read; the message is one line that names the file and the problem."""


def load_capsule(path: str | os.PathLike[str]) -> Capsule:
    """Read and check a capsule, raising :class:`CapsuleError` with a one-line reason on any problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CapsuleError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise CapsuleError(f"{p}: is a directory, not a capsule file") from None
    except OSError as e:
        raise CapsuleError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        raw: Any = msgspec.json.decode(data)
    except msgspec.DecodeError as e:
        raise CapsuleError(f"{p}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CapsuleError(f"{p}: not a zmlx capsule: top level is a JSON {type(raw).__name__}, not an object")
    tag = raw.get("schema")
    if tag is None:
        raise CapsuleError(f"{p}: not a zmlx capsule: no \"schema\" field (expected \"{SCHEMA_TAG}\")")
    if tag != SCHEMA_TAG:
        if isinstance(tag, str) and tag.startswith(SCHEMA_FAMILY + "/"):
            raise CapsuleError(
                f"{p}: unsupported capsule schema version \"{tag}\": this zmlx-bench reads \"{SCHEMA_TAG}\""
            )
        raise CapsuleError(f"{p}: not a zmlx capsule: schema is {tag!r}, expected \"{SCHEMA_TAG}\"")
    try:
        return msgspec.json.decode(data, type=Capsule)
    except msgspec.ValidationError as e:
        raise CapsuleError(f"{p}: invalid capsule: {e}") from None


def save_capsule(path: str | os.PathLike[str], capsule: Capsule) -> None:
    """Write ``capsule`` as indented JSON, atomically (the old file or the whole new one, never half)."""
    write_json_atomic(path, capsule)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Capsule` (what ``zmlx-bench schema`` writes)."""
    return msgspec.json.schema(Capsule)
