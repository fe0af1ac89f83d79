"""The one-call Python API: `prune(model, method=..., sparsity=..., pattern=..., calibration=...,
out=...)`.

Both ways build the same in-memory `PipelineConfig` a pipeline file would give (so every
setting is checked exactly as the CLI checks it): with `out`, the pipeline runner writes a
release folder (report.json, summary.md, the checkpoint) as `wanda-export run` would; without
it, `prune_model` prunes in memory and the result can be saved. Settings left out take the
pipeline file's defaults.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from wanda_export.config import PipelineConfig
from wanda_export.config.inputs import CalibrationData
from wanda_export.config.prune_spec import PruneSpec, SettingsError
from wanda_export.config.stages import CalibrateStage, MaskStage, ScoreStage
from wanda_export.errors import ConfigError

Calibration = str | os.PathLike | Sequence[str | os.PathLike] | Any  # text, files or windows


@dataclass
class PruneOutcome:
    """What `prune` made: the report (report.json's content with `out`; the plan and the
    verified sparsity in memory), and either the release folder or the pruned model."""

    report: dict[str, Any]
    out: Path | None = None
    model: Any = None  # the pruned nn.Module, in memory (None when written to `out`)
    tokenizer: Any = None

    @property
    def sparsity(self) -> float:
        """The overall sparsity verified in the pruned weights."""
        return self.report["sparsity"]["overall"]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the in-memory pruned model as a safetensors checkpoint (with its tokenizer and
        pruning plan) into the new folder `directory`, all at once or not at all."""
        from wanda_export.atomic import replace_directory, staging_directory
        from wanda_export.export.safetensors import export_checkpoint

        target = Path(directory)
        if self.model is None:
            raise ConfigError(f"the release is already written to {self.out}; nothing to save")
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"{target} is not empty; save into a new folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        with staging_directory(target) as staging:
            export_checkpoint(self.model, self.tokenizer, staging, self.report["plan"])
            replace_directory(staging, target)
        return target


def prune(model: Any = None, *, method: str | None = None, sparsity: float | None = None,
          pattern: str | None = None, calibration: Calibration = None,
          out: str | os.PathLike | None = None, tokenizer: Any = None,
          nsamples: int | None = None, seqlen: int | None = None, seed: int | None = None,
          dtype: str | None = None, device: str | None = None, force: bool = False,
          **settings: Any) -> PruneOutcome:
    """Prune `model` (a hub id, a checkpoint folder or .gguf file, an nn.Module with its
    `tokenizer`, or None for the offline default model) and verify it.

    `calibration` is text (a str), files (a Path, or a list of paths), token windows (a
    [nsamples, seqlen] tensor, in memory only) or None (the offline built-in corpus). Any other
    setting of the calibrate, score and mask stages goes in `settings` (mode, include,
    allocation, ...). With `out` a release folder is written as `wanda-export run` writes one
    (`force` as its --force); without, the model is pruned in memory (`PruneOutcome.save`).
    Refused settings raise `SettingsError` (a ConfigError and a ValueError) with the CLI's
    messages.
    """
    chosen = {"method": method, "sparsity": sparsity, "pattern": pattern, **settings}
    spec_settings = {key: value for key, value in chosen.items() if value is not None}
    PruneSpec(**spec_settings)  # refuses what the pipeline file refuses, by the same messages
    in_memory = not isinstance(model, (str, os.PathLike, type(None)))
    windows = calibration if _is_tensor(calibration) else None
    if out is not None and (in_memory or windows is not None):
        raise SettingsError("prune: out= writes a release from a model path and calibration "
                            "text or files; prune a model object or token windows in memory "
                            "(out=None), then call .save()")
    with _calibration_source(None if windows is not None else calibration) as source:
        config = _config(None if in_memory else model, spec_settings, source,
                         {"nsamples": nsamples, "seqlen": seqlen, "seed": seed},
                         {"dtype": dtype, "device": device}, export=out is not None)
        if out is not None:
            return _release(config, Path(out), force)
        return _in_memory(config, model if in_memory else None, tokenizer, windows)


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "shape")


@contextmanager
def _calibration_source(calibration: Any) -> Iterator[dict[str, Any]]:
    """The data.calibration source for `calibration`: built-in for None, a text file for a
    string (written to a temporary folder), the folder or glob a path names, and a temporary
    folder of copies, in order, for a list of files."""
    if calibration is None:
        yield {"source": "builtin"}
        return
    if isinstance(calibration, os.PathLike):
        yield {"source": "text", "path": os.fspath(calibration)}
        return
    with tempfile.TemporaryDirectory(prefix="wanda-export-calibration-") as folder:
        if isinstance(calibration, str):
            Path(folder, "calibration.txt").write_text(calibration, encoding="utf-8")
        elif isinstance(calibration, Sequence) and calibration:
            for index, path in enumerate(calibration):
                shutil.copyfile(path, Path(folder, f"{index:05d}.txt"))
        else:
            raise SettingsError("prune: calibration is text, a path, a list of files or a "
                                f"tensor of token windows, not {type(calibration).__name__}")
        yield {"source": "text", "path": folder}


def _config(model_path: Any, spec_settings: dict[str, Any], source: dict[str, Any],
            sizes: dict[str, Any], placement: dict[str, Any], *, export: bool
            ) -> PipelineConfig:
    """The pipeline of this call, validated like a pipeline file."""
    spec = PruneSpec(**spec_settings)  # its values converted (a tuple of globs to a list)

    def section(model: type) -> dict[str, Any]:
        return {key: getattr(spec, key) for key in spec_settings if key in model.model_fields}

    calibration = {**source, **section(CalibrationData),
                   **{key: value for key, value in sizes.items() if value is not None}}
    stages = ([{"calibrate": section(CalibrateStage)}] if spec.needs_calibration else [])
    stages += [{"score": section(ScoreStage)}, {"mask": section(MaskStage)}, {"verify": {}}]
    stages += [{"export": {"formats": ["safetensors"]}}] if export else []
    data = {"version": 1, "stages": stages,
            "model": {"path": None if model_path is None else os.fspath(model_path),
                      **{key: value for key, value in placement.items() if value is not None}},
            "data": {"calibration": calibration} if spec.needs_calibration else {}}
    try:
        return PipelineConfig.model_validate(data, context={"base_dir": Path.cwd(),
                                                            "source": "prune()"})
    except ValidationError as error:
        raise SettingsError.of("prune", error, list(PruneSpec.model_fields)) from None


def _release(config: PipelineConfig, out: Path, force: bool) -> PruneOutcome:
    from wanda_export.pipeline.runner import run_pipeline

    record = run_pipeline(config, out, force=force)
    return PruneOutcome(report=record.to_dict(), out=out)


def _in_memory(config: PipelineConfig, model: Any, tokenizer: Any, windows: Any
               ) -> PruneOutcome:
    from wanda_export.model.loading import load_model
    from wanda_export.pipeline.inputs import calibration_windows_for
    from wanda_export.prune import prune_model
    from wanda_export.report.metrics import SparsityRecord

    if model is None:
        loaded = load_model(config.model.resolved_path(config.base_dir),
                            dtype=config.model.dtype, device=config.model.device)
        model, tokenizer = loaded.model, loaded.tokenizer
    spec = config.prune_spec()
    if spec.needs_calibration and windows is None:
        if tokenizer is None:
            raise SettingsError("prune: a model object needs its tokenizer= to read the "
                                "calibration text (or pass calibration token windows)")
        windows = calibration_windows_for(config, tokenizer)
    result = prune_model(model, spec, windows if spec.needs_calibration else None)
    sparsity = SparsityRecord(pattern=spec.pattern, target=spec.sparsity, report=result.report,
                              allocation=result.allocation, verified=True,
                              importance_kept=result.importance_kept)
    plan = {"method": spec.method, "sparsity": spec.sparsity, "pattern": spec.pattern,
            "group": spec.comparison_group, "mode": spec.mode,
            "layers": {name: layer.sparsity for name, layer in result.report.layers.items()}}
    report = {"plan": plan, "sparsity": sparsity.to_dict(), "seconds": result.seconds}
    return PruneOutcome(report=report, model=model, tokenizer=tokenizer)
