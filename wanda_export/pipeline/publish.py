"""Publishing a release on the Hugging Face Hub (`wanda-export push`, `export: {push_to_hub}`).

Only a release that is whole goes up: a wanda-export release whose gates passed, every file of
`model/` and `onnx/` listed in its manifest with the size and sha256 recorded there, and nothing
else in those folders. The files go up in one commit (create_repo, then create_commit with one
operation per verified file: `model/` at the repo's root, where `from_pretrained` looks, and
`onnx/` under `onnx/`), so the repo never holds half a release. Offline, without a token, or
when the hub cannot be reached, nothing is uploaded and the exit code is 4.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from wanda_export import __version__
from wanda_export.config.nested import repo_id_problem
from wanda_export.errors import ConfigError, EnvironmentProblem, GateFailure
from wanda_export.model.checkpoint import first_line
from wanda_export.model.hub import environmental, offline
from wanda_export.pipeline.outdir import REPORT_FILE, is_release
from wanda_export.pipeline.stages import CHECKPOINT_DIR, ONNX_DIR
from wanda_export.report.writers import size_and_sha256

log = logging.getLogger("wanda_export.publish")

MANIFEST_FILE = "manifest.json"
PUBLISHED_DIRS = (CHECKPOINT_DIR, ONNX_DIR)
TOKEN_HINT = "set HF_TOKEN to a token with write access, or run `hf auth login`"


def _manifest(out: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
        return {entry["path"]: entry for entry in data["artifacts"]}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConfigError(f"{out / MANIFEST_FILE} cannot be read ({error}); the release is not "
                          "whole, run it again") from None


def verified_files(out: Path) -> list[str]:
    """The release's files to publish (paths relative to `out`), each checked against the
    manifest; ConfigError (exit 2) for a folder that is not a release, a file changed, missing
    or not in the manifest, and GateFailure (exit 3) for a release whose gates failed."""
    if not is_release(out):
        raise ConfigError(f"{out} is not a wanda-export release (no release marker and "
                          "report.json)", hint="push the --out folder of a run")
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    if report.get("status") != "passed":
        raise GateFailure(f"the release {out} failed its gates; a failed release is not "
                          "published", hint="fix the failing gates and run again")
    manifest = {path: entry for path, entry in _manifest(out).items()
                if path.split("/", 1)[0] in PUBLISHED_DIRS}
    present = {path.relative_to(out).as_posix() for folder in PUBLISHED_DIRS
               for path in (out / folder).rglob("*") if path.is_file() or path.is_symlink()}
    problems = [f"{path}: not in the manifest" for path in sorted(present - set(manifest))]
    problems += [f"{path}: missing" for path in sorted(set(manifest) - present)]
    for path in sorted(set(manifest) & present):
        size, sha256 = size_and_sha256(out / path)
        if (size, sha256) != (manifest[path]["bytes"], manifest[path]["sha256"]):
            problems.append(f"{path}: changed since the run (size or sha256 differs)")
    if problems:
        raise ConfigError(f"the release {out} is not as its manifest says; nothing was uploaded:"
                          "\n  " + "\n  ".join(problems), hint="run the pipeline again")
    if not any(path.startswith(f"{CHECKPOINT_DIR}/") for path in manifest):
        raise ConfigError(f"the release {out} has no {CHECKPOINT_DIR}/ to publish",
                          hint="add safetensors to the export stage's formats")
    return sorted(manifest)


def hub_token() -> str:
    """The token to upload with; EnvironmentProblem (exit 4) when offline or without one."""
    if offline():
        raise EnvironmentProblem("HF_HUB_OFFLINE is set; nothing was uploaded",
                                 hint="unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to push")
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise EnvironmentProblem("no Hugging Face token found; nothing was uploaded",
                                 hint=TOKEN_HINT)
    return token


def repo_path(path: str) -> str:
    """Where a release file goes in the repo: model/ at the root, onnx/ under onnx/."""
    folder, rest = path.split("/", 1)
    return rest if folder == CHECKPOINT_DIR else path


def push_release(out: str | Path, repo_id: str, *, private: bool = False) -> dict[str, Any]:
    """Verify release `out`, then upload its model/ and onnx/ to hub model repo `repo_id`
    (created if missing, `private` then) in one commit; return {repo_id, url, files, private}."""
    problem = repo_id_problem(repo_id)
    if problem:
        raise ConfigError(f"--repo-id {problem}")
    out = Path(out).expanduser()
    files = verified_files(out)
    token = hub_token()
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=repo_path(path), path_or_fileobj=str(out / path))
                  for path in files]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(repo_id, operations, repo_type="model",
                                   commit_message=f"Release from wanda-export {__version__}")
    except Exception as error:
        from huggingface_hub.errors import HfHubHTTPError

        if isinstance(error, HfHubHTTPError) or environmental(error):
            raise EnvironmentProblem(f"could not upload to {repo_id}: {first_line(error)}",
                                     hint=TOKEN_HINT) from error
        raise
    log.info("pushed %d files to %s", len(files), repo_id)
    return {"repo_id": repo_id, "url": getattr(commit, "commit_url", None), "files": len(files),
            "private": private}
