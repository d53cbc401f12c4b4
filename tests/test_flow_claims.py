"""The rectified-flow claims rows: reflow students against their teachers, densities against uniform, and the
straightness-FID rank correlation, with the claims check's verdict rules."""
import pandas as pd

from ism.report import flow_claims as FC
from ism.report.claims import CLAIMS, NOT_REPRODUCED, REPRODUCED, claims_table
from ism.report.load import Sweep

BASE = {"data.coupling": "independent", "data.reflow_teacher": "", "shortcut.t_density": "uniform"}
VARIANTS = {  # variant: (params, fid@1 per seed, straightness@128, pairing_cost@128)
    "sm": ({}, [40.0, 42.0, 41.0], 1.020, 420.0),
    "sm+logit_normal": ({"shortcut.t_density": "logit_normal"}, [30.0, 31.0, 30.5], 1.021, 421.0),
    "sm+u_shaped": ({"shortcut.t_density": "u_shaped"}, [45.0, 48.0, 46.0], 1.019, 419.0),
    "sm+reflow": ({"data.coupling": "reflow", "data.reflow_teacher": "T0"}, [20.0, 21.0, 20.5], 1.005, 300.0),
    "ism": ({"guidance.mode": "intrinsic"}, [12.0, 13.0, 12.5], 1.010, 410.0),
}


def sweep():
    trials, scores, params = [], [], {}
    for v, (p, fids, st, pc) in VARIANTS.items():
        for seed, f in enumerate(fids):
            mid = f"{v}-{seed}"
            rid = "T0" if (v, seed) == ("sm", 0) else f"r-{v}-{seed}"
            params[mid] = {**BASE, **p, "run.seed": str(seed)}
            trials.append({"mlflow_id": mid, "run_id": rid, "variant": v, "variants": v, "seed": seed,
                           "status": "FINISHED", "reason": "", "components": frozenset(), "start_time": 0,
                           "end_time": 0, "git_commit": "", "node": "", "hardware": ""})
            for metric, steps, val in (("fid", 1, f), ("fid", 4, f / 3), ("straightness", 128, st + 0.001 * seed),
                                       ("pairing_cost", 128, pc + seed)):
                scores.append({"variant": v, "seed": seed, "mlflow_id": mid, "metric": metric, "steps": steps,
                               "guidance": float("nan"), "sweep": False, "value": val})
    return Sweep(uri="x", spec="flow", experiment="e", parent={"mlflow_id": "p", "tags": {}}, plan={}, notes=[],
                 spec_text="", trials=pd.DataFrame(trials), scores=pd.DataFrame(scores),
                 scalars=pd.DataFrame(columns=["variant", "seed", "mlflow_id", "key", "value"]), params=params,
                 variants=list(VARIANTS), seeds=[0, 1, 2], baseline="sm",
                 missing=pd.DataFrame(columns=["variant", "seed", "run_id", "status", "reason"]))


def test_flow_claims_pair_students_with_teachers_and_densities_with_uniform():
    sw = sweep()
    assert FC.reflow_pairs(sw) == [("sm", "sm+reflow")]
    assert FC.density_variants(sw) == {"logit_normal": "sm+logit_normal", "u_shaped": "sm+u_shaped"}
    res = {(r.claim.problem, r.diagnostic): r for r in FC.flow_results(sw)}
    assert res["reflow: transport cost (sm+reflow)", "pairing_cost @128 steps"].verdict == REPRODUCED
    assert res["reflow: straight paths (sm+reflow)", "straightness @128 steps"].verdict == REPRODUCED
    assert res["reflow: one step (sm+reflow)", "fid @1 step"].verdict == REPRODUCED
    assert res["timestep density: logit_normal", "fid @1 step"].verdict == REPRODUCED
    assert res["timestep density: u_shaped", "fid @4 steps"].verdict == NOT_REPRODUCED
    corr = next(r for r in res.values() if r.claim.problem == "straightness vs FID")
    assert corr.delta.mean > 0 and "rho" in corr.detail   # here straighter ranks better


def test_claims_table_adds_the_flow_rows_only_when_the_sweep_has_them():
    table, results = claims_table(sweep(), FC.flow_results(sweep()))
    # Expected rows from the fixture's own make-up: every iSM claim, then per reflow student one row per reflow
    # claim, per density variant one row per FID step count measured at 1 or 4 steps, and one rank correlation.
    students = sum(p.get("data.coupling") == "reflow" for p, *_ in VARIANTS.values())
    densities = sum(set(p) == {"shortcut.t_density"} for p, *_ in VARIANTS.values())
    few_steps = len({1, 4} & {s for s in sweep().scores.query("metric == 'fid'")["steps"]})
    assert (students, densities, few_steps) == (1, 2, 2)
    assert len(results) == len(CLAIMS) + students * len(FC.REFLOW_CLAIMS) + densities * few_steps + 1
    assert "rectified-flow" in table.title
    sw = sweep()
    keep = ["sm", "ism"]
    sw.trials = sw.trials[sw.trials["variant"].isin(keep)]
    sw.scores = sw.scores[sw.scores["variant"].isin(keep)]
    sw.variants = keep
    table, results = claims_table(sw, FC.flow_results(sw))
    assert FC.flow_results(sw) == [] and len(results) == len(CLAIMS) and "rectified-flow" not in table.title
