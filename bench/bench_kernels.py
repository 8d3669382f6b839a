"""Blur and resampling ops: Triton kernels against the torch reference, in GB/s.

Run from the repository root:

    python bench/bench_kernels.py                          # CUDA if present, else CPU
    python bench/bench_kernels.py --device cpu --shape 16 3 64 64 --repeats 10

On CUDA both paths of every ``fdm::`` op run (``backend="torch"`` and ``backend="triton"``) in
fp32, fp16 and bf16; on CPU only the torch path runs (the Triton interpreter is a correctness
tool, not a speed one). GB/s counts the ideal traffic, one read of the input and one write of
the output, over the median time of ``--repeats`` timed runs of ``--inner`` calls each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import cpu_model

from fdm_models import ops


def gaussian(length: int) -> torch.Tensor:
    taps = torch.arange(length, dtype=torch.float32) - length // 2
    kernel = torch.exp(-0.5 * (taps / (length / 4)) ** 2)
    return kernel / kernel.sum()


def cases() -> dict[str, Callable[[torch.Tensor, str], torch.Tensor]]:
    g5, g13 = gaussian(5), gaussian(13)
    return {
        "blur gaussian k=5": lambda x, b: ops.blur_separable(x, g5, backend=b),
        "blur gaussian k=13": lambda x, b: ops.blur_separable(x, g13, backend=b),
        "downsample_mean x2": lambda x, b: ops.downsample_mean(x, 2, backend=b),
        "upsample_nearest x2": lambda x, b: ops.upsample_nearest(x, 2, backend=b),
    }


def median_seconds(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int, inner: int):
    fn()  # compile / warm caches
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", type=int, nargs=4, default=None, metavar=("B", "C", "H", "W"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", type=int, default=None, help="calls per timed run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    shape = tuple(args.shape or ((64, 3, 256, 256) if on_cuda else (16, 3, 64, 64)))
    inner = args.inner or (20 if on_cuda else 3)
    backends = ["torch", "triton"] if on_cuda and ops.triton_available() else ["torch"]
    dtypes = [torch.float32, torch.float16, torch.bfloat16] if on_cuda else [torch.float32]
    name = torch.cuda.get_device_name(device) if on_cuda else cpu_model()
    print(f"torch {torch.__version__}, device {device} ({name}), threads "
          f"{torch.get_num_threads()}, input {'x'.join(map(str, shape))}, median of "
          f"{args.repeats} x {inner} calls")  # fmt: skip
    print()
    header = " | ".join(f"{b} ms | {b} GB/s" for b in backends)
    print(f"| op | dtype | {header} |" + (" speed-up |" if len(backends) == 2 else ""))
    print("|---|---|" + "---|---|" * len(backends) + ("---|" if len(backends) == 2 else ""))
    for label, op in cases().items():
        for dtype in dtypes:
            x = torch.randn(shape, device=device, dtype=dtype)
            out = op(x, backends[0])
            traffic = (x.numel() + out.numel()) * x.element_size()
            cells, times = [], []
            for backend in backends:
                seconds = median_seconds(
                    lambda op=op, x=x, b=backend: op(x, b), device, args.repeats, inner
                )
                times.append(seconds)
                cells.append(f"{seconds * 1e3:.3f} | {traffic / seconds / 1e9:.1f}")
            speedup = f" {times[0] / times[1]:.2f}x |" if len(times) == 2 else ""
            print(
                f"| {label} | {str(dtype).removeprefix('torch.')} | {' | '.join(cells)} |{speedup}"
            )


if __name__ == "__main__":
    main()
