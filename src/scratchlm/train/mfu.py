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


def measure_matmul_peak(device: torch.device, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of float32 square matmuls on this device with the current thread count."""
    gen = torch.Generator(device=device).manual_seed(0)  # leave the global RNG untouched
    a = torch.randn(size, size, device=device, generator=gen)
    b = torch.randn(size, size, device=device, generator=gen)
    a @ b  # warm up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start)


def peak_flops(device: torch.device, configured: float = 0.0) -> float:
    """The configured peak, else the GPU's data-sheet bf16 peak, else a measured matmul peak."""
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAKS.items():
            if key in name:
                return flops
    return measure_matmul_peak(device)
