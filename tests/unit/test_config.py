"""Unit tests of wanda_export.config: the pipeline models, the YAML loader and the model rules."""

from __future__ import annotations

import re
import shutil
import textwrap
import typing
from collections.abc import Callable
from pathlib import Path

import pytest

from wanda_export.config import (
    CalibrationData,
    MaskStage,
    ModelConfig,
    PipelineConfig,
    StageEntry,
    check_against_model,
    load_config,
    meta_model,
    parse_config,
)
from wanda_export.data.sources import load_documents
from wanda_export.errors import EXIT_CONFIG, ConfigError

BROKEN = sorted((Path(__file__).parent / "broken_configs").glob("*.yaml"))

EXAMPLE = """\
version: 1
model: {path: null, dtype: float32, device: auto}
data:
  calibration: {source: text, path: calib.txt, nsamples: 32, seqlen: 512, seed: 0}
  evaluation:  {source: text, path: eval.txt, seqlen: 512, max_windows: 64}
stages:
  - calibrate: {mode: sequential}          # sequential | dense
  - score: {method: wanda}                 # wanda | magnitude | sparsegpt
  - mask: {sparsity: 0.5, pattern: "2:4"}  # unstructured | "N:M"
  - verify: {}
  - evaluate: {perplexity: true}
  - export: {formats: [safetensors, onnx]}
  - benchmark: {runtimes: [onnxruntime-cpu]}
gates:
  sparsity: {min: 0.5, pattern: "2:4"}
  perplexity: {max_ratio_to_dense: 1.6}
"""
SUPPORTED_EXAMPLE = EXAMPLE.replace("  - benchmark: {runtimes: [onnxruntime-cpu]}\n", "")
MAGNITUDE = "version: 1\nstages:\n  - score: {method: magnitude}\n  - mask: {}\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder holding the example's calibration and evaluation text files."""
    (tmp_path / "calib.txt").write_text("Calibration text. " * 20, encoding="utf-8")
    (tmp_path / "eval.txt").write_text("Evaluation text. " * 20, encoding="utf-8")
    return tmp_path


def write(folder: Path, text: str, name: str = "pipeline.yaml") -> Path:
    """Write a pipeline file (dedented) and return its path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(text: str, folder: Path) -> ConfigError:
    """The ConfigError that loading `text` from `folder` raises."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(folder, text))
    return caught.value


# --- valid files ---------------------------------------------------------------------------


def test_the_supported_example_parses(project: Path) -> None:
    config = load_config(write(project, SUPPORTED_EXAMPLE))
    assert config.stage_names() == ["calibrate", "score", "mask", "verify", "evaluate", "export"]
    assert config.stage("mask") == MaskStage(sparsity=0.5, pattern="2:4")
    assert config.stage("calibrate").mode == "sequential"
    assert config.stage("benchmark") is None
    assert config.data.calibration.nsamples == 32
    assert config.gates.sparsity.pattern == "2:4"
    assert config.gates.perplexity.max_ratio_to_dense == 1.6
    assert config.base_dir == project.resolve()


def test_the_full_example_with_a_benchmark_parses(project: Path) -> None:
    config = load_config(write(project, EXAMPLE))
    benchmark = config.stage("benchmark")
    assert benchmark.runtimes == ["onnxruntime-cpu"]
    assert benchmark.shapes == ["prefill:1x128", "prefill:8x512", "decode:1x1@128"]
    assert (benchmark.warmup, benchmark.iterations, benchmark.threads) == (3, 20, 2)


def test_defaults_need_no_model_and_no_data(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "version: 1\nstages:\n  - verify:\n"))
    assert config.model == ModelConfig()
    assert config.model.path is None
    assert config.data.calibration.source == "builtin"
    assert config.data.evaluation.source == "builtin"
    assert config.data.calibration.seqlen == 512
    assert config.gates.sparsity is None and config.gates.perplexity is None
    assert load_documents(config.data.calibration.to_text_source(config.base_dir), "calibration")


def test_null_sections_and_null_stage_bodies_mean_defaults(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
        version: 1
        model:
        data:
        gates:
        stages:
          - calibrate:
          - score: null
          - mask: {}
    """,
        )
    )
    assert config.stage("score").method == "wanda"
    assert config.stage("mask") == MaskStage()
    assert config.model == ModelConfig()


def test_an_nm_pattern_fills_in_its_sparsity(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, MAGNITUDE.replace("mask: {}", 'mask: {pattern: " 1 : 4 "}'))
    )
    assert config.stage("mask").pattern == "1:4"
    assert config.stage("mask").sparsity == 0.75


def test_layerwise_and_sparsegpt_settings_reach_the_prune_spec(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """\
        version: 1
        stages:
          - calibrate: {}
          - score: {method: sparsegpt, dampening: 0.02, block_size: 64}
          - mask: {sparsity: 0.7, allocation: alphapruning, epsilon: 0.2, alpha_xmin: median,
                   granularity: matrix}
        """))
    spec = config.prune_spec()
    assert (spec.method, spec.dampening, spec.block_size) == ("sparsegpt", 0.02, 64)
    assert (spec.allocation, spec.epsilon, spec.alpha_xmin) == ("alphapruning", 0.2, "median")
    assert spec.allocation_granularity == "matrix" and spec.needs_hessian


def test_prune_spec_carries_the_stage_settings(project: Path) -> None:
    config = load_config(write(project, SUPPORTED_EXAMPLE.replace("sequential}", "dense}")))
    spec = config.prune_spec()
    assert (spec.method, spec.sparsity, spec.pattern, spec.mode) == ("wanda", 0.5, "2:4", "dense")
    assert spec.batch_size == config.data.calibration.batch_size


def test_dtype_choices_match_model_loading() -> None:
    from wanda_export.model.loading import DTYPES

    dtype = typing.get_args(ModelConfig.model_fields["dtype"].annotation)
    assert list(dtype) == list(DTYPES)


def test_stage_entries_dump_as_one_key_mappings_and_round_trip(project: Path) -> None:
    config = load_config(write(project, SUPPORTED_EXAMPLE))
    dump = config.model_dump(mode="json")
    assert dump["stages"][2] == {
        "mask": {"sparsity": 0.5, "pattern": "2:4", "include": [], "exclude": [],
                 "allocation": "uniform", "epsilon": 0.3, "alpha_xmin": "ks", "owl_m": 5.0,
                 "owl_lambda": 0.08, "granularity": "block"}
    }
    again = PipelineConfig.model_validate(dump, context={"base_dir": project})
    assert again.model_dump() == config.model_dump()
    assert again.digest() == config.digest()
    assert StageEntry.of(MaskStage()).name == "mask"


def test_stage_rejects_unknown_names() -> None:
    config = parse_config(MAGNITUDE, base_dir=Path("."))
    with pytest.raises(ValueError, match="unknown stage 'maks'"):
        config.stage("maks")


# --- digest --------------------------------------------------------------------------------


def test_digest_ignores_formatting_and_follows_values(project: Path) -> None:
    first = load_config(write(project, SUPPORTED_EXAMPLE)).digest()
    reformatted = "# a comment\n" + SUPPORTED_EXAMPLE.replace(
        "{mode: sequential}", "\n      mode: sequential"
    )
    assert load_config(write(project, reformatted, "other.yaml")).digest() == first
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    changed = SUPPORTED_EXAMPLE.replace("nsamples: 32", "nsamples: 33")
    assert load_config(write(project, changed, "changed.yaml")).digest() != first


def test_digest_uses_resolved_paths(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    for name in ("calib.txt", "eval.txt"):
        shutil.copy(project / name, elsewhere / name)
    here = load_config(write(project, SUPPORTED_EXAMPLE))
    there = load_config(write(elsewhere, SUPPORTED_EXAMPLE))
    assert here.model_dump() == there.model_dump()
    assert here.digest() != there.digest()


# --- paths ---------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_file_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "project" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "a.txt").write_text("alpha " * 10, encoding="utf-8")
    (corpus / "b.txt").write_text("beta " * 10, encoding="utf-8")
    path = write(
        tmp_path / "project" / "ci",
        """\
        version: 1
        data:
          calibration: {source: text, path: ../corpus/a.txt}
          evaluation: {source: text, path: "../corpus/*.txt"}
        stages: [evaluate: {}]
    """,
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(path.relative_to(tmp_path))
    calibration = config.data.calibration.to_text_source(config.base_dir)
    evaluation = config.data.evaluation.to_text_source(config.base_dir)
    assert calibration.path == str(corpus.resolve() / "a.txt")
    assert evaluation.path == str(corpus.resolve() / "*.txt")
    assert evaluation.split == "test" and calibration.split == "train"
    assert load_documents(evaluation, "evaluation") == ["alpha " * 10, "beta " * 10]
    assert config.resolved_dump()["data"]["evaluation"]["path"] == evaluation.path


def test_a_relative_model_dir_resolves_and_a_hub_id_stays(tmp_path: Path) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text('{"model_type": "llama"}')
    local = load_config(
        write(tmp_path, "version: 1\nmodel: {path: models/tiny}\nstages: [verify:]\n")
    )
    assert local.model.resolved_path(local.base_dir) == str(
        (tmp_path / "models" / "tiny").resolve()
    )
    hub = load_config(write(tmp_path, "version: 1\nmodel: {path: org/name}\nstages: [verify:]\n"))
    assert hub.model.resolved_path(hub.base_dir) == "org/name"


def test_a_directory_of_text_files_is_a_valid_source(tmp_path: Path) -> None:
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "one.md").write_text("# one\n", encoding="utf-8")
    config = load_config(
        write(
            tmp_path,
            """\
        version: 1
        data: {calibration: {source: text, path: texts}}
        stages: [calibrate: {}, score: {}, mask: {}]
    """,
        )
    )
    assert config.data.calibration == CalibrationData(source="text", path="texts")


# --- error reporting -----------------------------------------------------------------------


def test_all_errors_are_reported_at_once_with_their_positions(tmp_path: Path) -> None:
    error = config_error(
        """\
        version: 1
        model: {dtype: int8}
        data:
          calibration: {source: text, path: missing.txt}
        stages:
          - calibrate: {}
          - score: {}
          - mask: {sparsity: 1.2}
    """,
        tmp_path,
    )
    lines = str(error).splitlines()
    assert lines[0] == f"{tmp_path / 'pipeline.yaml'}: 3 errors in the pipeline file"
    assert len(lines) == 4
    where = [(p["path"], p["line"], p["column"]) for p in error.problems]
    assert where == [
        ("model -> dtype", 2, 16),
        ("data -> calibration -> path", 4, 37),
        ("stages -> mask -> sparsity", 8, 22),
    ]
    assert lines[1].startswith(f"{tmp_path / 'pipeline.yaml'}:2:16: model -> dtype: ")
    assert lines[3].endswith("stages -> mask -> sparsity: Input should be less than 1, got 1.2")


def test_rule_problems_are_reported_together(tmp_path: Path) -> None:
    error = config_error(
        """\
        version: 1
        stages:
          - mask: {}
          - score: {}
          - verify: {}
          - verify: {}
        gates:
          perplexity: {max: 30}
    """,
        tmp_path,
    )
    assert [(p["path"], p["line"]) for p in error.problems] == [
        ("stages -> score", 4),
        ("stages -> score -> method", 4),
        ("stages -> verify", 6),
        ("gates -> perplexity", 8),
    ]


def test_a_missing_key_points_at_its_parent_and_an_unknown_key_at_itself(tmp_path: Path) -> None:
    text = """\
        version: 1
        data:
          calibration:
            source: jsonl
            nsamples: 8
        stages: [verify: {}]
    """
    (missing,) = config_error(text, tmp_path).problems
    assert (missing["path"], missing["line"], missing["column"]) == (
        "data -> calibration -> path",
        3,
        3,
    )
    error = config_error(text.replace("nsamples: 8", "sed: 3"), tmp_path)
    (unknown,) = error.problems
    assert (unknown["path"], unknown["line"], unknown["column"]) == (
        "data -> calibration -> sed",
        5,
        5,
    )
    assert "did you mean 'seed'?" in unknown["message"]


def test_rules_are_checked_once_the_fields_are_valid(tmp_path: Path) -> None:
    error = config_error("version: 1\nmodel: {dtype: int8}\nstages: [mask: {}]\n", tmp_path)
    assert [p["path"] for p in error.problems] == ["model -> dtype"]


def test_parse_config_names_its_source(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^ci\.yaml: 1 error in the pipeline file\nci\.yaml:1:10: version"
    ):
        parse_config("version: 3\nstages: [verify: {}]\n", source="ci.yaml", base_dir=tmp_path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such pipeline file") as caught:
        load_config(tmp_path / "absent.yaml")
    assert caught.value.exit_code == EXIT_CONFIG
    assert caught.value.problems == [
        {"path": "", "line": None, "column": None, "message": "no such pipeline file"}
    ]


def test_a_directory_or_binary_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"version: 1\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_python_models_give_the_same_rules_without_a_file() -> None:
    with pytest.raises(ValueError, match="the mask stage needs a score stage"):
        PipelineConfig.model_validate({"version": 1, "stages": [{"mask": {}}]})


# --- the broken corpus ---------------------------------------------------------------------


def test_the_broken_corpus_is_large_enough() -> None:
    assert len(BROKEN) >= 30


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_each_broken_file_fails_with_its_expected_message(path: Path) -> None:
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# expect: "), f"{path.name} must start with '# expect: '"
    expected = first_line.removeprefix("# expect: ")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.exit_code == EXIT_CONFIG
    assert expected in str(caught.value)
    assert len(caught.value.problems) == 1, str(caught.value)


# --- rules that need the model -------------------------------------------------------------


def mask_config(folder: Path, mask: str, calibrate: str = "{}") -> PipelineConfig:
    """A wanda pipeline with the given calibrate and mask bodies, loaded from a file."""
    return load_config(
        write(
            folder,
            f"""\
        version: 1
        stages:
          - calibrate: {calibrate}
          - score: {{}}
          - mask: {mask}
    """,
        )
    )


@pytest.fixture
def config_only_llama(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> Path:
    """The tiny llama's config.json alone: proof that the rules read no weights."""
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(tiny_model_dir("llama") / "config.json", folder / "config.json")
    return folder


def test_meta_model_has_shapes_but_no_data(config_only_llama: Path) -> None:
    model = meta_model(config_only_llama)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert weight.device.type == "meta"
    assert tuple(weight.shape) == (64, 128)


def test_a_fitting_pattern_passes(config_only_llama: Path, tmp_path: Path) -> None:
    check_against_model(mask_config(tmp_path, '{pattern: "2:4"}'), config_only_llama)


def test_a_pattern_that_does_not_divide_in_features_is_refused(
    config_only_llama: Path, tmp_path: Path
) -> None:
    config = mask_config(tmp_path, '{pattern: "1:128", include: ["*mlp*"]}')
    with pytest.raises(ConfigError) as caught:
        check_against_model(config, config_only_llama)
    (problem,) = caught.value.problems
    assert problem["path"] == "stages -> mask -> pattern"
    assert (problem["line"], problem["column"]) == (5, 21)
    assert "model.layers.0.mlp.gate_proj (64)" in problem["message"]
    assert "down_proj" not in problem["message"]


def test_globs_that_match_nothing_are_refused(config_only_llama: Path, tmp_path: Path) -> None:
    config = mask_config(
        tmp_path, '{include: ["*q_proj", "*qproj"], exclude: ["*.o_proj", "*zzz"]}'
    )
    with pytest.raises(ConfigError) as caught:
        check_against_model(config, config_only_llama)
    assert [p["path"] for p in caught.value.problems] == [
        "stages -> mask -> include -> 1",
        "stages -> mask -> exclude -> 0",
        "stages -> mask -> exclude -> 1",
    ]


def test_excluding_everything_is_refused(config_only_llama: Path, tmp_path: Path) -> None:
    config = mask_config(tmp_path, '{exclude: ["*"]}')
    with pytest.raises(ConfigError, match="stages -> mask -> exclude: include/exclude leave no"):
        check_against_model(config, config_only_llama)


def test_lm_head_needs_dense_calibration(config_only_llama: Path, tmp_path: Path) -> None:
    sequential = mask_config(tmp_path, '{include: ["model.layers.*", "lm_head"]}')
    with pytest.raises(ConfigError, match="stages -> mask -> include: sequential calibration"):
        check_against_model(sequential, config_only_llama)
    dense = mask_config(tmp_path, '{include: ["model.layers.*", "lm_head"]}', "{mode: dense}")
    check_against_model(dense, config_only_llama)


def test_gpt2_conv1d_shapes_are_read_in_the_out_in_layout(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model = meta_model(tiny_model_dir("gpt2"))
    check_against_model(mask_config(tmp_path, '{pattern: "2:4"}'), model)
    with pytest.raises(ConfigError) as caught:
        check_against_model(mask_config(tmp_path, '{pattern: "1:128"}'), model)
    message = str(caught.value)
    assert "transformer.h.0.mlp.c_fc (64)" in message
    assert "mlp.c_proj" not in message


def test_the_model_rules_read_a_gguf_header(tiny_llama_gguf: Path, tmp_path: Path) -> None:
    check_against_model(mask_config(tmp_path, '{pattern: "2:4"}'), tiny_llama_gguf)


def test_no_mask_stage_means_nothing_to_check(tmp_path: Path) -> None:
    check_against_model(parse_config("version: 1\nstages: [verify: {}]\n", base_dir=tmp_path), None)


def test_an_unreadable_model_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is empty; a transformers checkpoint holds config.json"):
        meta_model(tmp_path)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "sample_configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_sample_config_validates(path: Path) -> None:
    config = load_config(path)
    assert config.stage_names()[0] in ("calibrate", "score")
