"""What the stages of one run share: the config, the loaded model, data windows, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from wanda_export.cache.store import CacheStore
from wanda_export.calibrate.stats import ChannelStats
from wanda_export.config import PipelineConfig
from wanda_export.data.sources import load_documents
from wanda_export.data.windows import calibration_windows, evaluation_ids, split_windows
from wanda_export.model.layers import Target, find_targets
from wanda_export.model.loading import LoadedModel
from wanda_export.pipeline.progress import NullProgress
from wanda_export.prune import PruneSpec
from wanda_export.report.record import RunRecord


@dataclass
class RunContext:
    """Mutable state of one pipeline run; stages read and fill it in order."""

    config: PipelineConfig
    cache: CacheStore
    staging: Path  # the temporary output folder, renamed into place when the run completes
    record: RunRecord
    loaded: LoadedModel
    progress: NullProgress = field(default_factory=NullProgress)
    stats: dict[str, ChannelStats] | None = None

    @property
    def spec(self) -> PruneSpec | None:
        return self.config.prune_spec()

    @cached_property
    def targets(self) -> list[Target]:
        spec = self.spec
        include = list(spec.include) if spec else None
        exclude = list(spec.exclude) if spec else None
        return find_targets(self.loaded.model, include or None, exclude or None)

    @cached_property
    def calibration_windows(self) -> torch.Tensor:
        """[nsamples, seqlen] calibration tokens, drawn once per run."""
        data = self.config.data.calibration
        source = data.to_text_source(self.config.base_dir)
        documents = load_documents(source, "calibration")
        return calibration_windows(self.loaded.tokenizer, documents, data.nsamples, data.seqlen,
                                   data.seed, strategy=source.window_strategy)

    @cached_property
    def evaluation_windows(self) -> torch.Tensor:
        """[W, seqlen] non-overlapping evaluation windows of the tokenized evaluation text."""
        data = self.config.data.evaluation
        documents = load_documents(data.to_text_source(self.config.base_dir), "evaluation")
        ids = evaluation_ids(self.loaded.tokenizer, documents)
        return split_windows(ids, data.seqlen, data.max_windows)
