"""The hardware peak that model FLOP utilisation (MFU) is measured against."""

from __future__ import annotations

import time

import torch

# Dense bf16 peaks (FLOP/s) from the vendors' data sheets, for MFU on GPUs.
GPU_PEAKS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "4090": 165e12,
    "3090": 71e12,
}


def peak_dtype(device: torch.device) -> torch.dtype:
    """The dtype training multiplies in (device.autocast_for): bf16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def measure_matmul_peak(
    device: torch.device,
    size: int = 1024,
    seconds: float = 0.3,
    dtype: torch.dtype = torch.float32,
) -> float:
    """FLOP/s of `dtype` square matmuls on this device (CPU: with the current thread count),
    on random data (zeros run faster than real numbers on some GPUs)."""
    gen = torch.Generator(device=device).manual_seed(0)  # leave the global RNG untouched
    a = torch.randn(size, size, device=device, generator=gen).to(dtype)
    b = torch.randn(size, size, device=device, generator=gen).to(dtype)
    a @ b  # warm up
    # A GPU runs what the CPU queued: time whole groups, each waited for, so the count of
    # products is the count done (not the count queued) when the clock is read.
    group = 10 if device.type == "cuda" else 1
    _synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(group):
            a @ b
        _synchronize(device)
        runs += group
    return 2 * size**3 * runs / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, configured: float = 0.0) -> float:
    """The configured peak, else the GPU's data-sheet bf16 peak, else a measured matmul peak
    in the dtype training multiplies in (large products on a GPU: small ones cannot fill it)."""
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAKS.items():
            if key in name:
                return flops
        return measure_matmul_peak(device, size=8192, dtype=peak_dtype(device))
    return measure_matmul_peak(device)


class MFUMeter:
    """Model FLOP utilisation of each step: the FLOP/s it achieved over the hardware's peak.

    A peak measured on a CPU shared with other work comes out low (a 0.3 s measurement at a
    busy moment once gave MFU figures of 100-154%), and a configured one can be wrong. So the
    CPU peak is the best of several measurements, a step faster than the peak makes the meter
    measure again (a few times per run at most), and the peak is never left below a rate a
    step actually reached: the figure shown never exceeds 100%.
    """

    REMEASURES = 3

    def __init__(
        self, device: torch.device, configured: float, flops_per_token: float, world: int = 1
    ):
        self.device, self.flops_per_token, self.world = device, flops_per_token, world
        self.peak = peak_flops(device, configured)  # of one process
        self.remeasures = 0 if configured or device.type != "cpu" else self.REMEASURES
        if self.remeasures:
            self.peak = max(
                self.peak, *(measure_matmul_peak(device, seconds=0.1) for _ in range(2))
            )
        self.raised: str | None = None  # what the last raise of the peak was, to say once

    def __call__(self, tokens_per_second: float) -> float:
        """The MFU of a step that processed `tokens_per_second` over all processes."""
        achieved = self.flops_per_token * tokens_per_second / self.world  # per process
        if achieved > self.peak and self.remeasures:
            self.remeasures -= 1
            self.peak = max(self.peak, measure_matmul_peak(self.device))
        if achieved > self.peak:
            self.raised = (
                f"a step reached {achieved:.3g} FLOP/s per process, above the peak of "
                f"{self.peak:.3g}: MFU is measured against that rate from now on"
            )
            self.peak = achieved
        return achieved / self.peak
