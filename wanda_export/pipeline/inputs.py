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
from wanda_export.prune import PruneSpec


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


def plan_settings(spec: PruneSpec) -> dict:
    """The pruning settings beyond method/sparsity/pattern/group that shape sequential
    statistics: the layer-wise allocation, SparseGPT's, RIA's, the channel permutation, the
    refinement and the weight update, each only when in use."""
    settings: dict = {}
    if spec.allocation != "uniform":
        names = [name for group in spec.ALLOCATION_SETTINGS.values() for name in group]
        settings["allocation"] = {"method": spec.allocation,
                                  **{name: getattr(spec, name) for name in names}}
    if spec.method == "sparsegpt":
        settings["sparsegpt"] = {name: getattr(spec, name) for name in spec.SPARSEGPT_SETTINGS}
    if spec.method == "ria":
        settings["ria"] = spec.score_settings
    if spec.permute:
        settings["permute"] = True
    if spec.refinement is not None:
        settings["refine"] = spec.refinement
    if spec.weight_update is not None:
        settings["update"] = spec.weight_update
    return settings


def calibration_key_for(config: PipelineConfig, fingerprint: str, windows: torch.Tensor,
                        target_names: list[str], mode: str,
                        hessian: bool | None = None) -> CalibrationKey:
    """The key of the activation statistics collected in `mode` ("dense" or "sequential", as
    `run_plan` decides); `hessian` overrides the method's need for X^T X (OWL's statistics)."""
    spec, data = config.prune_spec(), config.data.calibration
    return CalibrationKey(
        model_fingerprint=fingerprint,
        calibration_digest=token_digest(windows),
        nsamples=data.nsamples,
        seqlen=data.seqlen,
        seed=data.seed,
        dtype=config.model.dtype,
        mode=mode,
        targets=tuple(target_names),
        plan_digest=plan_digest(spec.method, spec.sparsity, spec.pattern, spec.comparison_group,
                                plan_settings(spec)),
        hessian=spec.needs_hessian if hessian is None else hessian,
        means=spec.needs_means and hessian is None,
    )


def dense_perplexity_key_for(config: PipelineConfig, fingerprint: str,
                             windows: torch.Tensor) -> str:
    """The key of the unpruned model's perplexity on this pipeline's evaluation windows."""
    data = config.data.evaluation
    return dense_perplexity_key(fingerprint, token_digest(windows), data.seqlen,
                                data.max_windows, config.model.dtype)
