"""zmlx.patch.suspended: the model runs unpatched inside the block and patched after it, traces kept."""

import mlx.core as mx
import pytest
import zmlx_patch_tiny as tiny
from mlx_lm.models.cache import make_prompt_cache
from zmlx.patch import patch, suspended, unpatch
from zmlx.patch._swap import original_class


def _decode(model, seq):
    cache = make_prompt_cache(model)
    out = [model(seq[:, i : i + 1], cache=cache) for i in range(seq.shape[1])]
    mx.eval(out)
    return out


def _classes(model):
    return {path: type(m) for path, m in model.named_modules()}


@pytest.mark.parametrize("family", ["qwen3_moe", "lfm2_moe", "llama"])
def test_inside_the_block_the_model_is_stock_and_after_it_patched_with_the_same_traces(family):
    model = tiny.build(family, quantized=True)
    seq = tiny.tokens(5, seed=7)
    stock_classes, want = _classes(model), _decode(model, seq)
    result = patch(model, verbose=False)
    patched_classes, patched_out = _classes(model), _decode(model, seq)
    traces = {path: m.__dict__["_zmlx_compiled"] for path, m in model.named_modules()
              if "_zmlx_compiled" in m.__dict__}
    with suspended(model) as n:
        assert n == result.total > 0
        assert _classes(model) == stock_classes, "inside the block every module has its original class"
        inside = _decode(model, seq)
    assert _classes(model) == patched_classes
    again = _decode(model, seq)
    assert {path: m.__dict__.get("_zmlx_compiled") for path, m in model.named_modules()
            if path in traces} == traces, "the traced graphs survive the block (nothing is re-traced)"
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, inside, strict=True))
    assert all(mx.array_equal(a, b).item() for a, b in zip(patched_out, again, strict=True))
    assert unpatch(model) == result.total and _classes(model) == stock_classes


def test_unpatched_model_and_nesting():
    model = tiny.build("qwen3_moe", quantized=True)
    with suspended(model) as n:
        assert n == 0
    patch(model, verbose=False)
    with suspended(model) as outer:
        with suspended(model) as inner:
            assert inner == 0, "nothing is patched inside a suspension"
    assert outer > 0 and any(original_class(m) for _, m in model.named_modules())
    unpatch(model)


def test_an_error_inside_still_re_patches():
    model = tiny.build("mixtral", quantized=True)
    patch(model, verbose=False)
    patched = _classes(model)
    with pytest.raises(RuntimeError, match="boom"), suspended(model):
        raise RuntimeError("boom")
    assert _classes(model) == patched
    unpatch(model)


def test_unpatch_inside_the_block_ends_the_patch_for_good():
    model = tiny.build("qwen3_moe", quantized=True)
    stock = _classes(model)
    result = patch(model, verbose=False)
    _decode(model, tiny.tokens(2))  # builds the traces
    with suspended(model):
        assert unpatch(model) == result.total
    assert _classes(model) == stock
    assert not any(k.startswith("_zmlx") for _, m in model.named_modules() for k in m.__dict__)
    assert patch(model, verbose=False).total == result.total, "and it can be patched again"
    unpatch(model)
