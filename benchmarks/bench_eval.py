"""Evaluation cost on CPU: FID per 1,000 samples per extractor, sampling time per step count, guided-step cost.

- FID (+KID for mnist-cnn) goes through ism.evaluation.scorers.fid_kid against the cached held-out statistics of the
  embedded MNIST (mnist-cpu preset). It is measured on a few hundred samples and scaled to 1,000 (feature
  extraction is linear in N; the FID matrix work is a fixed cost, timed separately and added once).
- Sampling: the mnist-cpu network (unet-tiny, untrained weights: the cost does not depend on them) from fixed
  noise, timed per step count and scaled to 1,000 samples.
- Sampling batch size: CPU time per image per step for batches of 32 ... 500 (eval.batch_size of the preset).
- Guided sampling: seconds per sampling step at the finest level, intrinsic guidance (w is an input: one
  forward pass) against CFG (conditional + null pass); the goal ratio is 0.5.
Wall and CPU (process) time are both given: this machine's 2 cores are shared, so wall time includes waiting.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from ism.commands.env import eval_cache_root

N_FID_CNN = 500
N_FID_INCEPTION = 96
N_SAMPLE = 100
GUIDED_N = 250


def _timed(fn, repeats: int = 1):
    """(result, median wall s, median CPU s) over repeats."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, statistics.median(walls), statistics.median(cpus)


def _fid_fixed_seconds(dim: int) -> float:
    """Wall seconds of torch-fidelity's FID from two dim-d statistics (the part that does not scale with N)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    g = np.random.default_rng(0)
    a, b = g.standard_normal((dim + 50, dim)).astype(np.float32), g.standard_normal((dim + 50, dim)).astype(np.float32)
    sa = {"mu": a.mean(0), "sigma": np.cov(a, rowvar=False).astype(np.float32)}
    sb = {"mu": b.mean(0), "sigma": np.cov(b, rowvar=False).astype(np.float32)}
    return _timed(lambda: fid_statistics_to_metric(sa, sb, False))[1]


def fid_rows(cfg, data) -> list[dict]:
    """FID wall time per 1,000 samples for mnist-cnn and inception-fid-helper."""
    from ism.evaluation import scorers as SC
    from ism.training import extractors as E
    rows = []
    samples = data.train_x[torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))]
    # mnist-cnn: one-time classifier training (cached afterwards) and reference statistics, then per-N cost.
    cnn, t_setup, _ = _timed(lambda: E.setup("mnist-cnn", data, root=eval_cache_root()))
    ref = SC.reference(data, cnn)
    SC.fid_kid(samples[:10], ref, cnn, eval_cache_root() / "fidelity")  # warm the reference cache
    _, wall, cpu = _timed(lambda: SC.fid_kid(samples[:N_FID_CNN], ref, cnn, eval_cache_root() / "fidelity"), repeats=2)
    fixed = _fid_fixed_seconds(128)
    per_k = (wall - fixed) * 1000 / N_FID_CNN + fixed
    rows += [
        {"case": "fid_kid_per_1k_samples/mnist-cnn", "value": per_k, "unit": "s",
         "note": f"measured {wall:.2f}s wall ({cpu:.2f}s CPU) on {N_FID_CNN} samples vs cached held-out stats, "
                 f"scaled to 1,000 (fixed FID part {fixed:.2f}s added once); FID + KID ({SC.KID_SUBSETS} subsets)"},
        {"case": "mnist-cnn_setup", "value": t_setup, "unit": "s",
         "note": f"classifier training or cache load (held-out acc {cnn.accuracy:.3f}); once per data fingerprint"},
    ]
    try:
        inc = E.setup("inception-fid-helper", data)
    except Exception as e:  # noqa: BLE001 - the optional extra may be missing; say so instead of failing
        return rows + [{"case": "fid_per_1k_samples/inception-fid-helper", "value": float("nan"), "unit": "s",
                        "note": f"unavailable: {e}"}]
    other = SC.ImageSet(data.test_x[:N_FID_INCEPTION], rgb=True)
    _, wall, cpu = _timed(lambda: SC.fid_kid(samples[:N_FID_INCEPTION], other, inc, kid=False))
    fixed = _fid_fixed_seconds(2048)
    per_img = (wall - fixed) / (2 * N_FID_INCEPTION)
    rows += [
        {"case": "fid_per_1k_samples/inception-fid-helper", "value": per_img * 1000 + fixed, "unit": "s",
         "note": f"measured {wall:.1f}s wall ({cpu:.1f}s CPU) for {N_FID_INCEPTION}+{N_FID_INCEPTION} images "
                 f"(both sides extracted), {per_img:.3f}s/image at 299x299; scaled to 1,000 samples vs cached "
                 f"reference + fixed 2048-d FID part {fixed:.1f}s; threads={torch.get_num_threads()}"},
    ]
    return rows


def sampling_rows(cfg, data) -> list[dict]:
    """Seconds per 1,000 samples for each sampling step count (unet-tiny, one thread)."""
    from ism.training.models import build_model
    from ism.training.sample import fixed_labels, fixed_noise, sample
    net = build_model(cfg, data).eval()
    x0, y = fixed_noise(N_SAMPLE, data.shape, 0), fixed_labels(N_SAMPLE, data.num_classes)
    rows = []
    for s in cfg.eval.steps:
        _, wall, cpu = _timed(lambda: sample(net, x0, y, s, cfg, null=data.num_classes))
        rows.append({"case": f"sample_per_1k/steps_{s}", "value": wall * 1000 / N_SAMPLE, "unit": "s",
                     "note": f"{cfg.model.name}, {cfg.guidance.mode}, {N_SAMPLE} samples measured "
                             f"({wall:.2f}s wall, {cpu:.2f}s CPU), scaled to 1,000"})
    return rows


def batch_rows(cfg, data) -> list[dict]:
    """CPU ms per image per sampling step by batch size (mnist-cpu samples in batches of eval.batch_size)."""
    from ism.training.models import build_model
    from ism.training.sample import fixed_labels, fixed_noise, sample
    net = build_model(cfg, data).eval()
    rows, n, steps = [], 1000, 4
    x0, y = fixed_noise(n, data.shape, 0), fixed_labels(n, data.num_classes)
    for bs in (32, 64, 128, 250, 500):
        def run():
            for i in range(0, n, bs):
                sample(net, x0[i:i + bs], y[i:i + bs], steps, cfg, null=data.num_classes)
        run()  # warm-up
        _, wall, cpu = _timed(run, repeats=3)
        rows.append({"case": f"sample_ms_per_image_step/batch_{bs}", "value": 1000 * cpu / (n * steps), "unit": "ms",
                     "note": f"{cfg.model.name}, {n} images x {steps} steps, CPU time (wall {wall:.2f}s); "
                             f"the preset uses eval.batch_size={cfg.eval.batch_size}"})
    return rows


def guided_rows(data) -> list[dict]:
    """Seconds per guided sampling step: intrinsic (one pass) vs CFG at the finest level (two passes)."""
    from ism.conf.config import resolve
    from ism.training.models import build_model
    from ism.training.sample import fixed_labels, fixed_noise, sample
    steps = 8
    base = {"shortcut.max_steps_log2": 3, "eval.steps": [1, steps], "eval.sweep_steps": [1, steps]}
    x0, y = fixed_noise(GUIDED_N, data.shape, 0), fixed_labels(GUIDED_N, data.num_classes)
    per_step = {}
    for mode, guidance in (("intrinsic", 1.0), ("cfg_finest", 1.5)):
        cfg = resolve("mnist-cpu", overrides={**base, "guidance.mode": mode})
        torch.manual_seed(0)
        net = build_model(cfg, data).eval()
        sample(net, x0[:8], y[:8], steps, cfg, guidance, null=data.num_classes)  # warm-up
        _, wall, cpu = _timed(lambda: sample(net, x0, y, steps, cfg, guidance, null=data.num_classes), repeats=3)
        per_step[mode] = (wall / steps, cpu / steps)
    ratio = per_step["intrinsic"][1] / per_step["cfg_finest"][1]
    return [
        {"case": "guided_step/intrinsic", "value": per_step["intrinsic"][0], "unit": "s/step",
         "note": f"{GUIDED_N} samples, one forward pass per step (w input); CPU {per_step['intrinsic'][1]:.3f}s"},
        {"case": "guided_step/cfg", "value": per_step["cfg_finest"][0], "unit": "s/step",
         "note": f"{GUIDED_N} samples, conditional + null pass per step; CPU {per_step['cfg_finest'][1]:.3f}s"},
        {"case": "guided_step_ratio/intrinsic_over_cfg", "value": ratio, "unit": "x", "goal": "0.5",
         "note": "CPU-time ratio per finest-level step (the w embedding adds a little to the single pass)"},
    ]


def trial_eval_rows(run_dir: str, blas_threads=(2, 1)) -> list[dict]:
    """One embedded trial's evaluation (evaluate_run on a trained mnist-cpu run, 1 torch thread as in a trial), with
    numpy's BLAS at each of blas_threads threads: wall and CPU seconds and the headline metrics, which must agree."""
    import tempfile

    import threadpoolctl

    from ism.system import machine
    from ism.evaluation.evaluate import evaluate_run
    from ism.training.run_state import load_run
    cfg, nets, data, step = load_run(run_dir)
    rows = []
    for n in blas_threads:
        torch.set_num_threads(1)
        threadpoolctl.threadpool_limits(limits=n, user_api="blas")
        with tempfile.TemporaryDirectory() as tmp:
            (_, m), wall, cpu = _timed(lambda: evaluate_run(nets, cfg, data, step, tmp, eval_cache_root()))
        heads = ", ".join(f"{k} {m[k]:.4g}" for k in ("fid_steps_1", "fid_steps_4", "fid_steps_128", "kid_steps_1",
                                                      "kid_steps_128") if k in m)
        rows.append({"case": f"evaluate_run of one embedded trial, numpy BLAS threads {n}", "value": wall, "unit": "s",
                     "note": f"CPU {cpu:.1f} s; {cfg.eval.num_samples} samples x {len(cfg.eval.steps)} step counts, "
                             f"mode {cfg.guidance.mode}; {heads}; load {__import__('os').getloadavg()[0]:.1f}; "
                             f"{machine.describe()}"})
        print(rows[-1], flush=True)
    return rows


def run() -> list[dict]:
    from ism.conf.config import resolve
    from ism.training.data import load_dataset
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = resolve("mnist-cpu")
        data = load_dataset(cfg.data)
        return fid_rows(cfg, data) + sampling_rows(cfg, data) + batch_rows(cfg, data) + guided_rows(data)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # python -m benchmarks.bench_eval [RUN_DIR]: with a trained run, its trial evaluation only
    import sys

    from benchmarks.support import with_cpu
    for r in with_cpu(trial_eval_rows(sys.argv[1]) if len(sys.argv) > 1 else run()):
        print(r)
