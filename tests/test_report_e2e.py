"""End to end: a real smoke ablation (2 variants × 2 seeds through Ray Tune and MLflow), then `ism report` on its
store: the report carries exactly the numbers MLflow holds, with grids, losses and the guidance sweep."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ism import tracking
from ism.report import build_report

SPEC = """
name: e2e
description: two variants for the report's end-to-end test
base:
  overrides: {eval.steps: [1, 4, 128], eval.guidance_sweep: [0.0, 1.0], eval.sweep_steps: [1]}
seeds: [0, 1]
variants:
  sm: {reason: SM baseline}
  sm+intrinsic: {reason: intrinsic guidance alone, overrides: {guidance.mode: intrinsic, guidance.t_interval: 0.0}}
groups:
  cumulative: [sm, sm+intrinsic]
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    spec = root / "e2e.yaml"
    spec.write_text(SPEC)
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    # ism.ablation.plan's command-line API in a child process: Ray pickles the sweep's progress callback, which holds
    # the stderr stream, and pytest's captured stream cannot be pickled.
    res = subprocess.run([sys.executable, "-m", "ism.cli", "ablate", str(spec), "--profile", "smoke", "--storage",
                          str(root / "st"), "--tracking-uri", uri], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    rep = build_report(str(spec), uri, root / "reports" / "e2e", profile="smoke")
    return {"uri": uri, "report": rep, "root": root}


@pytest.mark.ray
@pytest.mark.e2e
def test_report_of_a_real_smoke_ablation_carries_mlflows_numbers(sweep):
    import pandas as pd
    uri, rep = sweep["uri"], sweep["report"]
    parent = tracking.find_sweeps("e2e", "smoke", uri)[0]
    kids = tracking.child_runs(parent.info.run_id, uri)
    assert len(kids) == 4 and {k.info.status for k in kids} == {"FINISHED"}
    held = {}
    for k in kids:
        for key, v in k.data.metrics.items():
            m = re.fullmatch(r"(fid|kid)_steps_(\d+)", key)
            if m:
                held.setdefault((m.group(1), k.data.tags["ism.variant"], int(m.group(2))), {})[int(k.data.tags["ism.seed"])] = v
    assert {s for (_, _, s) in held} == {1, 4, 128}
    for metric in ("fid", "kid"):
        table = pd.read_csv(rep.out_dir / "tables" / f"{metric}_by_steps.csv")
        assert len(table) == 2 * 3
        for r in table.itertuples():
            vals = held[(metric, r.variant, r.steps)]
            row = r._asdict()
            assert {int(k[5:]): row[k] for k in row if k.startswith("seed_")} == vals   # per-seed columns, as logged
            assert r.mean == pytest.approx(np.mean(list(vals.values())), rel=1e-12) and r.n == 2
    md = rep.markdown.read_text()
    assert "None: every planned trial finished" in md
    d = pd.read_csv(rep.out_dir / "tables" / "fid_ratio.csv")   # FID is compared as a ratio (log scale)
    assert set(d["method"]) == {"paired"}
    sweep_rows = pd.read_csv(rep.out_dir / "tables" / "fid_guidance_sweep.csv")
    assert sorted(sweep_rows["w"].unique()) == [0.0, 1.0]
    for k in ("metric_vs_steps", "ablation_bars", "guidance_sweep", "losses", "spectra", "samples"):
        assert not isinstance(rep.figures[k], str), (k, rep.figures[k])
    names = {a.path for a in tracking.client(uri).list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.pdf", "report/appendix.pdf"} <= names
    from pypdf import PdfReader
    text = "\n".join(p.extract_text() for f in (rep.pdf, rep.out_dir / "appendix.pdf") for p in PdfReader(f).pages)
    assert "Claims check" in text and "sm+intrinsic" in text and "mnist-cnn" in text
