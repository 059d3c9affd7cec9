"""tools/gpu/ab_decode.py: configuration names parse to the patch() arguments they stand for."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("ab_decode", Path(__file__).with_name("gpu") / "ab_decode.py")
ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab)


def test_configs_parse():
    assert ab.parse_config("stock") is None
    assert ab.parse_config("moe+qk") == (["moe_mlp", "qk_norm_rope"], {"fuse_projections": False, "compile_blocks": True})
    pats, kw = ab.parse_config("mlp+res+fuse+eager")
    assert pats == ["swiglu_mlp", "geglu_mlp", "residual_norm"]
    assert kw == {"fuse_projections": True, "compile_blocks": False}


def test_default_plus_parts_add_opt_ins_and_patterns_to_the_family_defaults():
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "packages" / "zmlx-patch" / "tests"))
    import zmlx_patch_tiny as tiny

    assert ab.parse_config("default") == (None, {})
    assert ab.parse_config("default+qkv+noprologue") == (None, {"fuse_qkv": True})
    pats, kw = ab.parse_config("default+layer+qkv")
    assert pats == [ab.DEFAULTS, "attention_layer"] and kw == {"fuse_qkv": True}
    model = tiny.build("qwen3_moe")
    assert ab.patterns_for(model, pats) == ["swiglu_mlp", "moe_mlp", "qk_norm_rope", "attention_layer"]
    assert ab.patterns_for(model, ["moe_mlp"]) == ["moe_mlp"] and ab.patterns_for(model, None) is None
    # llama's fewest launches: the dense gate+up launch (fuse_projections) on top of the traced layer's opt-ins
    pats, kw = ab.parse_config("default+layer+qkv+res+fuse")
    assert pats == [ab.DEFAULTS, "attention_layer", "residual_norm"]
    assert kw == {"fuse_qkv": True, "fuse_projections": True}
    assert ab.parse_config("moe+fuse") == (["moe_mlp"], {"fuse_projections": True, "compile_blocks": True})


def test_unknown_part_exits_with_a_message():
    with pytest.raises(SystemExit, match="unknown config part 'turbo'"):
        ab.parse_config("moe+turbo")


def test_too_few_tokens_for_the_untimed_start_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        ab.main(["synthetic:qwen3-moe-tiny", "-m", str(ab.UNTIMED)])
    assert exc.value.code == 2 and "untimed" in capsys.readouterr().err


def test_switch_parts_set_their_flags_and_reset_them_when_absent():
    from zmlx.patch.patterns import _experts

    assert ab.parse_config("default+q4step+noq4core") == (None, {})
    try:
        ab.apply_switches("default+q4step+noq4core")
        assert _experts.Q4_BATCH is False and _experts.QMV_CORE is False
        ab.apply_switches("default")  # every switch back to its default
        assert _experts.Q4_BATCH is True and _experts.QMV_CORE is True
    finally:
        ab.apply_switches("default")


def test_capsule_switch_refuses_an_unknown_switch(capsys):
    cs_spec = importlib.util.spec_from_file_location("capsule_switch",
                                                     Path(__file__).with_name("gpu") / "capsule_switch.py")
    cs = importlib.util.module_from_spec(cs_spec)
    cs_spec.loader.exec_module(cs)
    assert cs.main(["turbo", "--", "synthetic:llama-3-8b"]) == 2
    assert "unknown switch turbo" in capsys.readouterr().err
    assert cs.main(["q4step"]) == 2  # no `--` and run arguments: the usage


def test_every_ab_switch_is_a_recorded_measurement_flag():
    """Capsules record zmlx.patch.measurement's flags; a switch ab_decode can set must be one of them."""
    from zmlx.patch.measurement import FLAGS, measurement_flags

    assert {(module, flag) for module, flag, _ in ab.SWITCHES.values()} <= set(FLAGS)
    flags = measurement_flags()
    assert flags["_experts.QMV_CORE"] is True and flags["_experts.Q4_BATCH"] is True  # today's defaults
    try:
        ab.apply_switches("default+q4step")
        assert measurement_flags()["_experts.Q4_BATCH"] is False
    finally:
        ab.apply_switches("default")
