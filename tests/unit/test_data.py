"""Unit tests of wanda_export.data: the built-in corpus, text sources and token windows."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from wanda_export.data.builtin import builtin_modules, builtin_text, split_of
from wanda_export.data.sources import (
    C4_CALIBRATION,
    MAX_LINE_CHARS,
    WIKITEXT2_EVALUATION,
    TextSource,
    load_documents,
)
from wanda_export.data.windows import (
    calibration_windows,
    evaluation_ids,
    split_windows,
    token_digest,
)
from wanda_export.errors import ConfigError, EnvironmentProblem

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Pruning removes the weights with the smallest activation-scaled magnitude.",
    "Calibration text is split into windows of tokens.",
    "Perplexity is measured on held-out evaluation text.",
]


def tiny_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained offline on a few sentences (any text encodes)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    core.train_from_iterator(SENTENCES * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=model_max_length)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


def corpus_documents(count: int = 40) -> list[str]:
    return [f"{SENTENCES[i % len(SENTENCES)]} Document number {i}." for i in range(count)]


# builtin corpus


def test_builtin_splits_are_nonempty_and_disjoint_by_module() -> None:
    calibration, evaluation = builtin_modules("calibration"), builtin_modules("evaluation")
    assert calibration and evaluation
    assert not set(calibration) & set(evaluation)
    assert all(split_of(m) == "calibration" for m in calibration)
    assert all(split_of(m) == "evaluation" for m in evaluation)
    assert len(builtin_text("calibration")) > 200_000
    assert len(builtin_text("evaluation")) > 200_000


def test_builtin_skips_test_packages_and_never_imports() -> None:
    modules = builtin_modules("calibration") + builtin_modules("evaluation")
    assert not [m for m in modules if m.split(".")[0] in {"test", "idlelib"}]
    assert not [m for m in modules if {"test", "tests"} & set(m.split(".")[1:])]
    assert "os" in modules  # a frozen module still has its source read
    assert "antigravity" not in sys.modules


def test_builtin_text_is_deterministic_across_processes() -> None:
    code = (
        "import hashlib; from wanda_export.data.builtin import builtin_text as t; "
        "print(hashlib.sha256(t('calibration').encode()).hexdigest(), "
        "hashlib.sha256(t('evaluation').encode()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()
    here = [
        hashlib.sha256(builtin_text(s).encode()).hexdigest() for s in ("calibration", "evaluation")
    ]
    assert out == here


def test_builtin_documents_split_on_blank_lines() -> None:
    docs = load_documents(TextSource(kind="builtin"), "evaluation")
    assert len(docs) > 100
    assert "\n\n".join(docs) == builtin_text("evaluation")


# text and jsonl sources


def test_text_glob_is_sorted(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.md").write_text("first", encoding="utf-8")
    (tmp_path / "c.txt").write_text("third", encoding="utf-8")
    assert load_documents(TextSource(kind="text", path=str(tmp_path / "*.txt")), "calibration") == [
        "second",
        "third",
    ]
    assert load_documents(TextSource(kind="text", path=str(tmp_path)), "calibration") == [
        "first",
        "second",
        "third",
    ]


def test_text_missing_path_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "*.txt")
    with pytest.raises(ConfigError, match="nowhere"):
        load_documents(TextSource(kind="text", path=missing), "calibration")


def test_text_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.txt.*UTF-8"):
        load_documents(TextSource(kind="text", path=str(bad)), "calibration")


def test_text_without_any_text(tmp_path: Path) -> None:
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no text"):
        load_documents(TextSource(kind="text", path=str(tmp_path / "blank.txt")), "calibration")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GGUF\x03\x00\x00\x00junk", r"bin\.txt is not a text file: a NUL byte at byte 5"),
        ("prose".encode("utf-16"), (r"bin\.txt is not a text file: a NUL byte at byte 3 "
                                    r"\(binary data, or UTF-16 text\?\)")),
        (b"\x89PNG\r\n\x1a\n\xff", r"bin\.txt is not UTF-8 text: invalid start byte at byte 0"),
    ],
    ids=["nul", "utf16", "png"],
)
def test_a_binary_file_is_refused_naming_it(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / "bin.txt").write_bytes(data)
    for kind in ("text", "jsonl"):
        with pytest.raises(ConfigError, match=message):
            load_documents(TextSource(kind=kind, path=str(tmp_path / "bin.txt")), "calibration")


def test_a_line_over_the_limit_is_refused_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "line.txt"
    path.write_text("fine\n" + "a" * MAX_LINE_CHARS + "\nfine\n", encoding="utf-8")
    assert load_documents(TextSource(kind="text", path=str(path)), "calibration")
    path.write_text("fine\nfine\n" + "a" * (MAX_LINE_CHARS + 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"line\.txt:3: a line of {MAX_LINE_CHARS + 1:,} "
                                          "characters, over the limit"):
        load_documents(TextSource(kind="text", path=str(path)), "calibration")


def test_a_directory_without_text_files_says_which_suffixes_count(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"the directory .* holds no \.markdown, \.md, \.rst, "
                                          r"\.txt file"):
        load_documents(TextSource(kind="text", path=str(tmp_path)), "calibration")


def test_jsonl_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"deep\.jsonl:1: JSON nested too deeply"):
        load_documents(TextSource(kind="jsonl", path=str(path)), "calibration")


def test_jsonl_reads_field(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"body": "one", "id": 1}), "", json.dumps({"body": "two"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = TextSource(kind="jsonl", path=str(path), text_field="body")
    assert load_documents(source, "evaluation") == ["one", "two"]


def test_jsonl_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.jsonl:2: not valid JSON"):
        load_documents(TextSource(kind="jsonl", path=str(path)), "calibration")


@pytest.mark.parametrize(
    ("line", "message"),
    [('{"other": "x"}', "no field 'text' in this JSON line \\(its fields: 'other'\\)"),
     ('{"text": 3}', "field 'text' is a number, not a string"),
     ('["text"]', "a JSON array, not an object with a 'text' field"),
     ("null", "a JSON null, not an object")],
)
def test_jsonl_missing_or_wrong_field(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"data\.jsonl:2: .*{message}"):
        load_documents(TextSource(kind="jsonl", path=str(path)), "calibration")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "text"},
        {"kind": "jsonl"},
        {"kind": "hf"},
        {"kind": "csv"},
        {"kind": "builtin", "text_field": ""},
    ],
)
def test_invalid_source_rejected(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TextSource(**kwargs)


def test_window_strategy_per_kind() -> None:
    assert C4_CALIBRATION.window_strategy == "documents"
    assert WIKITEXT2_EVALUATION.window_strategy == "documents"
    assert TextSource(kind="builtin").window_strategy == "concatenate"
    assert TextSource(kind="jsonl", path="x.jsonl").window_strategy == "concatenate"


# hf source (no network: `datasets` is replaced)


def test_hf_without_datasets_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(EnvironmentProblem, match="datasets"):
        load_documents(WIKITEXT2_EVALUATION, "evaluation")


class FakeTable:
    def __init__(self, columns: dict[str, list]) -> None:
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, name: str) -> list:
        return self.columns[name]


def fake_datasets(monkeypatch: pytest.MonkeyPatch, behaviour) -> list[tuple]:
    calls: list[tuple] = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return behaviour()

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_hf_returns_text_column_with_empty_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_datasets(monkeypatch, lambda: FakeTable({"text": ["a", "", "b"], "n": [1, 2, 3]}))
    assert load_documents(WIKITEXT2_EVALUATION, "evaluation") == ["a", "", "b"]
    assert calls == [
        (("wikitext", "wikitext-2-raw-v1"), {"data_files": None, "split": "test"}),
    ]


def test_hf_passes_c4_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_datasets(monkeypatch, lambda: FakeTable({"text": ["doc"]}))
    load_documents(C4_CALIBRATION, "calibration")
    assert calls == [
        (
            ("allenai/c4", None),
            {"data_files": "en/c4-train.00000-of-01024.json.gz", "split": "train"},
        )
    ]


def test_hf_unreachable_is_environment_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline():
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    fake_datasets(monkeypatch, offline)
    with pytest.raises(EnvironmentProblem, match="wikitext"):
        load_documents(WIKITEXT2_EVALUATION, "evaluation")


def test_hf_bad_request_and_missing_column_are_config_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def bad_config():
        raise ValueError("BuilderConfig 'nope' not found")

    fake_datasets(monkeypatch, bad_config)
    with pytest.raises(ConfigError, match="nope"):
        load_documents(WIKITEXT2_EVALUATION, "evaluation")
    fake_datasets(monkeypatch, lambda: FakeTable({"content": ["x"]}))
    with pytest.raises(ConfigError, match="no column 'text'"):
        load_documents(WIKITEXT2_EVALUATION, "evaluation")


# windows


def test_calibration_windows_shape_and_determinism(tokenizer) -> None:
    docs = corpus_documents()
    for strategy in ("concatenate", "documents"):
        first = calibration_windows(tokenizer, docs, 6, 8, seed=0, strategy=strategy)
        again = calibration_windows(tokenizer, docs, 6, 8, seed=0, strategy=strategy)
        other = calibration_windows(tokenizer, docs, 6, 8, seed=1, strategy=strategy)
        assert first.shape == (6, 8) and first.dtype == torch.long
        assert torch.equal(first, again)
        assert not torch.equal(first, other)


def test_concatenate_windows_are_slices_of_the_corpus(tokenizer) -> None:
    docs = corpus_documents()
    corpus = tokenizer("\n\n".join(docs), add_special_tokens=False, verbose=False)["input_ids"]
    text = " ".join(map(str, corpus))
    for row in calibration_windows(tokenizer, docs, 5, 7, seed=3):
        assert " ".join(map(str, row.tolist())) in text


def test_documents_windows_come_from_one_document(tokenizer) -> None:
    docs = corpus_documents()
    encoded = [
        " ".join(map(str, tokenizer(d, add_special_tokens=False)["input_ids"])) for d in docs
    ]
    for row in calibration_windows(tokenizer, docs, 5, 6, seed=3, strategy="documents"):
        assert any(" ".join(map(str, row.tolist())) in e for e in encoded)


def test_documents_falls_back_when_all_documents_are_short(tokenizer) -> None:
    docs = ["short one.", "short two."] * 20
    windows = calibration_windows(tokenizer, docs, 3, 16, seed=0, strategy="documents")
    assert torch.equal(windows, calibration_windows(tokenizer, docs, 3, 16, seed=0))


def test_calibration_corpus_too_small(tokenizer) -> None:
    with pytest.raises(ConfigError, match=r"seqlen: .* fewer than seqlen \+ 1 = 1,001"):
        calibration_windows(tokenizer, ["tiny text"], 1, 1000, seed=0)


def test_calibration_text_must_hold_nsamples_times_seqlen_tokens(tokenizer) -> None:
    docs = corpus_documents()
    available = len(tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"])
    seqlen = 8
    fits = available // seqlen
    assert calibration_windows(tokenizer, docs, fits, seqlen, seed=0).shape == (fits, seqlen)
    with pytest.raises(ConfigError, match=rf"data -> calibration -> nsamples: {fits + 1} windows "
                                          rf"of 8 tokens need {(fits + 1) * 8:,} tokens of "
                                          rf"calibration text, but it has {available:,}"):
        calibration_windows(tokenizer, docs, fits + 1, seqlen, seed=0)


def test_the_check_on_available_tokens_allocates_nothing_first(tokenizer, monkeypatch) -> None:
    def drawn(*args: object) -> int:
        raise AssertionError("a start was drawn before the check")

    monkeypatch.setattr(random.Random, "randint", drawn)
    with pytest.raises(ConfigError, match="nsamples: 1,000,000,000 windows"):
        calibration_windows(tokenizer, corpus_documents(), 10**9, 8, seed=0)


@pytest.mark.parametrize("strategy", ["concatenate", "documents"])
def test_windows_of_valid_settings_are_drawn_as_before(tokenizer, strategy: str) -> None:
    """The Wanda/SparseGPT recipe, written out: a check that passes draws the same windows
    (and so keeps every cache key), documents too short falling back to the same draw."""
    docs = ["short one.", "short two."] * 30
    ids = tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    rng = random.Random(7)
    starts = [rng.randint(0, len(ids) - 12 - 1) for _ in range(5)]
    expected = torch.tensor([ids[start : start + 12] for start in starts])
    windows = calibration_windows(tokenizer, docs, 5, 12, seed=7, strategy=strategy)
    assert torch.equal(windows, expected)


@pytest.mark.parametrize(("nsamples", "seqlen"), [(0, 8), (1, 1), (1, 0), (-1, 8)])
def test_calibration_rejects_bad_sizes(tokenizer, nsamples: int, seqlen: int) -> None:
    with pytest.raises(ConfigError):
        calibration_windows(tokenizer, corpus_documents(), nsamples, seqlen, seed=0)


def test_long_text_does_not_warn(capfd: pytest.CaptureFixture[str]) -> None:
    fresh = tiny_tokenizer(model_max_length=16)
    docs = corpus_documents(200)
    calibration_windows(fresh, docs, 2, 32, seed=0)
    ids = evaluation_ids(fresh, docs)
    assert ids.shape[1] > 16
    assert "Token indices sequence length" not in capfd.readouterr().err


def test_evaluation_ids_join_documents(tokenizer) -> None:
    docs = ["alpha", "", "beta"]
    ids = evaluation_ids(tokenizer, docs)
    assert ids.shape[0] == 1 and ids.dtype == torch.long
    assert tokenizer.decode(ids[0].tolist()) == "alpha\n\n\n\nbeta"


def test_split_windows_non_overlapping_and_capped() -> None:
    ids = torch.arange(23).unsqueeze(0)
    windows = split_windows(ids, 5, None)
    assert windows.shape == (4, 5)
    assert torch.equal(windows.flatten(), torch.arange(20))
    assert torch.equal(split_windows(ids, 5, 2), windows[:2])
    assert split_windows(ids, 5, 100).shape == (4, 5)


def test_split_windows_needs_one_window() -> None:
    with pytest.raises(ConfigError, match="data -> evaluation -> seqlen: the evaluation corpus "
                                          "has 4 tokens, fewer than one window of 5"):
        split_windows(torch.arange(4).unsqueeze(0), 5, None)
    with pytest.raises(ConfigError):
        split_windows(torch.arange(40).unsqueeze(0), 5, 0)


def test_token_digest_sensitivity() -> None:
    ids = torch.arange(12).reshape(2, 6)
    base = token_digest(ids)
    assert base == token_digest(ids.clone()) == token_digest(ids.to(torch.int32))
    assert len(base) == 64
    changed = ids.clone()
    changed[1, 5] = 99
    assert token_digest(changed) != base
    assert token_digest(ids.reshape(3, 4)) != base
    assert token_digest(ids.reshape(1, 12)) != base
