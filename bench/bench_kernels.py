"""Blur, resampling and fused stage-mean ops: Triton kernels against torch, in GB/s.

Run from the repository root:

    python bench/bench_kernels.py                          # CUDA if present, else CPU
    python bench/bench_kernels.py --device cpu --shape 16 3 64 64 --repeats 10

On CUDA both paths of every ``fdm::`` op run (``backend="torch"`` and ``backend="triton"``) in
fp32, fp16 and bf16; on CPU only the torch path runs (the Triton interpreter is a correctness
tool, not a speed one). GB/s counts the ideal traffic, one read of each input image and one
write of the output, over the median time of ``--repeats`` timed runs of ``--inner`` calls
each; "% peak" relates it to the GPU's nominal memory bandwidth (``NOMINAL_GBS``, or
``--peak-gbs``) and "% copy" to a device-to-device copy timed in the same run. The torch path of
``mix_block_mean`` is the unfused one (pooling, up-sampling and three element-wise passes).
"""

from __future__ import annotations

import argparse
import functools
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


NOMINAL_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}  # SXM data-sheet figures


def cases() -> dict[str, tuple[int, Callable[[torch.Tensor, str], torch.Tensor]]]:
    """label -> (images read, op(x, backend))."""
    g5, g13 = gaussian(5), gaussian(13)

    @functools.cache
    def per_sample(batch: int, device: torch.device) -> torch.Tensor:  # drawn once, not timed
        return torch.rand(3, batch, device=device)

    @functools.cache
    def eps_like(x: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(x)

    def stage_mean(x: torch.Tensor, b: str) -> torch.Tensor:  # M_t x (E4)
        delta = per_sample(x.shape[0], x.device)[0]
        return ops.mix_block_mean(x, 2, 1 - delta, delta, backend=b)

    def noised(x: torch.Tensor, b: str) -> torch.Tensor:  # z_t = alpha M_t x + sigma eps (E5)
        keep, project, scale = per_sample(x.shape[0], x.device)
        return ops.mix_block_mean(x, 2, keep, project, eps_like(x), scale, backend=b)

    return {
        "blur gaussian k=5": (1, lambda x, b: ops.blur_separable(x, g5, backend=b)),
        "blur gaussian k=13": (1, lambda x, b: ops.blur_separable(x, g13, backend=b)),
        "downsample_mean x2": (1, lambda x, b: ops.downsample_mean(x, 2, backend=b)),
        "upsample_nearest x2": (1, lambda x, b: ops.upsample_nearest(x, 2, backend=b)),
        "mix_block_mean x2 (stage mean)": (1, stage_mean),
        "mix_block_mean x2 (z_t, with eps)": (2, noised),
    }


def peak_gbs(name: str, given: float | None) -> float | None:
    if given is not None:
        return given
    return next((gbs for key, gbs in NOMINAL_GBS.items() if key in name), None)


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
    parser.add_argument("--peak-gbs", type=float, default=None, help="nominal memory GB/s")
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
    peak = peak_gbs(name, args.peak_gbs)
    big = torch.empty(256 * 2**20 if on_cuda else 16 * 2**20, dtype=torch.uint8, device=device)
    copy_gbs = 2 * big.numel() / median_seconds(big.clone, device, args.repeats, inner) / 1e9
    print(f"device-to-device copy {copy_gbs:.1f} GB/s; nominal peak "
          f"{f'{peak:.0f} GB/s' if peak else 'unknown (pass --peak-gbs)'}")  # fmt: skip
    print()
    share = " | % peak" if peak else ""
    header = " | ".join(f"{b} ms | {b} GB/s{share} | {b} % copy" for b in backends)
    columns = 3 + bool(peak)
    print(f"| op | dtype | {header} |" + (" speed-up |" if len(backends) == 2 else ""))
    print("|---|---|" + "---|" * columns * len(backends) + ("---|" if len(backends) == 2 else ""))
    for label, (reads, op) in cases().items():
        for dtype in dtypes:
            x = torch.randn(shape, device=device, dtype=dtype)
            out = op(x, backends[0])
            traffic = (reads * x.numel() + out.numel()) * x.element_size()
            cells, times = [], []
            for backend in backends:
                seconds = median_seconds(
                    lambda op=op, x=x, b=backend: op(x, b), device, args.repeats, inner
                )
                times.append(seconds)
                gbs = traffic / seconds / 1e9
                of_peak = f" | {100 * gbs / peak:.0f}%" if peak else ""
                cells.append(
                    f"{seconds * 1e3:.3f} | {gbs:.1f}{of_peak} | {100 * gbs / copy_gbs:.0f}%"
                )
            speedup = f" {times[0] / times[1]:.2f}x |" if len(times) == 2 else ""
            print(
                f"| {label} | {str(dtype).removeprefix('torch.')} | {' | '.join(cells)} |{speedup}"
            )


if __name__ == "__main__":
    main()
