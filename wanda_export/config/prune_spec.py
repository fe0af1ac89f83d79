"""The library's pruning settings: one object saying what to prune and how, made of the
calibrate, score and mask stage models, so its defaults, bounds and rules are theirs and
`PruneSpec(sparsity=0.6, pattern="2:4")` is refused exactly as the pipeline file would be."""

from __future__ import annotations

from typing import Any, Self

from pydantic import ConfigDict, ValidationError, model_validator

from wanda_export.config.base import Loc, problem, readable_errors, rules_error
from wanda_export.config.inputs import CalibrationBatch
from wanda_export.config.stages import CalibrateStage, MaskStage, ScoreStage, refine_problem
from wanda_export.errors import ConfigError, did_you_mean
from wanda_export.sparsity.pattern import Pattern, parse_pattern

# The papers' comparison group of unstructured masks per method: Wanda compares within each
# output row, magnitude within the layer (so does RIA's reference code: its relative importance
# already normalises rows and columns); SparseGPT chooses its mask per block of columns.
METHOD_GROUPS = {"wanda": "row", "magnitude": "layer", "sparsegpt": "column-block",
                 "ria": "layer"}


class SettingsError(ConfigError, ValueError):
    """Settings refused in Python (`PruneSpec`, `prune`): the CLI's ConfigError with the same
    messages, and a ValueError as Python code expects of a bad argument."""

    @classmethod
    def of(cls, owner: str, error: ValidationError, allowed: list[str]) -> SettingsError:
        """Every problem of `error` as `owner: N error(s)` then one `key: message` per line."""
        def unknown(loc: Loc) -> str:
            key = str(loc[-1])
            return (f"unknown setting {key!r}; allowed: {', '.join(allowed)}"
                    + did_you_mean(key, allowed))

        rows = [f"{'.'.join(map(str, loc))}: {message}" if loc else message
                for loc, message, _ in readable_errors(error, unknown)]
        count = f"{len(rows)} error{'s' if len(rows) != 1 else ''}"
        return cls("\n".join([f"{owner}: {count} in the settings", *rows]))


class PruneSpec(CalibrateStage, ScoreStage, MaskStage, CalibrationBatch):
    """What to prune and how: the calibration mode and batch size, the scoring method (with
    SparseGPT's dampening and block size), the sparsity, pattern, layer globs and layer-wise
    allocation. Every field is the pipeline file's key of the same name; from Python, values
    are converted where that loses nothing (a tuple of globs, an integer sparsity)."""

    model_config = ConfigDict(strict=False)

    def __init__(self, **settings: Any) -> None:
        """Validate `settings`; refused ones raise `SettingsError` with the pipeline file's
        messages (a ConfigError, exit code 2, and a ValueError)."""
        try:
            super().__init__(**settings)
        except ValidationError as error:
            raise SettingsError.of(type(self).__name__, error, list(type(self).model_fields)
                                   ) from None

    @model_validator(mode="after")
    def _refine_fits_the_method(self) -> Self:
        message = refine_problem(self.method, self.refine)
        if message:
            raise rules_error([problem(("refine",), message)])
        return self

    @property
    def parsed_pattern(self) -> Pattern:
        """The pattern as a `Pattern` ("unstructured" or N:M along K)."""
        return parse_pattern(self.pattern)

    @property
    def comparison_group(self) -> str:
        """Which weights compete for pruning: `group`, else the method's own."""
        return self.group or METHOD_GROUPS[self.method]

    @property
    def needs_hessian(self) -> bool:
        """SparseGPT and the ADMM update reconstruct from X^T X, collected in the same
        calibration pass."""
        return self.method == "sparsegpt" or self.update == "admm"

    @property
    def needs_means(self) -> bool:
        """DSnoT reads each input channel's mean (and variance) besides its sum of squares."""
        return self.refine == "dsnot"

    @property
    def needs_calibration(self) -> bool:
        """Whether activations are needed: for the scores, SparseGPT's Hessian, DSnoT, OWL."""
        return self.prunes_from_statistics or self.allocation == "owl"

    @property
    def prunes_from_statistics(self) -> bool:
        """Whether the layers' own scores, reconstruction or refinement use activation
        statistics (Wanda, RIA, SparseGPT, DSnoT); magnitude alone needs none (OWL's ratios are
        measured beforehand)."""
        return _reads_activations(self.method) or self.needs_hessian or self.needs_means

    @property
    def score_settings(self) -> dict[str, float]:
        """The scoring method's own settings, as `compute_scores` takes them."""
        return {name: getattr(self, name) for name in self.RIA_SETTINGS} if (
            self.method == "ria") else {}

    @property
    def refinement(self) -> dict[str, Any] | None:
        """`refine` with its settings, as the report and the cache keys name it (None without)."""
        return None if self.refine is None else {
            "method": self.refine, **{name: getattr(self, name) for name in self.REFINE_SETTINGS}}

    @property
    def weight_update(self) -> dict[str, Any] | None:
        """`update` with its settings, as the report and the cache keys name it (None without)."""
        return None if self.update is None else {
            "method": self.update, **{name: getattr(self, name) for name in self.UPDATE_SETTINGS}}

    @property
    def calibrates_sequentially(self) -> bool:
        """Layer-by-layer calibration on pruned inputs: only in sequential mode, and only when
        the layers' own scores or reconstruction use statistics (magnitude with OWL needs the
        dense model's statistics alone)."""
        return self.mode == "sequential" and self.prunes_from_statistics


def _reads_activations(method: str) -> bool:
    """Whether `method`'s scores read activation statistics (imported here: sparsity.score
    imports torch, which validating a config does not need)."""
    from wanda_export.sparsity.score import METHODS_NEEDING_ACTIVATIONS

    return method in METHODS_NEEDING_ACTIVATIONS
