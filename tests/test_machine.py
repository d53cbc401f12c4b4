"""What the machine offers: CPU model and capability read from /proc/cpuinfo and torch, native bf16 by flags, and
one thread count for torch and numpy's BLAS."""
import os

import threadpoolctl
import torch

from ism.system import machine


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


def test_native_bf16_follows_the_cpu_flags():
    assert machine.native_bf16("cpu", frozenset({"avx2", "fma"})) is False
    assert machine.native_bf16("cpu", frozenset({"avx512f", "avx512bw"})) is False
    assert machine.native_bf16("cpu", frozenset({"amx_bf16"})) is True
    assert machine.native_bf16("cpu", frozenset({"avx512_bf16"})) is True
    assert machine.native_bf16("meta", frozenset({"amx_bf16"})) is False


def test_describe_names_model_simd_level_bf16_and_cores():
    line = machine.describe()
    assert machine.cpu_model() in line and machine.simd_level() in line and f"{os.cpu_count()} cores" in line
    assert ("no native bf16" not in line) == machine.native_bf16("cpu")
    if os.path.exists("/proc/cpuinfo"):
        flags = next(ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags"))
        assert machine.cpu_flags() == frozenset(flags)
        assert ("no native bf16" in line) == (not {"amx_bf16", "avx512_bf16"} & set(flags))


def test_set_threads_limits_torch_and_numpys_blas_together():
    before_torch, before_blas = torch.get_num_threads(), max(_blas_threads() or {1})
    try:
        machine.set_threads(1)
        assert torch.get_num_threads() == 1
        assert _blas_threads() in (set(), {1})  # no BLAS found: nothing to limit
        machine.set_threads(2)
        assert torch.get_num_threads() == 2 and _blas_threads() in (set(), {2})
    finally:
        machine.set_threads(before_torch)
        threadpoolctl.threadpool_limits(limits=before_blas, user_api="blas")
