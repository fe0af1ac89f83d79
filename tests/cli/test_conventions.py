"""The command line's conventions, command by command: --version, -h, shell completion, results
on stdout and logs on stderr, --json on every exit, -q/-v, the --set/--device/--dtype overrides,
cache argument checks and `cache gc`, and that validate and plan read no weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import invoke
from typer.testing import CliRunner

from wanda_export import __version__
from wanda_export.cli import app
from wanda_export.config.stages import STAGE_ORDER
from wanda_export.console import NORMAL, QUIET, VERBOSE, setup_logging

PIPELINE_COMMANDS = ["run", "validate", "plan", *STAGE_ORDER]
CACHE_COMMANDS = ["ls", "clear", "gc"]


@pytest.fixture(autouse=True)
def in_workdir(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in the workdir, so commands name `pipeline.yaml` as a user would."""
    monkeypatch.chdir(workdir)
    return workdir


def cli(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    """Run `python -m wanda_export ARGS` in a child process, stdout and stderr apart."""
    env = {**os.environ, "WANDA_EXPORT_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "wanda_export", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_version_flag_and_command() -> None:
    assert invoke("--version").stdout == f"wanda-export {__version__}\n"
    assert json.loads(invoke("version", "--json").stdout) == {"version": __version__}


@pytest.mark.parametrize("command", [[name] for name in PIPELINE_COMMANDS]
                         + [["cache", name] for name in CACHE_COMMANDS] + [["cache"], []])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_takes_h_and_help(command: list[str], flag: str) -> None:
    result = invoke(*command, flag)
    assert result.exit_code == 0 and "Usage: wanda-export" in result.stdout


@pytest.mark.parametrize("command", [[name, "pipeline.yaml"] for name in PIPELINE_COMMANDS]
                         + [["cache", name] for name in CACHE_COMMANDS])
def test_every_command_takes_quiet_verbose_and_json(command: list[str], workdir) -> None:
    result = invoke(*command, "-q", "-v", "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "config" and "--quiet and --verbose" in error["message"]


def test_shell_completion_script_and_completions(monkeypatch) -> None:
    import shellingham

    assert "--install-completion" in invoke("--help").stdout
    monkeypatch.setattr(shellingham, "detect_shell", lambda: ("bash", "/bin/bash"))
    script = invoke("--show-completion").stdout
    assert "_WANDA_EXPORT_COMPLETE=complete_bash" in script and "complete -o default" in script
    env = {"_WANDA_EXPORT_COMPLETE": "complete_bash", "COMP_WORDS": "wanda-export cache g",
           "COMP_CWORD": "2"}
    result = CliRunner().invoke(app, [], env=env, prog_name="wanda-export")
    assert result.stdout.split() == ["gc"]


def test_third_party_warnings_only_with_verbose() -> None:
    def shown(level: int) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            setup_logging(level)
            for module in ("torch.nn.modules.module", "transformers.modeling_utils",
                           "onnxscript.values", "wanda_export.export.onnx"):
                warnings.warn_explicit(f"from {module}", FutureWarning, "x.py", 1, module=module)
        return [str(item.message) for item in caught]

    assert shown(NORMAL) == shown(QUIET) == ["from wanda_export.export.onnx"]
    assert len(shown(VERBOSE)) == 4
    import logging

    setup_logging(NORMAL)
    assert logging.getLogger("torch.onnx").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("wanda_export").getEffectiveLevel() == logging.INFO
    setup_logging(VERBOSE)
    assert logging.getLogger("torch.onnx").getEffectiveLevel() == logging.WARNING


def test_results_on_stdout_logs_on_stderr(write_pipeline, workdir):
    write_pipeline()
    validate = invoke("validate", "pipeline.yaml")
    assert validate.stdout.startswith("pipeline.yaml: valid (") and validate.stderr == ""
    plan = invoke("plan", "pipeline.yaml", "-q")
    assert re.search(r"^calibrate +cache: miss$", plan.stdout, re.MULTILINE)
    assert plan.stderr == ""
    run = invoke("run", "pipeline.yaml", "--out", "out")
    assert run.stdout.startswith("passed: outputs in out\n  gate ")
    assert "stage calibrate" in run.stderr and "stage calibrate" not in run.stdout
    listing = invoke("cache", "ls")
    assert listing.stdout.startswith("calibration ") and listing.stderr == ""
    quiet = invoke("run", "pipeline.yaml", "--out", "out", "-q", "--json")
    assert quiet.exit_code == 0 and quiet.stderr == "" and json.loads(quiet.stdout)["gates"]


def test_a_child_run_prints_only_json_on_stdout_and_no_warnings(write_pipeline, workdir,
                                                                isolated_cache):
    write_pipeline(stages={"export": {"formats": ["safetensors", "onnx"]}})
    run = cli("run", "pipeline.yaml", "--out", "out", "--json", cwd=workdir, cache=isolated_cache)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "passed"
    assert "stage export" in run.stderr
    assert "Warning" not in run.stderr and "torchvision" not in run.stderr, run.stderr


def test_json_error_objects_on_exit_2_and_4_parse(write_pipeline, workdir, isolated_cache):
    write_pipeline()
    bad = cli("validate", "pipeline.yaml", "--set", "mask.sparsity=1.2", "--json", cwd=workdir,
              cache=isolated_cache)
    assert bad.returncode == 2
    error = json.loads(bad.stdout)["error"]
    assert error["locations"][0]["origin"] == "--set mask.sparsity"
    assert bad.stderr.startswith("error: pipeline.yaml: 1 error")
    gpu = invoke("run", "pipeline.yaml", "--device", "cuda:99", "--out", "out", "--json")
    assert gpu.exit_code == 4, gpu.stderr
    error = json.loads(gpu.stdout)["error"]
    assert error["kind"] == "environment" and "cuda:99" in error["message"]
    assert "--device cpu" in error["hint"]
    usage = invoke("cache", "gc", "--json", "--max-age")
    assert usage.exit_code == 2 and json.loads(usage.stdout)["error"]["kind"] == "config"


def test_overrides_reach_the_run_and_are_located(write_pipeline, workdir):
    write_pipeline()
    result = invoke("run", "pipeline.yaml", "--out", "out", "--json", "-q",
                    "--set", "mask.sparsity=0.6", "--set", "gates.sparsity.min=0.6",
                    "--dtype", "float32")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert 0.6 <= report["sparsity"]["overall"] < 0.62  # whole weights per row: 38.4 of 64
    result = invoke("validate", "pipeline.yaml", "--set", "mask.sparsty=0.6", "--dtype",
                    "int8")
    assert result.exit_code == 2
    assert "--set mask.sparsty: unknown key 'sparsty'" in result.stderr
    assert "did you mean 'sparsity'?" in result.stderr
    assert "--dtype: Input should be 'float32', 'float16' or 'bfloat16'" in result.stderr


def test_validate_and_plan_read_no_weights(write_pipeline, workdir, monkeypatch):
    import safetensors
    import safetensors.torch
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", refuse)
    write_pipeline()
    for command in ("validate", "plan"):
        result = invoke(command, "pipeline.yaml", "--set", "calibrate.mode=sequential")
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("args", "phrase"), [
    (["clear", "--kind", "bogus"], "cache kind 'bogus' is unknown"),
    (["clear", "--kind", "../../etc"], "is not a kind name"),
    (["gc"], "needs --max-size SIZE, --max-age AGE or both"),
    (["gc", "--max-size", "lots"], "--max-size: 'lots' is not a size"),
    (["gc", "--max-age", "soon"], "--max-age: 'soon' is not an age"),
    (["gc", "--max-age", "-3d"], "is not an age"),
    (["gc", "--max-age", "infd"], "is not an age"),
])
def test_cache_arguments_are_checked(args: list[str], phrase: str, isolated_cache) -> None:
    result = invoke("cache", *args, "--json")
    assert result.exit_code == 2
    assert phrase in json.loads(result.stdout)["error"]["message"]


def test_cache_gc_trims_by_age_and_size(write_pipeline, workdir, isolated_cache):
    write_pipeline()
    assert invoke("evaluate", "pipeline.yaml", "--out", "out", "-q").exit_code == 0
    entries = json.loads(invoke("cache", "ls", "--json").stdout)
    assert {row["kind"] for row in entries} == {"calibration", "perplexity"}
    old = next(row for row in entries if row["kind"] == "perplexity")
    os.utime(old["path"], (1_000_000, 1_000_000))  # unused since 1970
    result = json.loads(invoke("cache", "gc", "--max-age", "30d", "--json").stdout)
    assert [row["key"] for row in result["entries"]] == [old["key"]]
    kept = json.loads(invoke("cache", "ls", "--json").stdout)
    assert [row["kind"] for row in kept] == ["calibration"]
    result = invoke("cache", "gc", "--max-size", "0")
    assert result.exit_code == 0 and "removed 1 entries" in result.stdout
    assert json.loads(invoke("cache", "ls", "--json").stdout) == []
