"""Host cost of one mx.fast.cuda_kernel launch against its generated source length and an MLX primitive.

  python3 tools/gpu/launch_cost.py    # graph build and dispatch us per call, chains of 400 independent launches
"""
import statistics
import time

import mlx.core as mx

BODY = "  const unsigned i = threadIdx.x; if (i < 32) out[i] = x[i];\n"


def kern(pad: int, include: str = ""):
    src = BODY + ("// " + "p" * 96 + "\n") * (pad // 100)
    return mx.fast.cuda_kernel(name=f"cost_{pad}_{len(include)}", input_names=["x"], output_names=["out"],
                               source=src, header=include)


def chain(f, n=400):
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


x = mx.random.normal((32,))
mx.eval(x)
print(f"mx.add: build {chain(lambda: x + 1.0)[0]:.2f} dispatch {chain(lambda: x + 1.0)[1]:.2f} us")
for pad in (0, 4000, 12000, 30000):
    k = kern(pad)
    f = lambda k=k: k(inputs=[x], output_shapes=[(32,)], output_dtypes=[mx.float32], grid=(32, 1, 1),
                      threadgroup=(32, 1, 1))[0]
    b, d = chain(f)
    print(f"cuda_kernel source +{pad} chars: build {b:.2f} dispatch {d:.2f} us")
    g = mx.compile(lambda a, k=k: k(inputs=[a], output_shapes=[(32,)], output_dtypes=[mx.float32],
                                    grid=(32, 1, 1), threadgroup=(32, 1, 1))[0])
    b, d = chain(lambda g=g: g(x))
    print(f"  compiled: build {b:.2f} dispatch {d:.2f} us")
# the same 30000 characters as an #include of a file: does NVRTC read absolute paths, and what does dispatch cost?
import os, tempfile
d = tempfile.mkdtemp()
open(f"{d}/pre.cuh", "w").write(("// " + "p" * 96 + "\n") * 300 + "__device__ float twice(float v) { return 2 * v; }\n")
open(f"{d}/body.cuh", "w").write("  const unsigned i = threadIdx.x; if (i < 32) out[i] = twice(x[i]);\n")
k = mx.fast.cuda_kernel(name="cost_inc", input_names=["x"], output_names=["out"], source=f'#include "{d}/body.cuh"\n',
                        header=f'#include "{d}/pre.cuh"\n')
f = lambda: k(inputs=[x], output_shapes=[(32,)], output_dtypes=[mx.float32], grid=(32, 1, 1), threadgroup=(32, 1, 1))[0]
print("include works:", bool(mx.all(f() == 2 * x).item()))
b, dd = chain(f)
print(f"cuda_kernel 30000 chars #included: build {b:.2f} dispatch {dd:.2f} us")
