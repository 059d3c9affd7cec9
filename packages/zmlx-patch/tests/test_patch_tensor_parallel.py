"""Tensor parallel on the CPU: two ranks over mx.distributed's ring backend (mlx.launch), tiny qwen3_moe sharded
with model.shard(); patched and unpatched greedy tokens must be identical and the fused path must have run."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("zmlx_patch_tp_worker.py")


def _launcher() -> str | None:
    exe = Path(sys.executable).with_name("mlx.launch")
    return str(exe) if exe.exists() else shutil.which("mlx.launch")


@pytest.mark.slow
@pytest.mark.skipif(_launcher() is None, reason="mlx.launch (from the mlx package) is not on this machine")
def test_sharded_qwen3_moe_greedy_tokens_identical(tmp_path):
    out = tmp_path / "tp.json"
    port = random.randint(20000, 60000)  # the ring backend listens on port, port+1
    cmd = [_launcher(), "--backend", "ring", "-n", "2", "--starting-port", str(port), "--",
           sys.executable, str(WORKER), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["size"] == 2 and result["sharded"] == [True]
    assert result["counts"] == {"moe_mlp": 2, "qk_norm_rope": 3, "swiglu_mlp": 1}
    assert result["fused_calls"] > 0  # the patched MoE blocks took the fused path on both ranks
    assert result["patched"] == result["base"] and len(result["base"]) == 16
    assert result["restored"] == 6
