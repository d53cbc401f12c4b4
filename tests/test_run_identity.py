"""Run identity in one place: the pinned run ids of stored runs, what moves an id and what does not, and keys added
after the pins keeping every stored run's id until they are set."""
import pytest

from ism.conf.config import deep_merge, diff, from_dict, replace, resolve, run_id, training_id

# Every stored run cycled its self-consistency levels (the only layout before shortcut.level_allocation existed):
# with that value set, a stored run keeps its id; the new default (SM's layout) must move every one of them.
CYCLED = {"shortcut": {"level_allocation": "cycle"}}


def stored(delta: dict):
    """The config of a run stored before the level-allocation default changed."""
    return from_dict(deep_merge(delta, CYCLED))

# Computed on the code before the refactor (commit e317bf4): the identity of existing stores must not move.
BASE_RUN_ID, BASE_TRAINING_ID = "d0b5ebb9e86a", "097d9b7550ea"
PINNED = [
    ({}, BASE_RUN_ID, BASE_TRAINING_ID),
    ({"guidance": {"mode": "intrinsic"}, "wavelet": {"enabled": True}, "ot": {"enabled": True}, "ema": {"twin": True}},
     "194182290c03", "fcfd50217148"),
    ({"run": {"seed": 3, "device": "cpu", "threads": 1, "out_dir": "x", "keep_checkpoints": 5},
      "eval": {"batch_size": 10, "every_steps": 100}, "ot": {"prefetch": False}}, "b7060b865e86", "2f0c7497c360"),
    ({"eval": {"w": 1.0, "guidance_sweep": [0.5, 1.0], "num_samples": 500}}, "2174fd297374", BASE_TRAINING_ID),
    ({"data": {"name": "toy2d", "conditional": False}, "guidance": {"mode": "none"}, "model": {"name": "mlp2d"}},
     "b51ee8fd1858", "092eb17cb163"),
    # The keys left out of the run identity before the refactor (NON_IDENTITY_KEYS): changing them changes no id.
    ({"run": {"checkpoint_every": 7, "log_every": 3, "progress": False, "device": "cpu", "threads": 2,
              "out_dir": "elsewhere", "keep_checkpoints": 9},
      "eval": {"batch_size": 17, "weights_path": "w.pt"}, "ot": {"prefetch": False}}, BASE_RUN_ID, BASE_TRAINING_ID),
]


@pytest.mark.parametrize("delta, rid, tid", PINNED)
def test_run_ids_are_pinned(delta, rid, tid):
    cfg = stored(delta)
    assert (run_id(cfg), training_id(cfg)) == (rid, tid)
    new = from_dict(delta)   # a changed default changes the identity of every run it affects
    assert run_id(new) != rid and training_id(new) != tid


def test_run_id_is_identity_of_what_is_computed():
    a = resolve("smoke")
    assert run_id(a) == run_id(resolve("smoke"))
    assert run_id(a) != run_id(replace(a, **{"run.seed": 1}))
    assert run_id(a) != run_id(replace(a, **{"guidance.mode": "intrinsic"}))
    assert run_id(a) == run_id(replace(a, **{"run.out_dir": "elsewhere", "run.progress": False}))
    assert diff(a, replace(a, **{"optim.lr": 0.5})) == {"optim.lr": (a.optim.lr, 0.5)}


def test_training_id_ignores_evaluation_settings_only():
    base = resolve("smoke")
    assert training_id(resolve("smoke", overrides={"eval.guidance_sweep": [1.0, 2.0], "eval.num_samples": 32,
                                                   "eval.steps": [1]})) == training_id(base)
    assert run_id(resolve("smoke", overrides={"eval.num_samples": 32})) != run_id(base)
    for key, value in (("optim.lr", 5e-4), ("run.seed", 1), ("eval.every_steps", 4), ("run.steps", 6)):
        assert training_id(resolve("smoke", overrides={key: value})) != training_id(base), key


def test_timestep_density_and_loss_keys_keep_stored_run_ids_until_set():
    assert run_id(stored({"shortcut": {"t_density": "uniform"}})) == BASE_RUN_ID
    assert run_id(stored({"shortcut": {"t_density": "logit_normal"}})) != BASE_RUN_ID
    assert run_id(stored({"loss": {"distance": "pseudo_huber"}})) != BASE_RUN_ID


def test_sot_solver_keys_keep_stored_run_ids_until_set():
    base = from_dict({"ot": {"enabled": True}})
    assert base.ot.solver == "exact"  # what every stored run computed
    same = from_dict({"ot": {"enabled": True, "solver": "exact", "candidates": 32, "pool_scope": "global",
                             "devices": 1}})
    assert run_id(same) == run_id(base)
    for delta in ({"solver": "sparse"}, {"solver": "auto"}, {"candidates": 8}, {"pool_scope": "device"}):
        assert run_id(from_dict({"ot": {"enabled": True, **delta}})) != run_id(base), delta


def test_sot_prefetch_changes_no_id():
    """Prefetching solves the same pools earlier (tests/test_coupling.py checks the pairs are equal)."""
    on = from_dict({"ot": {"enabled": True, "prefetch": True}})
    assert on.ot.prefetch and run_id(on) == run_id(from_dict({"ot": {"enabled": True, "prefetch": False}}))
