"""benchmarks/bench_gpu.py runs end to end on CPU at toy size, so the GPU check cannot rot between GPU sessions."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_gpu


@pytest.mark.e2e
def test_bench_gpu_tiny_writes_json_and_markdown(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert bench_gpu.main(["--tiny", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads((tmp_path / "gpu-tiny.json").read_text())
    assert res["sm"]["sec_per_step"] > 0 and res["ism"]["sec_per_step"] > 0 and res["ism_over_sm"] > 0
    assert res["ism"]["ot_solve_s"] > 0  # the full iSM run really pooled and solved
    assert set(res["pool_solve"]) == {"sparse_global", "auto_class", "exact_global"}
    for v in res["pool_solve"].values():
        assert v["cost_after"] < v["cost_before"] and 0 < v["share_of_k_sm_steps"] < 1
    assert set(res["sampling_images_per_s"]) == {"steps_1", "steps_128"}
    assert res["sampling_images_per_s"]["steps_1"] > res["sampling_images_per_s"]["steps_128"] > 0
    md = (tmp_path / "gpu-tiny.md").read_text()
    assert "full iSM / SM" in md and "pool solve 32 pairs: sparse_global" in md
    if not torch.cuda.is_available():
        assert bench_gpu.run()[0]["value"] == "skipped"
