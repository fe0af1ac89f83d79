"""`wanda-export plan`: each stage of a pipeline and whether its output is already cached.

Reads the tokenizer, the data and the weight fingerprint, builds the model on the meta device
for its layer names, and looks the keys up; no weights are loaded and nothing is computed.
"""

from __future__ import annotations

from pathlib import Path

from wanda_export.cache.keys import CalibrationKey, dense_perplexity_key, plan_digest
from wanda_export.cache.store import CacheStore
from wanda_export.config import PipelineConfig, meta_model
from wanda_export.data.sources import load_documents
from wanda_export.data.windows import (
    calibration_windows,
    evaluation_ids,
    split_windows,
    token_digest,
)
from wanda_export.model.fingerprint import model_fingerprint
from wanda_export.model.layers import find_targets


def _tokenizer(source: str, config: PipelineConfig):
    from transformers import AutoTokenizer

    path = Path(source)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(source, revision=config.model.revision,
                                         trust_remote_code=config.model.trust_remote_code)


def plan_pipeline(config: PipelineConfig, cache: CacheStore, model_source: str) -> list[dict]:
    """One row per stage: {stage, cache: hit|miss|n/a, key}."""
    tokenizer = _tokenizer(model_source, config)
    fingerprint = model_fingerprint(model_source, config.model.revision)
    spec = config.prune_spec()
    rows = []
    evaluate = config.stage("evaluate")
    if evaluate is not None and evaluate.perplexity and evaluate.dense_baseline:
        data = config.data.evaluation
        ids = evaluation_ids(tokenizer, load_documents(
            data.to_text_source(config.base_dir), "evaluation"))
        windows = split_windows(ids, data.seqlen, data.max_windows)
        key = dense_perplexity_key(fingerprint, token_digest(windows), data.seqlen,
                                   data.max_windows, config.model.dtype)
        rows.append({"stage": "evaluate-dense", "key": key,
                     "cache": "hit" if cache.get("perplexity", key) is not None else "miss"})
    for name in config.stage_names():
        row = {"stage": name, "cache": "n/a", "key": None}
        if name == "calibrate" and spec is not None and spec.needs_calibration:
            data = config.data.calibration
            source = data.to_text_source(config.base_dir)
            windows = calibration_windows(tokenizer, load_documents(source, "calibration"),
                                          data.nsamples, data.seqlen, data.seed,
                                          strategy=source.window_strategy)
            targets = find_targets(meta_model(model_source, revision=config.model.revision),
                                   list(spec.include) or None, list(spec.exclude) or None)
            key = CalibrationKey(
                model_fingerprint=fingerprint, calibration_digest=token_digest(windows),
                nsamples=data.nsamples, seqlen=data.seqlen, seed=data.seed,
                dtype=config.model.dtype, mode=spec.mode,
                targets=tuple(t.name for t in targets),
                plan_digest=plan_digest(spec.method, spec.sparsity, spec.pattern,
                                        spec.comparison_group),
            ).digest()
            row = {"stage": name, "key": key,
                   "cache": "hit" if cache.get("calibration", key) is not None else "miss"}
        rows.append(row)
    return rows
