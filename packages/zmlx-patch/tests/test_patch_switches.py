"""zmlx.patch.switches: the CLIs' patch() flags, declared once and readable without importing mlx-lm."""

import argparse
import inspect
import subprocess
import sys

from zmlx.patch import patch, switches


def test_defaults_are_patch_signature_defaults():
    params = inspect.signature(patch).parameters
    assert switches.DEFAULTS == {name: params[name].default for name in switches.SWITCHES}
    assert set(switches.SWITCHES) == set(switches.DEFAULTS)


def test_flags_are_none_unless_given_and_given_lists_only_those():
    p = argparse.ArgumentParser()
    switches.add_arguments(p)
    args = p.parse_args(["--fuse-qkv", "--no-compile-blocks"])
    assert switches.given(args) == {"fuse_qkv": True, "compile_blocks": False}
    assert switches.effective(switches.given(args)) == {
        "fuse_projections": "auto", "compile_blocks": False, "fuse_router": False, "fuse_qkv": True,
        "fuse_conv_proj": False}
    helps = {a.dest: a.help for a in p._actions if a.dest in switches.SWITCHES}
    assert "default per model family" in helps["fuse_projections"] and "default on" in helps["compile_blocks"]


def test_reading_the_flags_does_not_import_mlx_lm():
    code = ("import sys, zmlx.patch.switches as s, argparse; s.add_arguments(argparse.ArgumentParser()); "
            "assert 'mlx_lm' not in sys.modules, 'zmlx.patch.switches pulled in mlx-lm'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
