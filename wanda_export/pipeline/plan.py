"""`wanda-export plan`: each stage of a pipeline and whether its cached inputs are there.

Builds the same `RunPlan` a run builds (from the tokenizer, the data, the weight fingerprint and
the model's layer names on the meta device) and asks the cache whether each entry exists; no
weights are loaded and nothing is computed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wanda_export.cache.store import CacheStore
from wanda_export.config import PipelineConfig, meta_model
from wanda_export.evaluate.harness import resolve_tasks
from wanda_export.model.fingerprint import model_fingerprint
from wanda_export.model.loading import load_tokenizer
from wanda_export.pipeline.inputs import calibration_windows_for, evaluation_windows_for
from wanda_export.pipeline.run_plan import STAGE_OF_STEP, CacheUse, plan_run

if TYPE_CHECKING:
    from torch import nn


def _row(use: CacheUse, cache: CacheStore) -> dict:
    hit = any(cache.contains(use.kind, key) for key in use.all_keys())
    return {"stage": use.step, "key": use.key, "cache": "hit" if hit else "miss"}


def plan_pipeline(config: PipelineConfig, cache: CacheStore, model_source: str,
                  skeleton: nn.Module | None = None) -> list[dict]:
    """One row per stage and per cached step, in run order: {stage, cache: hit|miss|n/a, key}.
    `skeleton` is the model on the meta device when the caller has built it already."""
    model = config.model
    tokenizer = load_tokenizer(model_source, trust_remote_code=model.trust_remote_code,
                               revision=model.revision)
    spec = config.prune_spec()
    targets: list[str] = []
    if spec is not None:
        skeleton = skeleton if skeleton is not None else meta_model(
            model_source, revision=model.revision, trust_remote_code=model.trust_remote_code)
        targets = [t.name for t in spec.targets_of(skeleton)]
    names = config.stage_names()
    evaluate = config.stage("evaluate")
    run_plan = plan_run(config, names, model_fingerprint(model_source, model.revision), targets,
                        lambda: calibration_windows_for(config, tokenizer),
                        lambda: evaluation_windows_for(config, tokenizer),
                        lambda: resolve_tasks(evaluate.lm_eval, config.base_dir, cache.root))
    rows = [_row(use, cache) for use in run_plan.uses if STAGE_OF_STEP[use.step] is None]
    for name in names:
        rows += [_row(use, cache) for use in run_plan.uses if STAGE_OF_STEP[use.step] == name]
        if not run_plan.has(name):
            rows.append({"stage": name, "cache": "n/a", "key": None})
    return rows
