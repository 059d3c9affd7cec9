"""The environment block of a capsule: OS, backend, device, driver, memory and every relevant version.

Every probe is best effort and bounded: a missing tool (git, nvidia-smi, sw_vers) gives ``None`` for its
fields, never an error, so ``zmlx-bench env`` works on any machine a bug report comes from.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
from pathlib import Path

from .capsule import Environment

__all__ = ["collect_environment", "format_environment"]

_GB = 1024**3


def _cmd(args: list[str], cwd: str | os.PathLike[str] | None = None) -> str | None:
    """stdout of a short command, stripped, or None when it is missing, fails or hangs."""
    try:
        out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _distributions(keep) -> dict[str, str]:
    found: dict[str, str] = {}
    for d in md.distributions():
        name = (d.metadata["Name"] or "").lower().replace("_", "-")
        if keep(name):
            found[name] = d.version
    return dict(sorted(found.items()))


def _system_memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / _GB, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _git(repo_dir: Path) -> tuple[str | None, bool | None]:
    top = _cmd(["git", "rev-parse", "--show-toplevel"], cwd=repo_dir)
    # An installed wheel may sit in some other project's git tree: only a zmlx checkout's commit counts.
    if top is None or not (Path(top) / "packages" / "zmlx-bench").is_dir():
        return None, None
    commit = _cmd(["git", "rev-parse", "HEAD"], cwd=top)
    if commit is None:
        return None, None
    # Untracked files (scratch capsules, caches) do not change what was measured; tracked edits do.
    status = _cmd(["git", "status", "--porcelain", "--untracked-files=no"], cwd=top)
    return commit, (None if status is None else bool(status))


def _os_version(system: str) -> str:
    if system == "Darwin":
        return _cmd(["sw_vers", "-productVersion"]) or platform.mac_ver()[0] or platform.release()
    return platform.release()


def _nvidia() -> tuple[str | None, str | None, float | None]:
    """(name, driver, memory GB) of GPU 0 from nvidia-smi, or Nones."""
    out = _cmd(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader,nounits", "--id=0"])
    if not out:
        return None, None, None
    parts = [s.strip() for s in out.splitlines()[0].split(",")]
    if len(parts) < 3:
        return None, None, None
    try:
        mem = round(float(parts[2]) / 1024, 1)  # MiB
    except ValueError:
        mem = None
    return parts[0], parts[1], mem


def _device_info() -> dict[str, object]:
    import mlx.core as mx

    try:
        return dict(mx.device_info())
    except Exception:  # older mlx or an unexpected backend: the block stays partial, never fails
        return {}


def _backend() -> str:
    """zmlx.kernels.backend.target_for() of the default device, restated so that ``zmlx-bench env`` still works
    for a bug report when zmlx.kernels itself fails to import."""
    import mlx.core as mx

    if mx.default_device().type == mx.DeviceType.gpu:
        if mx.metal.is_available():
            return "metal"
        if mx.cuda.is_available():
            return "cuda"
    return "cpu"


def _mlx_env() -> dict[str, str]:
    # MLX's own switches (MLX_CUDA_USE_CUDNN_SDPA, MLX_ENABLE_TF32, ...) change kernels and even determinism
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("MLX_")}


def collect_environment(repo_dir: str | os.PathLike[str] | None = None) -> Environment:
    """Probe this machine. ``repo_dir`` is where git looks for the commit (default: this file's checkout)."""
    system = platform.system()
    backend = _backend()
    info = _device_info()
    device = str(info.get("device_name") or platform.processor() or platform.machine())
    driver = None
    mem_bytes = info.get("total_memory") or info.get("memory_size")
    device_mem = round(int(mem_bytes) / _GB, 1) if isinstance(mem_bytes, int) and mem_bytes > 0 else None
    if backend == "cuda":
        name, driver, smi_mem = _nvidia()
        device = name or device
        device_mem = smi_mem if smi_mem is not None else device_mem
    elif backend == "cpu" and device_mem is None:
        device_mem = _system_memory_gb()
    commit, dirty = _git(Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent)
    return Environment(
        os=system,
        os_version=_os_version(system),
        arch=platform.machine(),
        backend=backend,
        device=device,
        driver=driver,
        device_memory_gb=device_mem,
        system_memory_gb=_system_memory_gb(),
        python=platform.python_version(),
        mlx=_version("mlx") or "unknown",
        mlx_lm=_version("mlx-lm"),
        mlx_builds=_distributions(lambda n: n.startswith("mlx-") and n != "mlx-lm"),
        packages=_distributions(lambda n: n == "zmlx" or n.startswith("zmlx-")),
        git_commit=commit,
        git_dirty=dirty,
        mlx_env=_mlx_env(),
    )


def format_environment(env: Environment) -> str:
    """The block as aligned ``key: value`` lines, for terminals and bug reports."""
    def gb(v: float | None) -> str:
        return "unknown" if v is None else f"{v:g} GB"

    git = "not a git checkout" if env.git_commit is None else (
        env.git_commit[:12] + (" (dirty)" if env.git_dirty else "")
    )
    rows = [
        ("os", f"{env.os} {env.os_version} ({env.arch})"),
        ("backend", env.backend),
        ("device", env.device),
        ("driver", env.driver or "-"),
        ("device memory", gb(env.device_memory_gb)),
        ("system memory", gb(env.system_memory_gb)),
        ("python", env.python),
        ("mlx", env.mlx),
        *((name, ver) for name, ver in env.mlx_builds.items()),
        ("mlx-lm", env.mlx_lm or "not installed"),
        *((name, ver) for name, ver in env.packages.items()),
        ("git", git),
        ("mlx env", " ".join(f"{k}={v}" for k, v in env.mlx_env.items()) or "none recorded"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
