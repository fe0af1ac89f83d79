"""Cache keys: the only place where the identity of a cached artifact is decided.

A key is the sha256 of the canonical JSON of an explicit record (sorted keys, no whitespace), so
it is stable across processes, Python versions and machines, and every input to it is visible in
one dict. Never build a key with an f-string or from ``repr``.

What the calibration key DELIBERATELY LEAVES OUT, and why:

- device: statistics are device-independent up to float rounding; a miss is not worth it.
- batch size: it changes only the float32 summation order, not what is summed.
- evaluation settings (perplexity data, gates, generation checks): they run after calibration.
- output dir: where the artifact is written has no effect on the statistics.
- progress / logging / verbosity flags: presentation only.
- the mask sparsity and pattern in dense mode: dense statistics come from the unpruned model and
  serve any sparsity or pattern, so ``plan_digest`` is forced to None in the record there.
- the model path string: the weight fingerprint identifies the weights, so a moved or renamed
  checkpoint directory still hits.

Fields added after the first release (``hessian``, ``means``, the plan ``settings``) enter a
record only
when they differ from the behaviour before them, so entries written earlier keep their keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Bump whenever the meaning of the collected statistics changes (what is summed, its dtype, which
# inputs are hooked), so that entries written by older code stop matching.
COLLECTOR_VERSION = 1

CALIBRATION_SCHEMA = "calibration-stats"
PLAN_SCHEMA = "prune-plan"


def canonical_json(record: dict[str, Any]) -> str:
    """Serialise a record deterministically: sorted keys, no whitespace, JSON types only."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def digest_of(record: dict[str, Any]) -> str:
    """Return the hex sha256 of a record's canonical JSON: the generic way to make a cache key."""
    return hashlib.sha256(canonical_json(record).encode("utf-8")).hexdigest()


def plan_digest(method: str, sparsity: float, pattern: str, group: str,
                settings: dict[str, Any] | None = None) -> str:
    """Digest of how layers are pruned, for sequential-mode keys.

    In sequential mode the statistics of layer i are taken after layers < i were pruned, so they
    depend on the pruning method, sparsity, pattern (e.g. "unstructured", "2:4"), comparison
    group and `settings`: the layer-wise allocation and SparseGPT's parameters, when used.
    ``sparsity`` is normalised to float so 1 and 1.0 give the same digest.
    """
    record = {
        "schema": PLAN_SCHEMA,
        "method": method,
        "sparsity": float(sparsity),
        "pattern": pattern,
        "group": group,
    }
    if settings:
        record["settings"] = settings
    return digest_of(record)


@dataclass(frozen=True)
class CalibrationKey:
    """Everything the activation statistics of a calibration run depend on.

    ``targets`` is order-insensitive (sorted in the record). ``plan_digest`` counts only in
    sequential mode; in dense mode it is ignored so any sparsity or pattern reuses the entry.
    """

    model_fingerprint: str
    calibration_digest: str
    nsamples: int
    seqlen: int
    seed: int
    dtype: str
    mode: str
    targets: tuple[str, ...]
    collector_version: int = COLLECTOR_VERSION
    plan_digest: str | None = None
    hessian: bool = False  # X^T X per target too (SparseGPT)
    means: bool = False  # the per-channel sums must be present (DSnoT); older entries lack them

    def __post_init__(self) -> None:
        """Store ``targets`` as a tuple whatever sequence was passed (``mode`` comes validated
        from the pipeline schema: "sequential" or "dense")."""
        object.__setattr__(self, "targets", tuple(self.targets))

    def record(self) -> dict[str, Any]:
        """Return the explicit record the key is the digest of (also stored in the manifest)."""
        record = {
            "schema": CALIBRATION_SCHEMA,
            "model_fingerprint": self.model_fingerprint,
            "calibration_digest": self.calibration_digest,
            "nsamples": int(self.nsamples),
            "seqlen": int(self.seqlen),
            "seed": int(self.seed),
            "dtype": self.dtype,
            "mode": self.mode,
            "targets": sorted(set(self.targets)),
            "collector_version": int(self.collector_version),
            "plan_digest": self.plan_digest if self.mode == "sequential" else None,
        }
        if self.hessian:
            record["hessian"] = True
        if self.means:
            record["means"] = True
        return record

    def digest(self) -> str:
        """Return the cache key: the sha256 of the record's canonical JSON."""
        return digest_of(self.record())


ESD_ALPHAS_SCHEMA = "esd-alphas"
# Bump when the ESD or the Hill estimator changes what it returns.
ESD_VERSION = 1


def esd_alphas_key(model_fingerprint: str, targets: list[str], xmin: str) -> str:
    """Key of the per-matrix power-law alphas: they depend on the weights and the xmin rule only
    (not on the data, the sparsity or the epsilon that maps them to ratios)."""
    return digest_of({"schema": ESD_ALPHAS_SCHEMA, "model_fingerprint": model_fingerprint,
                      "targets": sorted(set(targets)), "xmin": xmin, "version": ESD_VERSION})


DENSE_PERPLEXITY_SCHEMA = "dense-perplexity"


def dense_perplexity_key(
    model_fingerprint: str, evaluation_digest: str, seqlen: int, max_windows: int | None, dtype: str
) -> str:
    """Key of the unpruned model's perplexity on one evaluation set.

    Left out: the evaluation batch size (float32 log-probabilities summed in float64, so only
    rounding changes) and the device, for the same reasons as the calibration key.
    """
    return digest_of(
        {
            "schema": DENSE_PERPLEXITY_SCHEMA,
            "model_fingerprint": model_fingerprint,
            "evaluation_digest": evaluation_digest,
            "seqlen": int(seqlen),
            "max_windows": None if max_windows is None else int(max_windows),
            "dtype": dtype,
        }
    )


LM_EVAL_SCHEMA = "dense-lm-eval"


def lm_eval_key(model_fingerprint: str, dtype: str, tasks: list[dict[str, Any]],
                num_fewshot: int, limit: int | None, lm_eval_version: str) -> str:
    """Key of the unpruned model's lm-eval scores on a set of tasks.

    `tasks` holds one record per task: its name, its version and the digest of what defines it
    (the builtin task's items, a local task folder's files, a hub task's resolved config), so
    an edited task misses even when its version was not bumped. Left out: the batch size (it
    changes only padding and rounding), the device, and the metric chosen per task (every
    metric is stored).
    """
    return digest_of({
        "schema": LM_EVAL_SCHEMA,
        "model_fingerprint": model_fingerprint,
        "dtype": dtype,
        "tasks": sorted(tasks, key=lambda task: str(task.get("name"))),
        "num_fewshot": int(num_fewshot),
        "limit": None if limit is None else int(limit),
        "lm_eval_version": lm_eval_version,
    })
