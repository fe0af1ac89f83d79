"""What a pipeline's cached outputs are keyed on, built from the config alone: the token windows
and the cache keys. Shared by the run (`RunContext`, the stages) and by `plan`, so both always
agree on whether an entry exists."""

from __future__ import annotations

import torch

from wanda_export.cache.keys import CalibrationKey, dense_perplexity_key, plan_digest
from wanda_export.config import PipelineConfig
from wanda_export.data.sources import load_documents
from wanda_export.data.windows import (
    calibration_windows,
    evaluation_ids,
    split_windows,
    token_digest,
)


def calibration_windows_for(config: PipelineConfig, tokenizer) -> torch.Tensor:
    """[nsamples, seqlen] calibration tokens of the pipeline's calibration data."""
    data = config.data.calibration
    source = data.to_text_source(config.base_dir)
    return calibration_windows(tokenizer, load_documents(source, "calibration"), data.nsamples,
                               data.seqlen, data.seed, strategy=source.window_strategy)


def evaluation_windows_for(config: PipelineConfig, tokenizer) -> torch.Tensor:
    """[W, seqlen] non-overlapping windows of the tokenized evaluation text."""
    data = config.data.evaluation
    documents = load_documents(data.to_text_source(config.base_dir), "evaluation")
    return split_windows(evaluation_ids(tokenizer, documents), data.seqlen, data.max_windows)


def calibration_key_for(config: PipelineConfig, fingerprint: str, windows: torch.Tensor,
                        target_names: list[str]) -> CalibrationKey:
    """The key of the activation statistics this pipeline collects."""
    spec, data = config.prune_spec(), config.data.calibration
    return CalibrationKey(
        model_fingerprint=fingerprint,
        calibration_digest=token_digest(windows),
        nsamples=data.nsamples,
        seqlen=data.seqlen,
        seed=data.seed,
        dtype=config.model.dtype,
        mode=spec.mode,
        targets=tuple(target_names),
        plan_digest=plan_digest(spec.method, spec.sparsity, spec.pattern, spec.comparison_group),
    )


def dense_perplexity_key_for(config: PipelineConfig, fingerprint: str,
                             windows: torch.Tensor) -> str:
    """The key of the unpruned model's perplexity on this pipeline's evaluation windows."""
    data = config.data.evaluation
    return dense_perplexity_key(fingerprint, token_digest(windows), data.seqlen,
                                data.max_windows, config.model.dtype)
