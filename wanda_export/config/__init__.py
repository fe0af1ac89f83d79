"""The pipeline file: its models, the YAML loader, and the checks run before anything else.

`load_config("pipeline.yaml")` returns a validated `PipelineConfig` or raises one `ConfigError`
(exit code 2) listing every problem with its line and column; `check_against_model` adds the
rules that need the model's layer shapes, read from its config alone (no weights).
"""

from wanda_export.config.gates import GatesConfig, PerplexityGate, SparsityGate
from wanda_export.config.inputs import (
    CalibrationData,
    DataConfig,
    EvaluationData,
    ModelConfig,
    SourceFields,
    resolve_data_path,
)
from wanda_export.config.loader import load_config, parse_config
from wanda_export.config.pipeline import PipelineConfig
from wanda_export.config.prune_spec import PruneSpec
from wanda_export.config.rules import check_against_model, meta_model
from wanda_export.config.stages import (
    STAGE_ORDER,
    BenchmarkStage,
    CalibrateStage,
    EvaluateStage,
    ExportStage,
    MaskStage,
    ScoreStage,
    StageEntry,
    VerifyStage,
)

__all__ = [
    "STAGE_ORDER",
    "BenchmarkStage",
    "CalibrateStage",
    "CalibrationData",
    "DataConfig",
    "EvaluateStage",
    "EvaluationData",
    "ExportStage",
    "GatesConfig",
    "MaskStage",
    "ModelConfig",
    "PerplexityGate",
    "PipelineConfig",
    "PruneSpec",
    "ScoreStage",
    "SourceFields",
    "SparsityGate",
    "StageEntry",
    "VerifyStage",
    "check_against_model",
    "load_config",
    "meta_model",
    "parse_config",
    "resolve_data_path",
]
