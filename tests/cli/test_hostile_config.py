"""Hostile pipeline files, size settings and data files: each is exit 2 with a message naming the
key or the file, in well under a second for the YAML bombs, and the work folder is unchanged.

Checks the file alone decides run through `validate`; checks of the text itself (its bytes, its
tokens against nsamples x seqlen) run through `run`, which must then write nothing to --out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hostile import HostileCase, check_case
from pipelines import REMOVE, merged, pipeline_yaml

import wanda_export.cli  # noqa: F401  (imported once here, so no timing below counts it)
from wanda_export.config.limits import MAX_NSAMPLES
from wanda_export.config.loader import MAX_PIPELINE_BYTES
from wanda_export.config.yaml_reader import MAX_YAML_ALIASES, MAX_YAML_DEPTH
from wanda_export.data.sources import MAX_LINE_CHARS

Setup = Callable[[Path], None]

# The pipelines in their data form (see tests/pipelines.py); a case that changes values builds
# its file from data (`changed`), a case whose hostile input is text that no value dumps to (a
# tag, a nul byte, a 5,000-digit integer, an impossible date, an unquoted 1e9) edits the text.
VALID_DATA: dict[str, Any] = {
    "version": 1,
    "model": {"path": "model", "device": "cpu"},
    "data": {
        "calibration": {"source": "text", "path": "calib.txt", "nsamples": 4, "seqlen": 32,
                        "seed": 0},
        "evaluation": {"source": "text", "path": "eval.txt", "seqlen": 32, "max_windows": 4},
    },
    "stages": {"calibrate": {"mode": "dense"}, "score": {"method": "wanda"},
               "mask": {"sparsity": 0.5}},
}
VALID = pipeline_yaml(VALID_DATA)
CALIBRATE_ONLY = VALID_DATA  # no evaluate stage: the calibration text is the first text read
EVALUATE_ONLY = merged(VALID_DATA, {
    "data": {"calibration": None},
    "stages": {"calibrate": REMOVE, "score": {"method": "magnitude"},
               "evaluate": {"perplexity": True}}})
BENCHMARK = {"runtimes": ["torch"], "shapes": ["prefill:1x8"]}


def pipeline(text: str) -> Setup:
    """Write `text` as pipeline.yaml."""
    return lambda work: (work / "pipeline.yaml").write_text(text, encoding="utf-8")


def pipeline_bytes(data: bytes) -> Setup:
    """Write raw bytes as pipeline.yaml."""
    return lambda work: (work / "pipeline.yaml").write_bytes(data)


def changed(base: Mapping[str, Any] = VALID_DATA, **sections: Any) -> Setup:
    """pipeline.yaml: `base` with the nested overrides `sections` (`pipelines.merged`)."""
    return pipeline(pipeline_yaml(merged(base, sections)))


def edited(old: str, new: str, base: str = VALID) -> Setup:
    """pipeline.yaml: the text `base` with `old` replaced by `new` (which must be there)."""
    assert old in base, old
    return pipeline(base.replace(old, new))


def with_calibration(path: str, source: str = "text") -> Setup:
    """The pipeline reading its calibration text from `path` as a `source` source."""
    return changed(CALIBRATE_ONLY, data={"calibration": {"source": source, "path": path}})


def and_file(setup: Setup, name: str, data: bytes) -> Setup:
    """`setup`, plus the file `name` holding `data`."""

    def both(work: Path) -> None:
        setup(work)
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)

    return both


def billion_laughs() -> str:
    """Nine levels of nine aliases: 9**9 (387 million) values once expanded."""
    lines = ["version: 1", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join([*lines, "stages: [verify: {}]", ""])


def validate(case_id: str, setup: Setup, phrase: str) -> HostileCase:
    return HostileCase(case_id, ("validate", "{work}/pipeline.yaml"), 2, phrase, setup)


def run(case_id: str, setup: Setup, phrase: str) -> HostileCase:
    return HostileCase(case_id, ("run", "{work}/pipeline.yaml", "--out", "{work}/out", "--quiet"),
                       2, phrase, setup)


YAML_CASES = [
    validate("billion-laughs", pipeline(billion_laughs()), "once its aliases (*name) are expanded"),
    validate("recursive-alias", pipeline("version: 1\nx: &a [1, *a]\nstages: [verify: {}]\n"),
             "pipeline.yaml:2:4: an alias refers to its own anchor"),
    validate("deep-nesting",
             pipeline("version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\nstages: [verify: {}]\n"),
             f"nests deeper than {MAX_YAML_DEPTH} levels"),
    validate("too-many-aliases",
             pipeline("version: 1\na: &a 1\nb: [" + ", ".join(["*a"] * (MAX_YAML_ALIASES + 1))
                      + "]\nstages: [verify: {}]\n"),
             f"more than {MAX_YAML_ALIASES:,} aliases"),
    validate("huge-file", pipeline(VALID + "#" * (MAX_PIPELINE_BYTES + 1) + "\n"),
             f"over the limit of {MAX_PIPELINE_BYTES:,} bytes"),
    validate("top-level-scalar", pipeline("42\n"), "the top level must be a mapping"),
    validate("top-level-list", pipeline("- version: 1\n"), "the top level must be a mapping"),
    validate("python-apply-tag",
             edited("model: {path: model, device: cpu}",
                    'model: !!python/object/apply:os.system ["touch pwned"]'),
             "pipeline.yaml:2:8: invalid yaml: the tag !!python/object/apply:os.system is not "
             "allowed"),
    validate("python-object-tag",
             edited("{mode: dense}", "!!python/object:collections.OrderedDict {}"),
             "the tag !!python/object:collections.OrderedDict is not allowed"),
    validate("local-tag", edited("{sparsity: 0.5}", "!include other.yaml"),
             "the tag !include is not allowed"),
    validate("binary-junk", pipeline_bytes(b"version: 1\n\x89PNG\r\n\x1a\n\xff\xd8\x00\x01"),
             "pipeline.yaml: not utf-8 text"),
    validate("nul-byte", pipeline_bytes(VALID.encode() + b"# \x00\n"),
             "pipeline.yaml:10:3: invalid yaml: a nul byte"),
    validate("enormous-integer", edited("nsamples: 4", "nsamples: " + "9" * 5000),
             "pipeline.yaml:4:58: invalid yaml: an integer of 5,000 characters"),
    validate("impossible-date", edited("seed: 0", "seed: 2024-13-45"),
             "cannot read the string '2024-13-45': month must be in 1..12"),
    validate("nsamples-a-billion", changed(data={"calibration": {"nsamples": 1000000000}}),
             f"data -> calibration -> nsamples: input should be less than or equal to "
             f"{MAX_NSAMPLES}, got 1000000000"),
    validate("calibration-tokens",
             changed(data={"calibration": {"nsamples": 65536, "seqlen": 2048}}),
             "data -> calibration -> nsamples: nsamples x seqlen = 65,536 x 2,048"),
    validate("negative-seqlen", changed(data={"evaluation": {"seqlen": -32}}),
             "data -> evaluation -> seqlen: input should be greater than or equal to 2, got -32"),
    validate("huge-max-windows", changed(data={"evaluation": {"max_windows": 10000000000}}),
             "data -> evaluation -> max_windows: input should be less than or equal to"),
    validate("huge-batch",
             changed(data={"evaluation": {"max_windows": REMOVE, "batch_size": 99999}}),
             "data -> evaluation -> batch_size: input should be less than or equal to"),
    validate("nan-sparsity", changed(stages={"mask": {"sparsity": float("nan")}}),
             "stages -> mask -> sparsity: input should be a finite number, got nan"),
    validate("inf-owl-m", changed(stages={"mask": {"sparsity": REMOVE, "allocation": "owl",
                                                   "owl_m": float("inf")}}),
             "stages -> mask -> owl_m: input should be a finite number, got inf"),
    validate("string-for-number", changed(data={"calibration": {"nsamples": "lots"}}),
             "data -> calibration -> nsamples: expected an integer, got the string 'lots'"),
    validate("huge-block-size",
             changed(stages={"score": {"method": "sparsegpt", "block_size": 1048576}}),
             "stages -> score -> block_size: input should be less than or equal to"),
    validate("huge-iterations",  # YAML 1.1 reads an unquoted 1e9 as a string
             pipeline(VALID + "- benchmark: {runtimes: [torch], shapes: ['prefill:1x8'], "
                      "iterations: 1e9}\n"),
             "stages -> benchmark -> iterations: expected an integer, got the string '1e9'"),
    validate("billion-iterations",
             changed(stages={"benchmark": {**BENCHMARK, "iterations": 1000000000}}),
             "stages -> benchmark -> iterations: input should be less than or equal to"),
    validate("huge-benchmark-shape",
             changed(stages={"benchmark": {**BENCHMARK, "shapes": ["prefill:100000x100000"]}}),
             "stages -> benchmark -> shapes: shape 'prefill:100000x100000': batch is 100,000"),
    validate("huge-decode-past",
             changed(stages={"benchmark": {**BENCHMARK, "shapes": ["decode:1x1@999999999"]}}),
             "seqlen + past is 1,000,000,000"),
    validate("glob-matches-nothing", changed(data={"calibration": {"path": "corpus/*.txt"}}),
             "data -> calibration -> path: no file matches 'corpus/*.txt'"),
    validate("directory-without-text",
             and_file(changed(data={"calibration": {"path": "corpus"}}), "corpus/notes.csv",
                      b"a,b\n"),
             "data -> calibration -> path: the directory"),
]

RUN_CASES = [
    run("binary-text-source", with_calibration("model/model.safetensors"),
        "model.safetensors is not a text file: a nul byte at byte"),
    run("utf16-text-source", and_file(with_calibration("utf16.txt"), "utf16.txt",
                                      ("Some prose. " * 200).encode("utf-16")),
        "utf16.txt is not a text file"),
    run("latin1-text-source", and_file(with_calibration("latin1.txt"), "latin1.txt",
                                       ("Café crème. " * 200).encode("latin-1")),
        "latin1.txt is not utf-8 text"),
    run("empty-text-file", and_file(with_calibration("empty.txt"), "empty.txt", b""),
        "empty.txt' contains no text"),
    run("jsonl-missing-field",
        and_file(with_calibration("data.jsonl", "jsonl"), "data.jsonl",
                 b'{"text": "fine"}\n{"body": "no text here"}\n'),
        "data.jsonl:2: no field 'text' in this json line"),
    run("jsonl-malformed-line",
        and_file(with_calibration("data.jsonl", "jsonl"), "data.jsonl",
                 b'{"text": "fine"}\n{"text": "cut off\n'),
        "data.jsonl:2: not valid json"),
    run("jsonl-line-not-object",
        and_file(with_calibration("data.jsonl", "jsonl"), "data.jsonl",
                 b'{"text": "fine"}\n["a", "list"]\n'),
        "data.jsonl:2: a json array, not an object with a 'text' field"),
    run("huge-single-line",
        and_file(with_calibration("line.txt"), "line.txt",
                 b"ok\n" + b"a" * (MAX_LINE_CHARS + 1)),
        f"line.txt:2: a line of {MAX_LINE_CHARS + 1:,} characters"),
    run("calibration-text-too-short",
        changed(CALIBRATE_ONLY, data={"calibration": {"nsamples": 4096}}),
        "data -> calibration -> nsamples: 4,096 windows of 32 tokens need 131,072 tokens"),
    run("evaluation-shorter-than-a-window",
        and_file(changed(EVALUATE_ONLY, data={"evaluation": {"path": "short.txt"}}), "short.txt",
                 b"Too short."),
        "data -> evaluation -> seqlen: the evaluation corpus has"),
]


def test_the_corpus_is_large_enough() -> None:
    assert len(YAML_CASES) + len(RUN_CASES) >= 20
    assert len({case.id for case in YAML_CASES + RUN_CASES}) == len(YAML_CASES + RUN_CASES)


@pytest.mark.parametrize("case", YAML_CASES, ids=str)
def test_a_hostile_pipeline_file_is_refused(case: HostileCase, workdir: Path, monkeypatch) -> None:
    started = time.perf_counter()
    check_case(case, workdir, monkeypatch)
    assert time.perf_counter() - started < 10  # seconds, where the bombs took minutes


@pytest.mark.parametrize("case", RUN_CASES, ids=str)
def test_hostile_text_is_refused_before_anything_is_written(
    case: HostileCase, workdir: Path, monkeypatch
) -> None:
    check_case(case, workdir, monkeypatch)
    assert not (workdir / "out").exists()
    assert not list(workdir.glob(".out*"))


def test_the_billion_laughs_fail_in_well_under_a_second(workdir: Path, monkeypatch) -> None:
    case = YAML_CASES[0]
    started = time.perf_counter()
    output = check_case(case, workdir, monkeypatch)
    assert time.perf_counter() - started < 1.0, "the 93 s bomb must fail at once"
    assert "1 error in the pipeline file" in output
