"""Build, cache and size synthetic checkpoints in mlx-lm's on-disk format.

A checkpoint is built lazily: the model is instantiated with lazy random arrays, cast to bf16 and quantized with
mlx-lm's own ``quantize_model`` (4-bit affine, group 64; the family's ``quant_predicate`` keeps routers at 8
bit), and only then evaluated, one decoder layer at a time. Host memory therefore stays near the quantized size
plus one bf16 layer, which is what lets a GPU host build qwen3-30b-a3b (~17 GB) quickly.

Cache: ``<cache root>/<name>-s<seed>-<hash>``; the hash covers the config, the init scales, the seed and
:data:`BUILDER_VERSION`. A build goes into a hidden temporary folder next to it and is renamed into place only
when complete, so an interrupted build never leaves a folder that looks usable.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .init import apply_synthetic_init, cast_like_convert
from .tokenizer import save_tokenizer
from .zoo import SyntheticSpec

BUILDER_VERSION = "1"
MARKER = "zmlx-synthetic.json"  # written last; a folder without it is not a checkpoint
GROUP_SIZE, BITS = 64, 4
_STALE_TMP_S = 24 * 3600


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/zmlx/synthetic``, else ``~/.cache/zmlx/synthetic``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zmlx" / "synthetic"


def spec_hash(spec: SyntheticSpec, seed: int) -> str:
    blob = json.dumps(
        {"config": spec.config, "gains": asdict(spec.gains), "seed": seed, "builder": BUILDER_VERSION,
         "quant": [GROUP_SIZE, BITS]},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def checkpoint_dir(spec: SyntheticSpec, seed: int, cache_dir: str | os.PathLike[str] | None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    return root / f"{spec.name}-s{seed}-{spec_hash(spec, seed)}"


def _quiet_quantize(model: nn.Module, config: dict) -> tuple[nn.Module, dict]:
    from mlx_lm.utils import quantize_model

    with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints its bits per weight
        return quantize_model(model, config, group_size=GROUP_SIZE, bits=BITS)


def instantiate(spec: SyntheticSpec, seed: int) -> tuple[nn.Module, dict[str, Any], int]:
    """The quantized synthetic model, still lazy (nothing evaluated), its config and its parameter count."""
    from mlx_lm.utils import _get_classes

    config = copy.deepcopy(spec.config)
    model_cls, args_cls = _get_classes(config)
    mx.random.seed(seed)  # any parameter the init keeps at its default is still seeded
    model = model_cls(args_cls.from_dict(config))
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
    apply_synthetic_init(model, spec.gains, seed, spec.num_experts)
    cast_like_convert(model, mx.bfloat16)
    model, config = _quiet_quantize(model, config)
    return model, config, n_params


@dataclass(frozen=True)
class SizeEstimate:
    parameters: int  # logical parameters (unquantized count)
    bytes: int  # bytes of the quantized weights on disk (safetensors payload)


def estimate(spec: SyntheticSpec) -> SizeEstimate:
    """Parameter count and on-disk size, from shapes only (nothing is allocated)."""
    model, _, n_params = instantiate(spec, 0)
    nbytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    return SizeEstimate(parameters=n_params, bytes=nbytes)


def weights_hash(model: nn.Module) -> str:
    """SHA-256 over every parameter's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, v in sorted(tree_flatten(model.parameters()), key=lambda kv: kv[0]):
        h.update(f"{name}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(memoryview(v.view(mx.uint8) if v.dtype == mx.bfloat16 else v).cast("B"))
    return h.hexdigest()


def _evaluate_layerwise(model: nn.Module) -> None:
    # One decoder layer at a time keeps at most one layer's bf16 sources alive.
    layers = getattr(model, "layers", None) or []
    for layer in layers:
        mx.eval(layer.parameters())
    mx.eval(model.parameters())


def write_checkpoint(spec: SyntheticSpec, seed: int, path: Path) -> dict[str, Any]:
    """Build ``spec`` into the (new or empty) folder ``path``; returns the marker's content."""
    from mlx_lm.utils import save_config, save_model

    t0 = time.perf_counter()
    model, config, n_params = instantiate(spec, seed)
    _evaluate_layerwise(model)
    digest = weights_hash(model)
    path.mkdir(parents=True, exist_ok=True)
    save_model(path, model, donate_model=True)
    del model
    eos_id = save_tokenizer(path, int(spec.config["vocab_size"]))
    # transformers' config defaults (e.g. olmoe's eos 50279) would point outside the tiny vocabularies
    config.update(eos_token_id=eos_id, bos_token_id=eos_id, pad_token_id=eos_id)
    save_config(config, path / "config.json")
    marker = {"name": spec.name, "seed": seed, "builder_version": BUILDER_VERSION,
              "spec_hash": spec_hash(spec, seed), "weights_sha256": digest, "parameters": n_params,
              "build_seconds": round(time.perf_counter() - t0, 3)}
    (path / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return marker


def _clean_stale(root: Path, prefix: str) -> None:
    now = time.time()
    for p in root.glob(f".{prefix}*.tmp-*"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)


def ensure_checkpoint(spec: SyntheticSpec, *, seed: int = 0,
                      cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached checkpoint folder of ``spec``, built first if needed (atomically)."""
    final = checkpoint_dir(spec, seed, cache_dir)
    if (final / MARKER).is_file():
        return final
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root, spec.name)
    if final.exists():  # a folder without its marker is not ours to trust: rebuild it
        shutil.rmtree(final, ignore_errors=True)
    tmp = root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_checkpoint(spec, seed, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():  # another process won the race with a complete build
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
