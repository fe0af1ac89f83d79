"""Rules that need the model's layer shapes: checked on a meta-device model, without weights.

The model is built from its config alone (`AutoConfig` + `from_config` under
`torch.device("meta")`), so the check is instant and reads no weight file. It refuses an N:M
pattern that does not divide a target's in_features, include/exclude globs that match nothing,
and targets outside the decoder layers that sequential calibration cannot reach.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wanda_export.config.pipeline import PipelineConfig
from wanda_export.config.problems import Problem, config_error
from wanda_export.sparsity.pattern import parse_pattern

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

_LISTED = 6


def meta_model(
    source: str | Path | PretrainedConfig,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> nn.Module:
    """Build the causal LM of `source` (a directory, .gguf file, hub id or config) on the meta
    device: real module names and shapes, no memory and no weights read."""
    import torch
    from transformers import AutoModelForCausalLM, PretrainedConfig

    from wanda_export.model.load_errors import loading_errors
    from wanda_export.model.loading import pretrained_config

    config = (
        source
        if isinstance(source, PretrainedConfig)
        else pretrained_config(source, trust_remote_code=trust_remote_code, revision=revision)
    )
    where = f"the model of {config.name_or_path or config.model_type}"
    with torch.device("meta"), loading_errors(where, trust_remote_code):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _listing(names: list[str]) -> str:
    """At most a few names, then how many more."""
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def mask_problems(config: PipelineConfig, model: nn.Module) -> list[Problem]:
    """The mask stage's problems on this model's linear layers (empty without a mask stage)."""
    from wanda_export.model.layers import find_targets, is_linear

    index = config.stage_index("mask")
    if index is None:
        return []
    mask = config.stages[index].body
    at = ("stages", index, "mask")
    names = [name for name, module in model.named_modules() if is_linear(module)]
    problems = [
        Problem(
            (*at, "include", i),
            f"{glob!r} matches no linear layer (they are named like {_listing(names[:3])})",
        )
        for i, glob in enumerate(mask.include)
        if not any(fnmatch.fnmatchcase(name, glob) for name in names)
    ]
    try:
        chosen = [t.name for t in find_targets(model, mask.include or None)]
    except ValueError as error:
        return [*problems, Problem(at, str(error))]
    problems += [
        Problem((*at, "exclude", i), f"{glob!r} matches none of the layers to prune")
        for i, glob in enumerate(mask.exclude)
        if not any(fnmatch.fnmatchcase(name, glob) for name in chosen)
    ]
    try:
        targets = mask.targets_of(model)
    except ValueError:
        return [*problems, Problem((*at, "exclude"), "include/exclude leave no layer to prune")]
    pattern = parse_pattern(mask.pattern)
    bad = [f"{t.name} ({t.in_features})" for t in targets if not pattern.fits(t.in_features)]
    if bad:
        problems.append(Problem((*at, "pattern"), pattern.misfit_message(_listing(bad))))
    calibrate = config.stage("calibrate")
    outside = [t.name for t in targets if t.layer_index is None]
    if outside and calibrate is not None and calibrate.mode == "sequential":
        problems.append(
            Problem(
                (*at, "include"),
                "sequential calibration only reaches the decoder layers, not "
                f"{_listing(outside)}; set mode: dense in the calibrate stage, or exclude them",
            )
        )
    return problems


def check_against_model(config: PipelineConfig, model: Any) -> None:
    """Check the mask stage against the model's layers before any weight is loaded.

    `model` is an nn.Module (e.g. already loaded, or from `meta_model`), a transformers config,
    a checkpoint directory, a .gguf file or a hub id. Raises one ConfigError listing every
    problem, at the file positions when the config came from `load_config`.
    """
    from torch import nn

    if config.stage("mask") is None:
        return
    module = (
        model
        if isinstance(model, nn.Module)
        else meta_model(
            model, trust_remote_code=config.model.trust_remote_code, revision=config.model.revision
        )
    )
    problems = mask_problems(config, module)
    if problems:
        raise config_error(config.source, problems, config._locations)
