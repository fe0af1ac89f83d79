"""`wanda-export push` and `export: {push_to_hub}`: everything up to the network boundary (HfApi's
methods record their calls), exit 4 offline or without a token, nothing uploaded from a
release that is not whole."""

from __future__ import annotations

import json

import pytest
from helpers import invoke


@pytest.fixture
def hub(monkeypatch):
    """HfApi's create_repo and create_commit replaced by recorders; a token present."""
    from huggingface_hub import CommitInfo, HfApi

    calls: list[tuple[str, tuple, dict]] = []

    def create_repo(self, *args, **kwargs):
        calls.append(("create_repo", args, kwargs))

    def create_commit(self, *args, **kwargs):
        calls.append(("create_commit", args, kwargs))
        return CommitInfo(commit_url="https://huggingface.co/org/name/commit/abc",
                          commit_message="m", commit_description="", oid="abc")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return calls


@pytest.fixture
def release(write_pipeline, workdir):
    out = workdir / "release"
    assert invoke("run", str(write_pipeline()), "--out", str(out), "--quiet").exit_code == 0
    return out


def test_push_uploads_the_verified_model_and_onnx_in_one_commit(write_pipeline, workdir, hub):
    release = workdir / "release"
    pipeline = write_pipeline(stages={"export": {"formats": ["safetensors", "onnx"],
                                                 "parity": False}})
    assert invoke("run", str(pipeline), "--out", str(release), "--quiet").exit_code == 0
    result = invoke("push", str(release), "--repo-id", "org/name", "--private", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["url"].endswith("/commit/abc")
    (name, args, kwargs), (commit_name, commit_args, commit_kwargs) = hub
    assert commit_kwargs["repo_type"] == "model"
    assert name == "create_repo" and args == ("org/name",)
    assert kwargs == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert commit_name == "create_commit" and commit_args[0] == "org/name"
    uploaded = {op.path_in_repo: op.path_or_fileobj for op in commit_args[1]}
    manifest = json.loads((release / "manifest.json").read_text())["artifacts"]
    expected = {a["path"].removeprefix("model/"): str(release / a["path"]) for a in manifest
                if a["path"].startswith(("model/", "onnx/"))}
    assert uploaded == expected
    assert {"config.json", "model.safetensors", "README.md", "onnx/model.onnx"} <= set(uploaded)


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_TOKEN": None}])
def test_offline_or_without_a_token_exits_4_and_uploads_nothing(release, hub, monkeypatch, env,
                                                                  tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-hf-home"))  # no stored token either
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    result = invoke("push", str(release), "--repo-id", "org/name", "--json")
    assert result.exit_code == 4
    message = json.loads(result.stdout)["error"]["message"]
    assert "nothing was uploaded" in message
    assert hub == []


def test_a_release_that_is_not_whole_is_not_pushed(release, hub):
    (release / "model" / "config.json").write_text("{}")
    (release / "model" / "extra.bin").write_bytes(b"x")
    result = invoke("push", str(release), "--repo-id", "org/name")
    assert result.exit_code == 2
    assert "model/config.json: changed since the run" in result.stderr
    assert "model/extra.bin: not in the manifest" in result.stderr
    assert hub == []


def test_a_failed_release_and_bad_arguments_are_refused(write_pipeline, workdir, hub):
    failed = workdir / "failed"
    assert invoke("run", str(write_pipeline(ppl_max=1.0)), "--out", str(failed),
                  "--quiet").exit_code == 3
    assert invoke("push", str(failed), "--repo-id", "org/name").exit_code == 3
    assert invoke("push", str(workdir), "--repo-id", "org/name").exit_code == 2
    bad = invoke("push", str(failed), "--repo-id", "no-slash")
    assert bad.exit_code == 2 and "is not a hub repo id" in bad.stderr
    assert hub == []


def test_a_hub_error_is_exit_4(release, hub, monkeypatch):
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")

    def forbidden(self, *args, **kwargs):
        raise HfHubHTTPError("403 Forbidden: no write access",
                             response=httpx2.Response(403, request=request))

    monkeypatch.setattr(HfApi, "create_repo", forbidden)
    result = invoke("push", str(release), "--repo-id", "org/name")
    assert result.exit_code == 4 and "could not upload to org/name" in result.stderr


def test_the_push_to_hub_setting_pushes_after_a_passing_run(write_pipeline, workdir, hub):
    pipeline = write_pipeline(stages={"export": {"push_to_hub": {"repo_id": "org/name"}}})
    out = workdir / "out"
    assert invoke("run", str(pipeline), "--out", str(out), "--quiet").exit_code == 0
    assert [call[0] for call in hub] == ["create_repo", "create_commit"]
    assert hub[0][2]["private"] is False


def test_the_push_to_hub_setting_offline_exits_4_before_any_work(write_pipeline, workdir, hub,
                                                                  monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline = write_pipeline(stages={"export": {"push_to_hub": {"repo_id": "org/name"}}})
    out = workdir / "out"
    result = invoke("run", str(pipeline), "--out", str(out), "--quiet")
    assert result.exit_code == 4 and "HF_HUB_OFFLINE" in result.stderr
    assert not out.exists() and hub == []


def test_the_push_to_hub_setting_refuses_a_bad_repo_id(write_pipeline):
    pipeline = write_pipeline(stages={"export": {"push_to_hub": {"repo_id": "a--b/c"}}})
    result = invoke("validate", str(pipeline))
    assert result.exit_code == 2
    assert "export -> push_to_hub -> repo_id" in result.stderr
