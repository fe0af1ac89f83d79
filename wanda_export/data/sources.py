"""Where calibration and evaluation text comes from, and how each kind of source is read.

A `TextSource` names the text (the built-in stdlib corpus, local text or JSONL files, or a
Hugging Face dataset); `load_documents` turns it into a list of document strings. Bad user input
raises `ConfigError`; an unreachable hub or a missing `datasets` package raises
`EnvironmentProblem`.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from wanda_export.data.builtin import Split, builtin_text
from wanda_export.errors import ConfigError, EnvironmentProblem, missing_dependency

if TYPE_CHECKING:
    from wanda_export.data.windows import WindowStrategy

SourceKind = Literal["builtin", "text", "jsonl", "hf"]

SOURCE_KINDS: tuple[SourceKind, ...] = ("builtin", "text", "jsonl", "hf")
TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst"})
_JOIN = "\n\n"


@dataclass(frozen=True)
class TextSource:
    """A description of a text corpus; `path` is for text/jsonl, `dataset` and the rest for hf."""

    kind: SourceKind
    path: str | None = None
    text_field: str = "text"
    dataset: str | None = None
    dataset_config: str | None = None
    data_files: str | None = None
    split: str = "train"

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConfigError(
                f"unknown text source kind {self.kind!r}; expected one of {SOURCE_KINDS}"
            )
        if self.kind in ("text", "jsonl") and not self.path:
            raise ConfigError(f"a '{self.kind}' text source needs a path")
        if self.kind == "hf" and not self.dataset:
            raise ConfigError("an 'hf' text source needs a dataset name")
        if not self.text_field:
            raise ConfigError("the text field name of a text source must not be empty")

    @property
    def window_strategy(self) -> WindowStrategy:
        """How calibration windows are drawn from this source: per document for the hub
        datasets (the Wanda/SparseGPT C4 recipe), from the concatenated text otherwise."""
        return "documents" if self.kind == "hf" else "concatenate"


C4_CALIBRATION = TextSource(
    kind="hf",
    dataset="allenai/c4",
    data_files="en/c4-train.00000-of-01024.json.gz",
    split="train",
)
WIKITEXT2_EVALUATION = TextSource(
    kind="hf", dataset="wikitext", dataset_config="wikitext-2-raw-v1", split="test"
)
BUILTIN = TextSource(kind="builtin")


def load_documents(source: TextSource, split: Split) -> list[str]:
    """Read the documents of `source`; `split` only selects the half of the built-in corpus.

    Documents are returned exactly as stored (empty ones included), because the papers'
    evaluation joins every row of the test split, and dropping rows would change the numbers.
    """
    if source.kind == "builtin":
        docs = builtin_text(split).split(_JOIN)
    elif source.kind == "text":
        docs = [_read_text(path) for path in _matching_files(source.path or "")]
    elif source.kind == "jsonl":
        docs = [
            doc
            for path in _matching_files(source.path or "")
            for doc in _read_jsonl(path, source.text_field)
        ]
    else:
        docs = _load_hf(source)
    if not any(doc.strip() for doc in docs):
        raise ConfigError(f"the {source.kind} text source {_describe(source)} contains no text")
    return docs


def _describe(source: TextSource) -> str:
    if source.kind == "hf":
        return repr(source.dataset)
    return repr(source.path) if source.path else "(built-in stdlib docstrings)"


def _matching_files(pattern: str) -> list[Path]:
    """The files a path, directory or glob pattern names, sorted; ConfigError if there are none."""
    expanded = Path(pattern).expanduser()
    if expanded.is_file():
        return [expanded]
    if expanded.is_dir():
        files = sorted(
            p for p in expanded.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
        )
    else:
        files = sorted(
            Path(p) for p in glob.glob(str(expanded), recursive=True) if Path(p).is_file()
        )
    if not files:
        raise ConfigError(
            f"no text files found at {pattern!r}",
            hint="give an existing file, a directory of .txt/.md files, or a glob such as 'data/*.txt'",
        )
    return files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_jsonl(path: Path, field: str) -> list[str]:
    """The `field` strings of a JSON-lines file; blank lines are skipped."""
    docs = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
        if not isinstance(record, dict) or field not in record:
            raise ConfigError(f"{path}:{number}: no field {field!r} in this JSON line")
        value = record[field]
        if not isinstance(value, str):
            raise ConfigError(
                f"{path}:{number}: field {field!r} is a {type(value).__name__}, not a string"
            )
        docs.append(value)
    return docs


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "the hub or its cache could not be reached" (OSError covers the
    requests/huggingface_hub HTTP and offline-mode errors; httpx errors are not OSErrors)."""
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        import httpx
    except ImportError:
        return tuple(errors)
    errors.append(httpx.HTTPError)
    return tuple(errors)


def _load_hf(source: TextSource) -> list[str]:
    """The `text_field` column of a Hugging Face dataset split, via `datasets.load_dataset`."""
    try:
        import datasets
    except ImportError as exc:
        raise missing_dependency("datasets", "datasets") from exc
    name = f"{source.dataset}" + (f" ({source.dataset_config})" if source.dataset_config else "")
    try:
        table = datasets.load_dataset(
            source.dataset, source.dataset_config, data_files=source.data_files, split=source.split
        )
    except _network_errors() as exc:
        raise EnvironmentProblem(
            f"could not load the Hugging Face dataset {name}, split {source.split!r}: {exc}",
            hint="check network access to the Hugging Face Hub (or that the dataset is in the local "
            "cache when HF_DATASETS_OFFLINE=1), or use a 'builtin', 'text' or 'jsonl' source",
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"invalid Hugging Face dataset request {name}: {exc}") from exc
    columns = list(getattr(table, "column_names", None) or [])
    if source.text_field not in columns:
        raise ConfigError(
            f"the dataset {name} has no column {source.text_field!r}; columns: {columns}"
        )
    values = table[source.text_field]
    bad = next((i for i, value in enumerate(values) if not isinstance(value, str)), None)
    if bad is not None:
        raise ConfigError(
            f"the dataset {name}: row {bad} of column {source.text_field!r} is not a string"
        )
    return list(values)
