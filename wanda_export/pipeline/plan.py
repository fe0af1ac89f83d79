"""`wanda-export plan`: each stage of a pipeline and whether its output is already cached.

Reads the tokenizer, the data and the weight fingerprint, builds the model on the meta device
for its layer names, and looks the keys up; no weights are loaded and nothing is computed.
"""

from __future__ import annotations

from pathlib import Path

from wanda_export.cache.keys import esd_alphas_key
from wanda_export.cache.store import CacheStore
from wanda_export.config import PipelineConfig, meta_model
from wanda_export.model.fingerprint import model_fingerprint
from wanda_export.model.layers import find_targets
from wanda_export.pipeline.inputs import (
    calibration_key_for,
    calibration_windows_for,
    dense_perplexity_key_for,
    evaluation_windows_for,
)


def _tokenizer(source: str, config: PipelineConfig):
    from transformers import AutoTokenizer

    path = Path(source)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(source, revision=config.model.revision,
                                         trust_remote_code=config.model.trust_remote_code)


def _row(stage: str, cache: CacheStore, kind: str | None = None, key: str | None = None) -> dict:
    if key is None:
        return {"stage": stage, "cache": "n/a", "key": None}
    return {"stage": stage, "key": key,
            "cache": "hit" if cache.get(kind, key) is not None else "miss"}


def plan_pipeline(config: PipelineConfig, cache: CacheStore, model_source: str) -> list[dict]:
    """One row per stage: {stage, cache: hit|miss|n/a, key}."""
    tokenizer = _tokenizer(model_source, config)
    fingerprint = model_fingerprint(model_source, config.model.revision)
    spec = config.prune_spec()
    rows = []
    evaluate = config.stage("evaluate")
    if evaluate is not None and evaluate.perplexity and evaluate.dense_baseline:
        windows = evaluation_windows_for(config, tokenizer)
        key = dense_perplexity_key_for(config, fingerprint, windows)
        rows.append(_row("evaluate-dense", cache, "perplexity", key))
    names: list[str] = []
    if spec is not None:
        model = meta_model(model_source, revision=config.model.revision,
                           trust_remote_code=config.model.trust_remote_code)
        names = [t.name for t in find_targets(model, list(spec.include) or None,
                                              list(spec.exclude) or None)]
    for name in config.stage_names():
        if name == "calibrate" and spec is not None and spec.needs_calibration:
            windows = calibration_windows_for(config, tokenizer)
            if spec.allocation == "owl" and spec.calibrates_sequentially:
                key = calibration_key_for(config, fingerprint, windows, names, mode="dense",
                                          hessian=False).digest()
                rows.append(_row("allocate-owl-statistics", cache, "calibration", key))
            key = calibration_key_for(config, fingerprint, windows, names).digest()
            rows.append(_row(name, cache, "calibration", key))
        elif name == "mask" and spec is not None and spec.allocation == "alphapruning":
            key = esd_alphas_key(fingerprint, names, spec.alpha_xmin)
            rows.append(_row("allocate-alphas", cache, "alphas", key))
            rows.append(_row(name, cache))
        else:
            rows.append(_row(name, cache))
    return rows
