"""Hostile output paths and CLI arguments: refused with exit 2 before any work, nothing touched.

Each `HostileCase` runs in a work folder holding the tiny model (model/), calib.txt, eval.txt and
pipeline.yaml, with the work folder as the current folder; `check_case` asserts the exit code, a
phrase of the message, no traceback, and that the work folder is byte-for-byte unchanged. The
cases a release may replace (a missing path, an empty folder, an earlier release, a forced user
folder) are the normal tests at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import invoke
from hostile import HostileCase, check_case, tree_digest
from pipelines import edit_pipeline_file

from wanda_export.pipeline.outdir import RELEASE_MARKER, is_release

RUN = ("run", "pipeline.yaml", "--quiet")


def _user_folder(work: Path) -> None:
    (work / "mine" / "sub").mkdir(parents=True)
    (work / "mine" / "notes.txt").write_text("my notes")
    (work / "mine" / "sub" / "data.bin").write_bytes(bytes(range(256)))


def _crowded_folder(work: Path) -> None:
    (work / "crowd").mkdir()
    for index in range(7):
        (work / "crowd" / f"f{index}.txt").write_text(str(index))


def _git_repo(work: Path) -> None:
    (work / "repo" / ".git").mkdir(parents=True)
    (work / "repo" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (work / "repo" / "code.py").write_text("print('hi')\n")


def _git_worktree(work: Path) -> None:
    (work / "tree").mkdir()
    (work / "tree" / ".git").write_text("gitdir: /elsewhere/.git/worktrees/tree\n")


def _file(work: Path) -> None:
    (work / "release.txt").write_text("not a folder")


def _symlinks(work: Path) -> None:
    _user_folder(work)
    (work / "link").symlink_to(work / "mine")
    (work / "dangling").symlink_to(work / "nowhere")


def _fake_release(work: Path) -> None:
    (work / "fake").mkdir()
    (work / "fake" / "report.json").write_text('{"schema_version": 1}')


def _foreign_marker(work: Path) -> None:
    _fake_release(work)
    (work / "fake" / RELEASE_MARKER).write_text('{"tool": "another-tool"}')


def _model_in_a_zoo(work: Path) -> None:
    (work / "zoo").mkdir()
    (work / "model").rename(work / "zoo" / "model")
    edit_pipeline_file(work / "pipeline.yaml", model={"path": "zoo/model"})


def _pipeline_in_conf(work: Path) -> None:
    (work / "conf").mkdir()
    edit_pipeline_file(work / "pipeline.yaml", work / "conf" / "pipeline.yaml",
                       model={"path": "../model"},
                       data={"calibration": {"path": "../calib.txt"},
                             "evaluation": {"path": "../eval.txt"}})


def _corpus_folder(work: Path) -> None:
    (work / "corpus").mkdir()
    (work / "calib.txt").rename(work / "corpus" / "calib.txt")
    edit_pipeline_file(work / "pipeline.yaml", data={"calibration": {"path": "corpus/*.txt"}})


def _home(work: Path) -> None:
    (work / "home").mkdir()


NEVER = "--force does not override this"

CASES = [
    # --out that names nothing, or the current folder and its parents
    HostileCase("out-empty-string", (*RUN, "--out", ""), 2, "--out is empty"),
    HostileCase("out-blank", (*RUN, "--out", "   "), 2, "--out is empty"),
    HostileCase("out-dot", (*RUN, "--out", "."), 2, "is the current folder"),
    HostileCase("out-dot-forced", (*RUN, "--out", ".", "--force"), 2, NEVER),
    HostileCase("out-cwd-absolute", (*RUN, "--out", "{work}"), 2, "is the current folder"),
    HostileCase("out-dot-dot", (*RUN, "--out", "..", "--force"), 2,
                "holds the current folder"),
    HostileCase("out-root", (*RUN, "--out", "/", "--force"), 2, "is the filesystem root"),
    HostileCase("out-home", (*RUN, "--out", "{work}/home", "--force"), 2, "is the home folder",
                setup=_home, env=(("HOME", "{work}/home"),)),
    # --out that names the inputs, the cache or a repository
    HostileCase("out-model", (*RUN, "--out", "model"), 2, "is the input model"),
    HostileCase("out-model-forced", (*RUN, "--out", "model", "--force"), 2, NEVER),
    HostileCase("out-model-parent", (*RUN, "--out", "zoo", "--force"), 2,
                "holds the input model", setup=_model_in_a_zoo),
    HostileCase("out-config-dir", ("run", "conf/pipeline.yaml", "--out", "conf", "--force"), 2,
                "is the pipeline file's folder", setup=_pipeline_in_conf),
    HostileCase("out-data-dir", (*RUN, "--out", "corpus", "--force"), 2, "is the data",
                setup=_corpus_folder),
    HostileCase("out-cache", (*RUN, "--out", "cache", "--force"), 2, "is the cache"),
    HostileCase("out-cache-parent", (*RUN, "--out", "store", "--cache-dir", "store/c",
                                     "--force"), 2, "holds the cache"),
    HostileCase("out-git-repo", (*RUN, "--out", "repo", "--force"), 2, "holds .git",
                setup=_git_repo),
    HostileCase("out-git-worktree", (*RUN, "--out", "tree"), 2, "holds .git",
                setup=_git_worktree),
    # --out in the way of a release: the user's things are kept byte for byte
    HostileCase("out-user-folder", (*RUN, "--out", "mine"), 2,
                "not an earlier wanda-export release", setup=_user_folder),
    HostileCase("out-user-folder-entries", (*RUN, "--out", "mine"), 2,
                "it holds notes.txt, sub/", setup=_user_folder),
    HostileCase("out-crowded-folder", (*RUN, "--out", "crowd"), 2, "and 2 more",
                setup=_crowded_folder),
    HostileCase("out-report-without-marker", (*RUN, "--out", "fake"), 2,
                f"no {RELEASE_MARKER}", setup=_fake_release),
    HostileCase("out-foreign-marker", (*RUN, "--out", "fake"), 2,
                "not an earlier wanda-export release", setup=_foreign_marker),
    HostileCase("out-file", (*RUN, "--out", "release.txt"), 2, "is a file", setup=_file),
    HostileCase("out-file-forced", (*RUN, "--out", "release.txt", "--force"), 2, "is a file",
                setup=_file),
    HostileCase("out-under-a-file", (*RUN, "--out", "calib.txt/out"), 2,
                "calib.txt is not a folder"),
    HostileCase("out-symlink", (*RUN, "--out", "link"), 2, "symbolic link", setup=_symlinks),
    HostileCase("out-symlink-forced", (*RUN, "--out", "link", "--force"), 2, "symbolic link",
                setup=_symlinks),
    HostileCase("out-dangling-symlink", (*RUN, "--out", "dangling"), 2, "symbolic link",
                setup=_symlinks),
    HostileCase("stage-out-user-folder", ("calibrate", "pipeline.yaml", "--out", "mine"), 2,
                "not an earlier wanda-export release", setup=_user_folder),
    HostileCase("stage-out-dot", ("export", "pipeline.yaml", "--out", ".", "--force"), 2,
                "is the current folder"),
    # CLI arguments
    HostileCase("clear-unknown-kind", ("cache", "clear", "--kind", "bogus"), 2,
                "known kinds: alphas, calibration, lm-eval, perplexity"),
    HostileCase("clear-misspelt-kind", ("cache", "clear", "--kind", "calibraton"), 2,
                "did you mean 'calibration'"),
    HostileCase("clear-path-kind", ("cache", "clear", "--kind", "../../etc"), 2,
                "is not a kind name"),
    HostileCase("clear-empty-kind", ("cache", "clear", "--kind", ""), 2, "is not a kind name"),
    HostileCase("unknown-option", (*RUN, "--frobnicate"), 2, "No such option"),
    HostileCase("missing-file-argument", ("run", "--out", "x"), 2, "Missing argument"),
    HostileCase("missing-pipeline-file", ("run", "nope.yaml", "--out", "x"), 2,
                "no such pipeline file"),
    HostileCase("unknown-command", ("prune-everything",), 2, "No such command"),
    HostileCase("json-out-empty", (*RUN, "--out", "", "--json"), 2, '"kind": "config"'),
    HostileCase("json-unknown-option", (*RUN, "--frobnicate", "--json"), 2, '"exit_code": 2'),
    HostileCase("json-clear-kind", ("cache", "clear", "--kind", "x/y", "--json"), 2,
                '"kind": "config"'),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_out_and_arguments(case, workdir, write_pipeline, monkeypatch):
    write_pipeline()
    check_case(case, workdir, monkeypatch)


def test_json_error_object_on_every_exit_2(workdir, write_pipeline, monkeypatch):
    monkeypatch.chdir(workdir)
    write_pipeline()
    for args in (("run", "pipeline.yaml", "--out", ".", "--json"),
                 ("run", "--json", "--bogus"),
                 ("cache", "clear", "--kind", "nope", "--json")):
        result = invoke(*args)
        assert result.exit_code == 2
        error = json.loads(result.stdout)["error"]
        assert error["exit_code"] == 2 and error["kind"] == "config" and error["message"]
        assert set(error) == {"exit_code", "kind", "message", "hint", "locations"}
    write_pipeline(sparsity=1.2)
    result = invoke("validate", "pipeline.yaml", "--json")
    assert result.exit_code == 2
    (location,) = json.loads(result.stdout)["error"]["locations"]
    assert location["path"] == "stages -> mask -> sparsity" and location["line"] == 9
    assert set(location) == {"path", "line", "column", "origin", "message"}


def test_the_out_rules_are_checked_before_the_model_loads(workdir, write_pipeline, monkeypatch):
    from wanda_export.pipeline import runner

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(runner, "load_model", no_load)
    _user_folder(workdir)
    result = invoke("run", str(write_pipeline()), "--out", str(workdir / "mine"), "--quiet")
    assert result.exit_code == 2, result.output


def test_an_earlier_release_is_replaced_and_nothing_is_left_aside(workdir, write_pipeline):
    out = workdir / "out"
    path = write_pipeline()
    assert invoke("calibrate", str(path), "--out", str(out), "--quiet").exit_code == 0
    assert is_release(out)  # a stage command writes a release too
    result = invoke("run", str(path), "--out", str(out), "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert is_release(out) and (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / RELEASE_MARKER).read_text())["tool"] == "wanda-export"
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".")) == []


def test_an_empty_folder_and_a_missing_path_are_filled(workdir, write_pipeline):
    path = write_pipeline()
    (workdir / "empty").mkdir()
    for out in (workdir / "empty", workdir / "new" / "nested"):
        assert invoke("calibrate", str(path), "--out", str(out), "--quiet").exit_code == 0
        assert is_release(out)


def test_force_replaces_a_user_folder_and_only_that(workdir, write_pipeline):
    _user_folder(workdir)
    path = write_pipeline()
    before = tree_digest(workdir, skip=("mine", "cache"))
    result = invoke("calibrate", str(path), "--out", str(workdir / "mine"), "--force", "--quiet")
    assert result.exit_code == 0, result.output
    assert is_release(workdir / "mine") and not (workdir / "mine" / "notes.txt").exists()
    assert tree_digest(workdir, skip=("mine", "cache")) == before


def test_a_folder_that_fills_up_during_the_run_is_not_replaced(workdir, write_pipeline,
                                                               monkeypatch):
    from wanda_export.pipeline import stages

    out = workdir / "out"
    real_export = stages.STAGES["export"]

    def export_while_the_user_saves(ctx):
        out.mkdir()
        (out / "saved-meanwhile.txt").write_text("keep me")
        return real_export(ctx)

    monkeypatch.setitem(stages.STAGES, "export", export_while_the_user_saves)
    result = invoke("run", str(write_pipeline()), "--out", str(out), "--quiet")
    assert result.exit_code == 2 and "saved-meanwhile.txt" in result.output
    assert [p.name for p in out.iterdir()] == ["saved-meanwhile.txt"]
    assert not list(workdir.glob(".out.*"))


def test_library_callers_get_the_same_rules(workdir, write_pipeline, monkeypatch):
    from wanda_export.config import load_config
    from wanda_export.errors import ConfigError
    from wanda_export.pipeline.runner import run_pipeline

    config = load_config(write_pipeline())
    monkeypatch.chdir(workdir)
    with pytest.raises(ConfigError, match="is the current folder"):
        run_pipeline(config, "")
