"""Batch-1 host latency of the integer-only artifacts vs the float PyTorch model.

For three MLP sizes (and a CNN) the same architecture runs as: a float PyTorch
``nn.Sequential`` of the same shapes (the baseline), the integer ONNX model in onnxruntime, the
integer TVM library (called from Python through the Relax VM, and timed natively with
``time_evaluator``), and the standalone C build (timed inside its harness with
``clock_gettime``). Everything is single-threaded. Backends are measured side by side in
interleaved rounds (each round times every backend once), and the table shows the median
per-inference latency and the ratio to PyTorch (< 1: faster than the float model).

    python benchmarks/bench_export.py [--rounds 15] [--min-time 0.05] [--no-cnn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before TVM loads its thread pool

import numpy as np  # noqa: E402

from export import c_export, onnx_export, reference, tvm_export  # noqa: E402
from export.qnet import QuantizedNet  # noqa: E402
from inag.arch import ArchSpec, LayerSpec  # noqa: E402
from inag.platform import load_platform  # noqa: E402

SIZES: dict[str, ArchSpec] = {
    "small MLP": ArchSpec("mlp", (8,), 1, (LayerSpec(32, 6), LayerSpec(16, 4))),
    "medium MLP": ArchSpec(
        "mlp", (64,), 10, (LayerSpec(256, 8), LayerSpec(128, 4), LayerSpec(64, 6))
    ),
    "large MLP": ArchSpec.from_summary("1024@8-512@6-256@4-128@8 | head@8", (784,), 10),
    "CNN 1x16x16": ArchSpec.from_summary("c16k3p2@8-c32k3p2@6-64@4 | head@8", (1, 16, 16), 10),
}


def torch_model(net: QuantizedNet):  # noqa: ANN201 - torch is imported lazily
    """Float nn.Sequential of the same shapes (weights dequantized: same function class)."""
    import torch
    from torch import nn

    layers: list[nn.Module] = []
    for u in net.units:
        if u.flatten:
            layers.append(nn.Flatten())
        if u.kind == "dense":
            lin = nn.Linear(*u.weight.shape)
            lin.weight.data = torch.tensor(u.weight.T * u.s_w, dtype=torch.float32)
            layers.append(lin)
        else:
            conv = nn.Conv2d(u.weight.shape[1], u.weight.shape[0], u.kernel, u.stride, u.pad)
            conv.weight.data = torch.tensor(u.weight * u.s_w, dtype=torch.float32)
            layers.append(conv)
        if not u.head:
            layers.append(nn.ReLU())
            if u.pool > 1:
                layers.append(nn.MaxPool2d(u.pool))
    return nn.Sequential(*layers).eval()


def calls_for(fn: Callable[[], object], min_time: float) -> int:
    """Calls per timing sample so one sample lasts about ``min_time`` seconds."""
    fn()
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time / 4 or n >= 1 << 20:
            break
        n *= 4
    return max(1, int(n * min_time / max(t, 1e-9)))


def sample(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def bench_one(name: str, arch: ArchSpec, rounds: int, min_time: float, work: Path) -> dict:
    import torch
    import tvm
    from tvm import relax

    net = QuantizedNet.random(arch, np.random.default_rng(0))
    x_codes = np.random.default_rng(1).integers(-127, 128, (1, *arch.input_shape)).astype(np.int8)
    want = reference.run(net, x_codes)

    # float PyTorch baseline
    model = torch_model(net)
    xt = torch.tensor(x_codes * net.input_scale, dtype=torch.float32)

    def run_torch() -> object:
        with torch.inference_mode():
            return model(xt)

    # onnxruntime (float in, int32 + float out; the int path does the work)
    sess = onnx_export.session(onnx_export.build_onnx(net))
    xf = (x_codes.astype(np.float32) * np.float32(net.input_scale)).astype(np.float32)
    assert np.array_equal(onnx_export.run_codes(sess, net, x_codes), want)

    def run_ort() -> object:
        return sess.run(["y"], {"x": xf})

    # TVM host library for the host platform's target
    target = tvm_export.check_target(load_platform("host_cpu"))
    d = work / name.replace(" ", "_")
    d.mkdir()
    lib_info = tvm_export.export_library(tvm_export.compile_net(net, target), d, "lib", target)
    lib = tvm_export.load_library(d / lib_info["library"])
    dev = tvm.cpu()
    vm = relax.VirtualMachine(lib, dev)
    xv = tvm.runtime.tensor(x_codes, dev)
    assert np.array_equal(vm["main"](xv).numpy(), want)
    main_fn = vm["main"]

    def run_tvm() -> object:
        return main_fn(xv)

    # standalone C, timed inside the harness
    cs, _ = c_export.write_c(net, d)
    exe = c_export.build_host(d, cs.prefix, opt="-O3", extra=("-march=native",))
    assert np.array_equal(c_export.run_host(exe, net, x_codes), want)

    py = {"torch": run_torch, "onnxruntime": run_ort, "tvm (VM call)": run_tvm}
    counts = {k: calls_for(f, min_time) for k, f in py.items()}
    c_iters = max(10, int(min_time / max(c_export.bench_host(exe, 20, 3), 1e-9)))
    te = vm.time_evaluator("main", dev, number=counts["tvm (VM call)"], repeat=1)
    times: dict[str, list[float]] = {k: [] for k in (*py, "tvm (native)", "C (native)")}
    for _ in range(rounds):  # interleaved: drift and load hit every backend alike
        for k, f in py.items():
            times[k].append(sample(f, counts[k]))
        times["tvm (native)"].append(float(te(xv).mean))
        times["C (native)"].append(c_export.bench_host(exe, c_iters, 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    macs = sum(
        int(np.prod(u.weight.shape)) * (int(np.prod(u.conv_shape[1:])) if u.kind == "conv" else 1)
        for u in net.units
    )
    return {"name": name, "summary": arch.summary(), "macs": macs, "median_s": med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per timing sample")
    ap.add_argument("--no-cnn", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    names = [n for n in SIZES if not (args.no_cnn and n.startswith("CNN"))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(bench_one(name, SIZES[name], args.rounds, args.min_time, Path(tmp)))
    cols = ["torch", "onnxruntime", "tvm (VM call)", "tvm (native)", "C (native)"]
    print(
        f"batch-1 latency, median of {args.rounds} interleaved rounds, single thread "
        f"(ratio = backend / float torch)"
    )
    print(f"{'model':<12} {'MACs':>9} " + " ".join(f"{c:>20}" for c in cols))
    for r in rows:
        base = r["median_s"]["torch"]
        cells = [
            f"{r['median_s'][c] * 1e6:9.1f} us ({r['median_s'][c] / base:5.2f}x)" for c in cols
        ]
        print(f"{r['name']:<12} {r['macs']:>9,} " + " ".join(f"{c:>20}" for c in cells))
    for r in rows:
        print(f"  {r['name']}: {r['summary']}")


if __name__ == "__main__":
    main()
