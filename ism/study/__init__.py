"""Optuna studies over config keys, run as Ray Tune trials (through ism.ablation.ray_adapter) and tracked in MLflow.

A study spec (studies/*.yaml) names a base (a preset or an ablation variant, plus overrides), a search space over
config keys, an objective over evaluation metrics, a direction, a trial budget, parallelism, a seeded sampler and a
pruner. Every key and bound is checked against ism.conf.config before Ray starts.

The Optuna storage is the source of truth, not Ray's experiment state (Tuner.restore has been known to drop a
searcher's state, and a killed driver leaves no usable Ray checkpoint): each run of `ism study` opens the study,
puts trials left RUNNING by an interrupted driver back to WAITING (Optuna's ask() hands them out again with the same
number and parameters, so their run dir resumes from its checkpoint), and asks Ray for exactly the trials still
missing. Pruning uses Optuna's own pruners on the intermediate values stored in the study, so decisions survive a
restart; a Tune scheduler only carries them out. The study DB holds nothing but Optuna's own tables
(optuna-dashboard reads it); ism's bookkeeping lives in trial user attributes.

Modules: spec (the spec file, search space), plan (a spec resolved for one profile and checked), storage (the Optuna
storage, resume and requeue), driver (the Bookkeeper and run_study), export (--export-best). The names below are the
package's public API (tests, the report generator, `ism study` in ism.commands.study).
"""
from __future__ import annotations

from ism.study.driver import Bookkeeper, run_study
from ism.study.export import export_best
from ism.study.plan import (CORNER_LIMIT, StudyPlan, check_point, check_space, from_dict_where, make_pruner,
                            make_sampler, plan)
from ism.study.spec import (BASE_KEYS, METRICS, PARAM_KEYS, PARAM_TYPES, PROFILE_KEYS, SPEC_KEYS, Param, StudySpec,
                            flatten_space, load_spec, parse_objective, parse_param)
from ism.study.storage import (FINISHED, check_url, counts, is_stale, load_study, open_study, rdb, requeue_stale,
                               storage_url, study_dir, study_lock)
from ism.ablation.trial_objective import METRIC, Objective

__all__ = ["BASE_KEYS", "CORNER_LIMIT", "FINISHED", "METRIC", "METRICS", "PARAM_KEYS", "PARAM_TYPES", "PROFILE_KEYS",
           "SPEC_KEYS", "Bookkeeper", "Objective", "Param", "StudyPlan", "StudySpec", "check_point", "check_url",
           "check_space", "counts", "export_best", "flatten_space", "from_dict_where", "is_stale", "load_spec", "load_study",
           "make_pruner", "make_sampler", "open_study", "parse_objective", "parse_param", "plan", "rdb",
           "requeue_stale", "run_study", "storage_url", "study_dir", "study_lock"]
