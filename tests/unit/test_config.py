"""Unit tests of wanda_export.config: the pipeline models, the YAML loader and the model rules."""

from __future__ import annotations

import re
import shutil
import textwrap
import time
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from wanda_export.config import (
    BenchmarkStage,
    CalibrateStage,
    CalibrationData,
    EvaluationData,
    ExportStage,
    MaskStage,
    ModelConfig,
    PerplexityGate,
    PipelineConfig,
    ScoreStage,
    StageEntry,
    check_against_model,
    load_config,
    loader,
    meta_model,
    parse_config,
    yaml_reader,
)
from wanda_export.config.base import describe_value
from wanda_export.config.limits import (
    MAX_BATCH_SIZE,
    MAX_BATCH_TOKENS,
    MAX_BENCHMARK_BATCH,
    MAX_BENCHMARK_ITERATIONS,
    MAX_BENCHMARK_SHAPES,
    MAX_BENCHMARK_WARMUP,
    MAX_BLOCK_SIZE,
    MAX_CALIBRATION_TOKENS,
    MAX_EVALUATION_WINDOWS,
    MAX_LAYER_GLOBS,
    MAX_NSAMPLES,
    MAX_PARITY_TOKENS,
    MAX_SEQLEN,
    MAX_THREADS,
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
    assert spec.granularity == "matrix" and spec.needs_hessian


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
                 "owl_lambda": 0.08, "granularity": "block", "permute": False, "refine": None,
                 "refine_iterations": 50, "refine_threshold": 0.1, "refine_variance_power": 1.0,
                 "refine_exclude": ["*.mlp.*"], "update": None, "update_iterations": 20}
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
        {"path": "", "line": None, "column": None, "origin": None,
         "message": "no such pipeline file"}
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


# --- hostile files and the limits on size settings ------------------------------------------


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """`levels` anchors, each a list of `width` aliases of the one before: width**levels values."""
    lines = ["version: 1", "a0: &a0 [lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, "stages: [verify: {}]", ""])


def test_an_alias_bomb_is_refused_before_its_aliases_are_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def followed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the aliases were followed")

    monkeypatch.setattr(loader, "_index_nodes", followed)
    monkeypatch.setattr(yaml.SafeLoader, "construct_document", followed)
    started = time.perf_counter()
    error = config_error(alias_bomb(), tmp_path)
    assert time.perf_counter() - started < 1.0
    assert error.exit_code == EXIT_CONFIG
    assert f"more than {yaml_reader.MAX_YAML_NODES:,} values once its aliases" in str(error)


def test_expansion_counts_each_alias_as_the_values_it_repeats() -> None:
    node = yaml.compose("a: &x [1, 2]\nb: *x\nc: [*x, *x]\n", Loader=yaml.SafeLoader)
    # root + 3 keys + 4 copies of [1, 2] (3 values each) + the list holding two of them
    assert yaml_reader.expansion(node) == (1 + 3 + 4 * 3 + 1, 4)
    assert yaml_reader.expansion(yaml.compose("7", Loader=yaml.SafeLoader)) == (1, 1)


def test_expansion_takes_linear_time_and_stops_at_the_limits() -> None:
    node = yaml.compose(alias_bomb(levels=200, width=2), Loader=yaml.SafeLoader)  # 2**200
    started = time.perf_counter()
    size, depth = yaml_reader.expansion(node)
    assert time.perf_counter() - started < 0.5
    assert (size, depth) == (yaml_reader.MAX_YAML_NODES + 1, yaml_reader.MAX_YAML_DEPTH + 1)


def test_indexing_is_bounded_even_without_the_expansion_check() -> None:
    node = yaml.compose(alias_bomb(), Loader=yaml.SafeLoader)
    locations = loader.Locations()
    started = time.perf_counter()
    loader._index_nodes(node, (), None, locations, [])
    assert time.perf_counter() - started < 1.0
    assert len(locations.values) == yaml_reader.MAX_YAML_NODES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\nx: &a [1, *a]\nstages: [verify: {}]\n", ":2:4: an alias refers to its own"),
        ("version: 1\nx: " + "[" * 100 + "]" * 100 + "\n", f"deeper than {yaml_reader.MAX_YAML_DEPTH}"),
        ("a: &a 1\nb: [" + ", ".join(["*a"] * 1001) + "]\n", "more than 1,000 aliases"),
        ("version: 1\nx: [" + ", ".join(["1"] * 20_001) + "]\n", "more than 20,000 values"),
        ("version: 1\nseed: 1" + "0" * 100 + "\n", ":2:7: invalid YAML: an integer of 101"),
        ("version: 1\nwhen: 2024-02-30\n", ":2:7: invalid YAML: cannot read the string"),
        ("version: 1\nx: !!python/name:os.system ''\n", "the tag !!python/name:os.system is"),
        ("version: 1\nx: !!float abc\n", ":2:4: invalid YAML: cannot read the string 'abc'"),
        ("version: 1\n\x00\n", ":2:1: invalid YAML: a NUL byte"),
        ("version: 1\nx: \x07\n", ":2:4: invalid YAML: the control character #x0007"),
    ],
    ids=["recursive", "deep", "aliases", "values", "integer", "date", "tag", "float", "nul",
         "bell"],
)
def test_hostile_yaml_is_one_config_error_at_its_position(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert len(caught.value.problems) == 1


def test_a_file_over_the_size_limit_is_refused_by_its_size_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:  # sparse: 10 GiB that would take minutes to read
        handle.truncate(10 * 2**30)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"is 10,737,418,240 bytes, over the limit of "
                                          r"1,048,576 bytes \(1 MiB\)"):
        load_config(path)
    assert time.perf_counter() - started < 1.0
    path.write_text("version: 1\nstages: [verify: {}]\n" + "#" * loader.MAX_PIPELINE_BYTES)
    with pytest.raises(ConfigError, match="over the limit"):
        load_config(path)
    with pytest.raises(ConfigError, match="over the limit"):
        parse_config(path.read_text(), base_dir=tmp_path)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_file_without_a_size_is_read_only_up_to_the_limit() -> None:
    with pytest.raises(ConfigError, match="holds more than the limit of 1,048,576 bytes"):
        load_config("/dev/zero")


LIMITS = [  # (model, settings at the limit, the key to push one past it)
    (CalibrationData, {"nsamples": MAX_NSAMPLES, "seqlen": 2, "batch_size": 1}, "nsamples"),
    (CalibrationData, {"seqlen": MAX_SEQLEN, "nsamples": 1, "batch_size": 1}, "seqlen"),
    (CalibrationData, {"batch_size": MAX_BATCH_SIZE, "seqlen": 2}, "batch_size"),
    (EvaluationData, {"max_windows": MAX_EVALUATION_WINDOWS}, "max_windows"),
    (EvaluationData, {"batch_size": MAX_BATCH_SIZE, "seqlen": 2}, "batch_size"),
    (ScoreStage, {"method": "sparsegpt", "block_size": MAX_BLOCK_SIZE}, "block_size"),
    (ExportStage, {"parity_tokens": MAX_PARITY_TOKENS}, "parity_tokens"),
    (BenchmarkStage, {"warmup": MAX_BENCHMARK_WARMUP}, "warmup"),
    (BenchmarkStage, {"iterations": MAX_BENCHMARK_ITERATIONS}, "iterations"),
    (BenchmarkStage, {"threads": MAX_THREADS}, "threads"),
]


@pytest.mark.parametrize(("model", "settings", "key"), LIMITS,
                         ids=[f"{m.__name__}.{k}" for m, _, k in LIMITS])
def test_each_size_setting_takes_its_limit_and_refuses_one_more(
    model: type, settings: dict, key: str
) -> None:
    model(**settings)
    with pytest.raises(ValueError, match=f"{key}\n  Input should be less than or equal to "
                                         f"{settings[key]}"):
        model(**{**settings, key: settings[key] + 1})


def test_products_of_size_settings_are_bounded() -> None:
    seqlen = 2048
    fits = MAX_CALIBRATION_TOKENS // seqlen
    CalibrationData(nsamples=fits, seqlen=seqlen, batch_size=1)
    with pytest.raises(ValueError, match="nsamples x seqlen = .* calibration tokens"):
        CalibrationData(nsamples=fits + 1, seqlen=seqlen, batch_size=1)
    EvaluationData(batch_size=MAX_BATCH_TOKENS // seqlen, seqlen=seqlen)
    with pytest.raises(ValueError, match="batch_size x seqlen = .* tokens per forward pass"):
        EvaluationData(batch_size=MAX_BATCH_TOKENS // seqlen + 1, seqlen=seqlen)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (f"prefill:{MAX_BENCHMARK_BATCH + 1}x1", "batch is 1,025"),
        (f"prefill:1x{MAX_SEQLEN + 1}", "seqlen + past is 131,073"),
        (f"decode:1x1@{MAX_SEQLEN}", "seqlen + past is 131,073"),
        ("prefill:17x65536", "batch x (seqlen + past) is 1,114,112, over the limit of 1,048,576"),
        ("prefill:" + "9" * 5000 + "x1", "cannot parse a shape of 5,010 characters"),
    ],
    ids=["batch", "seqlen", "past", "tokens", "digits"],
)
def test_benchmark_shapes_are_bounded(shape: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        BenchmarkStage(shapes=[shape])
    assert BenchmarkStage(shapes=[f"decode:{MAX_BENCHMARK_BATCH}x1@1023"]).shapes


def test_lists_of_globs_and_shapes_are_bounded() -> None:
    with pytest.raises(ValueError, match="include\n  List should have at most 1024 items"):
        MaskStage(include=["*"] * (MAX_LAYER_GLOBS + 1))
    with pytest.raises(ValueError, match="shapes\n  List should have at most 64 items"):
        BenchmarkStage(shapes=["prefill:1x8"] * (MAX_BENCHMARK_SHAPES + 1))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_no_setting_takes_nan_or_infinity(value: float) -> None:
    for model, key in [(MaskStage, "owl_m"), (PerplexityGate, "max"),
                       (PerplexityGate, "max_ratio_to_dense"), (ScoreStage, "dampening")]:
        with pytest.raises(ValueError, match="finite number"):
            model(**{key: value})


def test_a_huge_integer_is_described_by_its_length() -> None:
    assert describe_value(10**5000) == "an integer of about 5,001 digits"
    assert describe_value(2**64) == "18446744073709551616"


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


def test_prune_spec_refuses_what_the_pipeline_file_refuses():
    from wanda_export.config.prune_spec import SettingsError
    from wanda_export.prune import PruneSpec

    with pytest.raises(SettingsError, match="pattern 2:4 means sparsity 0.5"):
        PruneSpec(pattern="2:4", sparsity=0.6)
    with pytest.raises(SettingsError, match="only allocation 'owl' takes 'owl_m'"):
        PruneSpec(owl_m=3.0)
    spec = PruneSpec(pattern="2:4", include=("model.layers.0.*",))
    assert spec.sparsity == 0.5 and spec.include == ["model.layers.0.*"]
    assert spec.comparison_group == "row" and not spec.needs_hessian


def test_prune_spec_takes_every_setting_from_the_stage_models():
    from wanda_export.config.inputs import CalibrationBatch
    from wanda_export.prune import PruneSpec

    stage_fields = {name for model in (CalibrateStage, ScoreStage, MaskStage, CalibrationBatch)
                    for name in model.model_fields}
    assert set(PruneSpec.model_fields) == stage_fields
    for name, field in PruneSpec.model_fields.items():
        owner = next(m for m in (CalibrateStage, ScoreStage, MaskStage, CalibrationBatch)
                     if name in m.model_fields)
        assert field.default == owner.model_fields[name].default


def test_ria_permute_and_dsnot_settings_reach_the_prune_spec(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """\
        version: 1
        stages:
          - calibrate: {}
          - score: {method: ria, exponent: 0.25}
          - mask: {pattern: "2:4", permute: true, refine: dsnot, refine_iterations: 20,
                   refine_threshold: 0.0, refine_variance_power: 0.5, refine_exclude: []}
        """))
    spec = config.prune_spec()
    assert (spec.method, spec.exponent, spec.comparison_group) == ("ria", 0.25, "layer")
    assert spec.score_settings == {"exponent": 0.25}
    assert (spec.permute, spec.refine, spec.refine_iterations) == (True, "dsnot", 20)
    assert (spec.refine_threshold, spec.refine_variance_power, spec.refine_exclude) == (
        0.0, 0.5, [])
    assert spec.needs_means and spec.prunes_from_statistics


@pytest.mark.parametrize(("stages", "message"), [
    ("- score: {method: wanda, exponent: 1.0}", "only method 'ria' takes 'exponent'"),
    ("- score: {method: wanda}\n  - mask: {permute: true}",
     "permute reorders input channels so the N:M groups keep more; pattern unstructured"),
    ("- score: {method: wanda}\n  - mask: {refine_iterations: 5}",
     "only 'refine: dsnot' takes 'refine_iterations'"),
    ("- score: {method: wanda}\n  - mask: {refine_exclude: []}",
     "only 'refine: dsnot' takes 'refine_exclude'"),
    ("- score: {method: sparsegpt}\n  - mask: {refine: dsnot}",
     "method 'sparsegpt' updates the weights it keeps"),
    ("- score: {method: wanda}\n  - mask: {refine: dsnot, refine_threshold: -1}",
     "refine_threshold"),
])
def test_new_settings_are_refused_where_they_do_not_apply(tmp_path: Path, stages: str,
                                                           message: str) -> None:
    text = f"version: 1\nstages:\n  - calibrate: {{}}\n  {stages}\n"
    with pytest.raises(ConfigError, match=message):
        parse_config(text, base_dir=tmp_path)


def test_dsnot_after_magnitude_needs_a_calibrate_stage(tmp_path: Path) -> None:
    text = "version: 1\nstages:\n  - score: {method: magnitude}\n  - mask: {refine: dsnot}\n"
    with pytest.raises(ConfigError, match="refine 'dsnot' needs activation statistics"):
        parse_config(text, base_dir=tmp_path)


def test_prune_spec_refuses_dsnot_after_sparsegpt():
    from wanda_export.config.prune_spec import SettingsError
    from wanda_export.prune import PruneSpec

    with pytest.raises(SettingsError, match="refine: .*updates the weights it keeps"):
        PruneSpec(method="sparsegpt", refine="dsnot")
    assert PruneSpec(method="sparsegpt", pattern="2:4", permute=True).permute
