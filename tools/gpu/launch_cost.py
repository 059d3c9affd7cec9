"""Host cost of one mx.fast.cuda_kernel launch against the length of its generated source, and of an MLX primitive.

  python3 tools/gpu/launch_cost.py   # graph build and dispatch us per call, over chains of 400 independent launches

2026-11-27, H100 host: dispatch 3.1 us for a bare kernel, 10.0 us with 30000 more characters inline, 3.2 us with the
same text #included from a file (zmlx.kernels.backend.by_include): MLX rebuilds and hashes the source every call.
"""

import os
import statistics
import tempfile
import time

import mlx.core as mx

BODY = "  const unsigned i = threadIdx.x; if (i < 32) out[i] = x[i];\n"
ARGS = dict(output_shapes=[(32,)], output_dtypes=[mx.float32], grid=(32, 1, 1), threadgroup=(32, 1, 1))


def chain(f, n=400):
    """Median (graph build, dispatch) us per call over 4 chains of ``n`` calls, after one warm-up chain."""
    builds, disp = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        outs = [f() for _ in range(n)]
        t1 = time.perf_counter()
        mx.async_eval(outs)
        t2 = time.perf_counter()
        mx.eval(outs)
        builds.append((t1 - t0) / n * 1e6)
        disp.append((t2 - t1) / n * 1e6)
    return statistics.median(builds[1:]), statistics.median(disp[1:])


def main() -> None:
    x = mx.random.normal((32,))
    mx.eval(x)
    b, d = chain(lambda: x + 1.0)
    print(f"mx.add: build {b:.2f} dispatch {d:.2f} us")
    for pad in (0, 4000, 12000, 30000):
        src = BODY + ("// " + "p" * 96 + "\n") * (pad // 100)
        k = mx.fast.cuda_kernel(name=f"cost_{pad}", input_names=["x"], output_names=["out"], source=src)
        b, d = chain(lambda k=k: k(inputs=[x], **ARGS)[0])
        print(f"cuda_kernel source +{pad} chars: build {b:.2f} dispatch {d:.2f} us")
        g = mx.compile(lambda a, k=k: k(inputs=[a], **ARGS)[0])
        b, d = chain(lambda g=g: g(x))
        print(f"  traced (mx.compile): build {b:.2f} dispatch {d:.2f} us")
    # the same 30000 characters #included from files: NVRTC reads absolute paths; dispatch no longer sees the text
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "pre.cuh"), "w") as f:
        f.write(("// " + "p" * 96 + "\n") * 300 + "__device__ float twice(float v) { return 2 * v; }\n")
    with open(os.path.join(tmp, "body.cuh"), "w") as f:
        f.write("  const unsigned i = threadIdx.x; if (i < 32) out[i] = twice(x[i]);\n")
    k = mx.fast.cuda_kernel(name="cost_inc", input_names=["x"], output_names=["out"],
                            source=f'#include "{tmp}/body.cuh"\n', header=f'#include "{tmp}/pre.cuh"\n')
    print("include works:", mx.array_equal(k(inputs=[x], **ARGS)[0], 2 * x).item())
    b, d = chain(lambda: k(inputs=[x], **ARGS)[0])
    print(f"cuda_kernel 30000 chars #included: build {b:.2f} dispatch {d:.2f} us")


if __name__ == "__main__":
    main()
