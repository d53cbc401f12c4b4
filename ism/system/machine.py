"""What the machine offers: the CPU model, torch's SIMD level, whether bf16 is native; and the
precision choices that follow from them. Read from /proc/cpuinfo and torch, never from environment variables.

Why by capability: bf16 matmuls are fast only where the hardware has bf16 dot products (AMX-BF16 or AVX512-BF16 on
x86 CPUs, tensor cores on GPUs); elsewhere torch emulates them by converting to float32 and back, which costs more
than the float32 kernel (benchmarks/results.md, "sOT solvers on an AVX2 CPU"). The flag check is instant and exact,
so no timing is cached per machine.
"""
from __future__ import annotations

import functools
import os
import platform

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 dot products on x86


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ('', {}) where there is none (macOS, Windows)."""
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                key, _, val = ln.partition(":")
                if key.strip() == "model name" and not model:
                    model = val.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(val.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    """The CPU's model name (platform's guess where /proc/cpuinfo is missing)."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where unknown)."""
    return _cpuinfo()[1]


def simd_level() -> str:
    """torch's CPU kernel level here: DEFAULT, AVX2, AVX512, ... (torch.backends.cpu.get_cpu_capability)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch before 2.1
        return "unknown"


def native_bf16(device: torch.device | str = "cpu", flags: frozenset[str] | None = None) -> bool:
    """True where bf16 matmuls run natively: a CUDA device that supports bf16, or a CPU with one of BF16_CPU_FLAGS.
    flags: the CPU flags to judge (default: this machine's)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False  # mps, xpu, ...: not measured, float32 is the safe choice
    return bool((cpu_flags() if flags is None else flags) & set(BF16_CPU_FLAGS))


def describe() -> str:
    """One line for benchmark rows and trial tags: CPU model, SIMD level, bf16 nativeness, cores."""
    bf16 = "native bf16 (" + ", ".join(f for f in BF16_CPU_FLAGS if f in cpu_flags()) + ")" \
        if native_bf16("cpu") else "no native bf16"
    return f"{cpu_model()}, {simd_level()}, {bf16}, {os.cpu_count()} cores"



def set_threads(n: int) -> None:
    """n threads for torch's kernels and for the BLAS under numpy/scipy (OpenBLAS, MKL) alike. A trial given one core
    otherwise leaves numpy's BLAS at one thread per core: under load its threads spin against the other trial, and
    torch-fidelity's KID kernels (numpy matmuls) then cost ~10x the CPU (benchmarks/results.md, "Evaluation")."""
    import threadpoolctl
    torch.set_num_threads(n)
    threadpoolctl.threadpool_limits(limits=n, user_api="blas")  # process-wide until changed; nothing to restore
