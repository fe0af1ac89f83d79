"""Task accuracy in a run: lm-eval's scores of the dense model (cached, before any pruning) and
of the pruned model (in the evaluate stage), and what goes into the run record.

The dense scores are keyed on the weights, the tasks (name, version and content), few-shot,
limit and lm-eval's version (`cache/keys.lm_eval_key`), so a second release of the same base
model scores only the pruned one; the `evaluate-dense-lm-eval` stage record says hit or miss.
"""

from __future__ import annotations

from wanda_export.evaluate.harness import (
    TaskScores,
    score_tasks,
    scores_from_tensors,
    scores_to_tensors,
)
from wanda_export.pipeline.context import RunContext
from wanda_export.pipeline.run_plan import DENSE_LM_EVAL
from wanda_export.report.metrics import TaskAccuracy
from wanda_export.report.record import StageRecord


def _score(ctx: RunContext, label: str) -> dict[str, TaskScores]:
    """Score the model as it is now on the run's lm-eval tasks."""
    settings = ctx.config.stage("evaluate").lm_eval
    with ctx.progress.task(f"lm-eval ({label})", 1) as advance:
        scores = score_tasks(ctx.loaded.model, ctx.loaded.tokenizer, ctx.lm_eval_tasks, settings)
        advance(1)
    return scores


def run_dense_lm_eval(ctx: RunContext) -> StageRecord:
    """lm-eval scores of the unpruned model (before any mask), from the cache or measured."""
    use = ctx.run_plan.use(DENSE_LM_EVAL)
    tensors, hit = ctx.cache.get_or_compute(
        use.kind, use.key, lambda: scores_to_tensors(_score(ctx, "dense")), use.record,
        metadata={"tasks": [task.name for task in ctx.lm_eval_tasks.tasks]})
    ctx.dense_scores = scores_from_tensors(tensors)
    return StageRecord(DENSE_LM_EVAL, cache="hit" if hit else "miss",
                       detail={"key": use.key,
                               "tasks": {name: s.n for name, s in ctx.dense_scores.items()}})


def task_accuracy(metric: str, dense: TaskScores, pruned: TaskScores) -> TaskAccuracy:
    """One task's dense vs pruned comparison on `metric`."""
    before, after = dense.values[metric], pruned.values[metric]
    return TaskAccuracy(metric=metric, dense=before, pruned=after,
                        recovery=after / before if before > 0 else None,
                        dense_stderr=dense.stderrs.get(metric),
                        pruned_stderr=pruned.stderrs.get(metric), n=pruned.n)


def evaluate_pruned_lm_eval(ctx: RunContext) -> dict[str, dict]:
    """Score the pruned model, put dense vs pruned per task into the record
    (`metrics.lm_eval`), and return the stage detail (metric and both values per task)."""
    settings = ctx.config.stage("evaluate").lm_eval
    pruned = _score(ctx, "pruned")
    detail = {}
    for task, scores in pruned.items():
        dense = (ctx.dense_scores or {}).get(task)
        if dense is None:
            continue
        metric = scores.metric(task, settings.metric.get(task))
        measured = ctx.record.metrics.lm_eval[task] = task_accuracy(metric, dense, scores)
        detail[task] = {"metric": metric, "dense": measured.dense, "pruned": measured.pruned}
    return detail
