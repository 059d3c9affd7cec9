"""zmlx.bench: benchmark zmlx against unpatched mlx-lm into versioned repro capsules, and read them back.

Command line: ``zmlx-bench run|report|compare|env|schema|kernels`` (``python -m zmlx.bench``). The capsule
schema lives in :mod:`zmlx.bench.capsule`.
"""

from importlib.metadata import PackageNotFoundError, version

from .capsule import SCHEMA_TAG, Capsule, CapsuleError, load_capsule, save_capsule

try:
    __version__ = version("zmlx-bench")
except PackageNotFoundError:  # a source tree without metadata
    __version__ = "0+unknown"

__all__ = ["SCHEMA_TAG", "Capsule", "CapsuleError", "__version__", "load_capsule", "save_capsule"]
