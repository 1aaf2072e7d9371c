"""The devices a plan is made for: the GPU table (memory, sustained FLOP rates) and this machine (its CPU or GPU).

Example::

    device_spec('h100').budget_bytes / 2 ** 30     # 63.7: the share of its memory a training step may use
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, Optional

from ..._util import KnowacqError
from .assumptions import BUDGET_FRACTION, CPU_MFU, GIB, MIB


@dataclass
class Device:
    """A device to plan for: memory, whether training runs in bf16, and sustained FLOP rates."""
    key: str
    name: str
    memory_bytes: int
    bf16: bool
    bf16_flops: float
    fp32_flops: float
    gpu: bool = True

    @property
    def budget_bytes(self) -> float:
        return BUDGET_FRACTION * self.memory_bytes


#: the GPUs knowacq plans for: memory as the driver reports it (MiB), sustained (not peak) dense FLOP rates
GPUS: Dict[str, Device] = {
    'h100': Device('h100', 'NVIDIA H100 80GB', 81559 * MIB, True, 400e12, 40e12),
    'h200': Device('h200', 'NVIDIA H200 141GB', 143771 * MIB, True, 450e12, 40e12),
    'a100-40g': Device('a100-40g', 'NVIDIA A100 40GB', 40960 * MIB, True, 150e12, 12e12),
}

_CPU_GFLOPS: Optional[float] = None


def gemm_gflops(rows: int, inner: int, cols: int, *, reps: int = 5, calls: int = 4, best: bool = True) -> float:
    """fp32 matmul rate in GFLOP/s of ``[rows, inner] @ [inner, cols]`` on this machine: ``reps`` timings of ``calls``
    products each after one warm-up, the best (``best``) or the median of them."""
    import statistics
    import torch
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    torch.mm(a, b)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        rates.append(calls * 2 * rows * inner * cols / (time.perf_counter() - t0) / 1e9)
    return max(rates) if best else statistics.median(rates)


def cpu_gflops() -> float:
    """This machine's fp32 matmul rate in GFLOP/s (a few 1024 x 1024 products, best of five; measured once)."""
    global _CPU_GFLOPS
    if _CPU_GFLOPS is None:
        _CPU_GFLOPS = gemm_gflops(1024, 1024, 1024)
    return _CPU_GFLOPS


def _ram_bytes() -> int:
    try:
        return int(os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE'))
    except (ValueError, OSError, AttributeError):
        return 8 * GIB


def device_spec(gpu: Optional[str] = 'auto', *, flops: bool = True) -> Device:
    """The :class:`Device` of ``gpu``: ``h100``, ``h200``, ``a100-40g``, ``cpu`` (this machine: its RAM and measured
    matmul rate) or ``auto`` (this machine's first CUDA GPU, else its CPU)."""
    key = (gpu or 'auto').lower()
    if key in GPUS:
        return GPUS[key]
    if key == 'auto':
        import torch
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            name = torch.cuda.get_device_name(0)
            known = next((d for k, d in GPUS.items() if k.split('-')[0] in name.lower()), None)
            bf16 = torch.cuda.is_bf16_supported()
            return Device('cuda', name, int(props.total_memory), bf16, known.bf16_flops if known else 100e12,
                          known.fp32_flops if known else 10e12)
        key = 'cpu'
    if key == 'cpu':
        rate = cpu_gflops() * 1e9 * CPU_MFU if flops else 0.0
        return Device('cpu', 'this machine\'s CPU', _ram_bytes(), False, rate, rate, gpu=False)
    raise KnowacqError(f'unknown --gpu {gpu!r}; choose one of {", ".join(list(GPUS) + ["cpu"])}')
