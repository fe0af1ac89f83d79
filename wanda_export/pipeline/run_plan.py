"""The decisions of one run, made in one place and read by the runner, the stages and `plan`:
how the run calibrates (one dense pass, or layer by layer on pruned inputs, which prunes as it
goes), whether OWL needs an extra dense pass, and which cache entries the run reads (and writes
on a miss), each with its key. `plan` builds this same object before a run, so it can never
disagree with what the run does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from wanda_export.cache.keys import esd_alphas_key, lm_eval_key
from wanda_export.cache.store import ALPHAS, CALIBRATION, LM_EVAL, PERPLEXITY
from wanda_export.config import PipelineConfig
from wanda_export.evaluate.harness import TaskSet
from wanda_export.pipeline.inputs import calibration_key_for, dense_perplexity_key_for

# Steps that use the cache: the stage records and `plan` rows are named after them.
DENSE_PERPLEXITY = "evaluate-dense"
DENSE_LM_EVAL = "evaluate-dense-lm-eval"
CALIBRATE = "calibrate"
OWL_STATISTICS = "allocate-owl-statistics"
ESD_ALPHAS = "allocate-alphas"
# The stage whose work each step serves (the dense baseline runs before every stage).
STAGE_OF_STEP = {DENSE_PERPLEXITY: None, DENSE_LM_EVAL: None, OWL_STATISTICS: "calibrate", CALIBRATE: "calibrate",
                 ESD_ALPHAS: "mask"}

Windows = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class CacheUse:
    """One cache entry a run reads, computed and written on a miss: which step uses it, the
    entry's kind and key, and the record the key is the digest of. `served_by` lists keys of
    entries that hold the same statistics and more (dense statistics with X^T X, written for
    SparseGPT, serve Wanda too), tried when the entry itself is missing."""

    step: str
    kind: str
    key: str
    record: dict[str, Any]
    served_by: tuple[str, ...] = ()

    def all_keys(self) -> tuple[str, ...]:
        """The entry's own key, then the keys of the entries that can serve it."""
        return (self.key, *self.served_by)


@dataclass(frozen=True)
class RunPlan:
    """How one run calibrates and prunes, and the cache entries it uses, in the order used."""

    calibration: Literal["dense", "sequential"] | None  # None: nothing to calibrate
    owl_dense_pass: bool  # OWL with sequential calibration: its statistics need a dense pass
    uses: tuple[CacheUse, ...]

    @property
    def prunes_during_calibration(self) -> bool:
        """Sequential calibration prunes each layer before calibrating the next (on a cache
        miss; on a hit the mask stage prunes from the cached statistics, to the same weights)."""
        return self.calibration == "sequential"

    def has(self, step: str) -> bool:
        """Whether the run has step `step` (e.g. the cached dense baseline)."""
        return any(use.step == step for use in self.uses)

    def use(self, step: str) -> CacheUse:
        """The cache entry of `step` (one of this module's step names)."""
        return next(use for use in self.uses if use.step == step)


def plan_run(config: PipelineConfig, stage_names: list[str], fingerprint: str,
             target_names: list[str], calibration_windows: Windows,
             evaluation_windows: Windows,
             lm_eval_tasks: Callable[[], TaskSet] | None = None) -> RunPlan:
    """Decide how the stages in `stage_names` run and key their cache entries.

    The windows and the lm-eval tasks are callables so that only what a run needs is read,
    tokenized or resolved; without `lm_eval_tasks` (a streamed run) no task is scored.
    """
    uses: list[CacheUse] = []
    evaluate = config.stage("evaluate")
    if "evaluate" in stage_names and evaluate.perplexity and evaluate.dense_baseline:
        key = dense_perplexity_key_for(config, fingerprint, evaluation_windows())
        uses.append(CacheUse(DENSE_PERPLEXITY, PERPLEXITY, key,
                             {"schema": "dense-perplexity", "key": key}))
    if "evaluate" in stage_names and evaluate.lm_eval is not None and lm_eval_tasks is not None:
        tasks = lm_eval_tasks()
        settings = evaluate.lm_eval
        key = lm_eval_key(fingerprint, config.model.dtype,
                          [task.record() for task in tasks.tasks], settings.num_fewshot,
                          settings.limit, tasks.lm_eval_version)
        uses.append(CacheUse(DENSE_LM_EVAL, LM_EVAL, key,
                             {"schema": "dense-lm-eval", "key": key,
                              "tasks": [task.record() for task in tasks.tasks]}))
    spec = config.prune_spec()
    calibration, owl_dense_pass = None, False
    if spec is not None and CALIBRATE in stage_names and spec.needs_calibration:
        calibration = "sequential" if spec.calibrates_sequentially else "dense"
        windows = calibration_windows()
        owl_dense_pass = spec.allocation == "owl" and calibration == "sequential"
        with_hessian = calibration_key_for(config, fingerprint, windows, target_names,
                                           mode="dense", hessian=True).digest()
        if owl_dense_pass:
            key = calibration_key_for(config, fingerprint, windows, target_names, mode="dense",
                                      hessian=False)
            uses.append(CacheUse(OWL_STATISTICS, CALIBRATION, key.digest(), key.record(),
                                 served_by=(with_hessian,)))
        key = calibration_key_for(config, fingerprint, windows, target_names, mode=calibration)
        served_by = (with_hessian,) if calibration == "dense" and not spec.needs_hessian else ()
        uses.append(CacheUse(CALIBRATE, CALIBRATION, key.digest(), key.record(), served_by))
    if spec is not None and "mask" in stage_names and spec.allocation == "alphapruning":
        key = esd_alphas_key(fingerprint, target_names, spec.alpha_xmin)
        uses.append(CacheUse(ESD_ALPHAS, ALPHAS, key, {"schema": "esd-alphas", "key": key}))
    return RunPlan(calibration, owl_dense_pass, tuple(uses))
