"""What the stages of one run share: the config, the loaded model, data windows, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from wanda_export.allocation import Allocation
from wanda_export.bench.runtimes import Availability
from wanda_export.cache.store import CacheStore
from wanda_export.calibrate.stats import ChannelStats
from wanda_export.config import PipelineConfig
from wanda_export.evaluate.harness import TaskScores, TaskSet, resolve_tasks
from wanda_export.export.onnx_verify import OnnxVerification
from wanda_export.export.sharded import ShardWriter
from wanda_export.model.layers import Target, find_targets, weight_out_in
from wanda_export.model.loading import LoadedModel
from wanda_export.model.streaming import StreamedCheckpoint
from wanda_export.pipeline.inputs import calibration_windows_for, evaluation_windows_for
from wanda_export.pipeline.progress import NullProgress
from wanda_export.pipeline.run_plan import RunPlan
from wanda_export.prune import PruneSpec
from wanda_export.report.record import RunRecord
from wanda_export.sparsity.pattern import Pattern, parse_pattern
from wanda_export.sparsity.permute import Permuted


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
    allocation: Allocation | None = None
    allocation_inputs: dict[str, str] = field(default_factory=dict)  # cache hit/miss per input
    pruned_in_calibration: bool = False  # a sequential calibration miss pruned as it went
    permuted: dict[str, Permuted] = field(default_factory=dict)  # folded, by linear
    importance_kept: dict[str, float] = field(default_factory=dict)  # per target, when pruned
    dense_weights: dict[str, torch.Tensor] | None = None  # kept for the benchmark's baseline
    onnx_export: tuple[Path, OnnxVerification] | None = None  # model.onnx and its layer map
    availability: dict[str, Availability] = field(default_factory=dict)  # benchmark runtimes
    run_plan: RunPlan | None = None  # set by the runner once the targets are known
    checkpoint: StreamedCheckpoint | None = None  # a streamed run's input (`loaded.model`: its skeleton)
    shard_writer: ShardWriter | None = None  # a streamed run's pruned checkpoint, being written
    dense_scores: dict[str, TaskScores] | None = None  # lm-eval scores of the unpruned model

    def keep_dense_weights(self) -> None:
        """Copy every target's unpruned [out, in] weight to CPU memory, before any pruning."""
        self.dense_weights = {t.name: weight_out_in(t.module).detach().to("cpu", copy=True)
                              for t in self.targets}

    @cached_property
    def spec(self) -> PruneSpec | None:
        """The pruning settings of the score/mask/calibrate stages (None without a mask)."""
        return self.config.prune_spec()

    @property
    def pattern(self) -> Pattern:
        """The pattern the weights are verified against: the mask stage's, else unstructured
        (a pipeline may verify a checkpoint it does not prune)."""
        return self.spec.parsed_pattern if self.spec else parse_pattern("unstructured")

    @cached_property
    def targets(self) -> list[Target]:
        """The linears this run prunes (every decoder linear when it only verifies)."""
        if self.spec is None:
            return find_targets(self.loaded.model)
        return self.spec.targets_of(self.loaded.model)

    @cached_property
    def lm_eval_tasks(self) -> TaskSet:
        """The evaluate stage's lm-eval tasks, resolved once per run (their data load later)."""
        settings = self.config.stage("evaluate").lm_eval
        return resolve_tasks(settings, self.config.base_dir, self.cache.root)

    @cached_property
    def calibration_windows(self) -> torch.Tensor:
        """[nsamples, seqlen] calibration tokens, drawn once per run."""
        return calibration_windows_for(self.config, self.loaded.tokenizer)

    @cached_property
    def evaluation_windows(self) -> torch.Tensor:
        """[W, seqlen] evaluation windows, tokenized once per run."""
        return evaluation_windows_for(self.config, self.loaded.tokenizer)
