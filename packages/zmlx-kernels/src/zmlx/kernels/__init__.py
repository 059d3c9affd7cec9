"""zmlx.kernels: fused MLX ops written once for Metal and CUDA, with pure-MLX references for the CPU.

Every op dispatches by the stream's device: a Metal GPU runs the Metal kernel, a CUDA GPU the CUDA kernel, and
the CPU the reference, which defines the op's exact semantics (op for op what mlx-lm computes).
"""

from importlib.metadata import PackageNotFoundError, version

from ._compat import check_mlx_version

check_mlx_version()

from .ops.activations import geglu, swiglu, swiglu_oai  # noqa: E402
from .ops.attention import qk_norm_rope  # noqa: E402
from .ops.combine import moe_combine  # noqa: E402
from .ops.conv import short_conv, short_conv_proj  # noqa: E402
from .ops.gather_qmv import gather_qmv  # noqa: E402
from .ops.moe_experts import dense_gate_up, moe_down_combine, moe_gate_up  # noqa: E402
from .ops.norm_router import add_norm_router  # noqa: E402
from .ops.norms import add_rms_norm  # noqa: E402
from .ops.qkv import qkv_norm_rope  # noqa: E402
from .ops.qkv_rope import qkv_rope  # noqa: E402
from .ops.qmv import qmv, qmv_many  # noqa: E402
from .ops.qmv_norm import qmv_many_norm  # noqa: E402
from .ops.qmv_residual import qmv_residual  # noqa: E402
from .ops.rope_qk import rope_qk  # noqa: E402
from .ops.router import quantized_router  # noqa: E402
from .ops.routing import grouped_sigmoid_topk, sigmoid_topk, softmax_topk, topk_softmax  # noqa: E402

try:
    __version__ = version("zmlx-kernels")
except PackageNotFoundError:  # running from a source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "add_norm_router",
    "add_rms_norm",
    "dense_gate_up",
    "gather_qmv",
    "geglu",
    "grouped_sigmoid_topk",
    "moe_combine",
    "moe_down_combine",
    "moe_gate_up",
    "qk_norm_rope",
    "qmv",
    "qmv_many",
    "qmv_many_norm",
    "qmv_residual",
    "qkv_norm_rope",
    "qkv_rope",
    "quantized_router",
    "rope_qk",
    "short_conv",
    "short_conv_proj",
    "sigmoid_topk",
    "softmax_topk",
    "swiglu",
    "swiglu_oai",
    "topk_softmax",
]
