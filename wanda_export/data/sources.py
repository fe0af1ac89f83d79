"""Where calibration and evaluation text comes from, and how each kind of source is read.

A `TextSource` names the text (the built-in stdlib corpus, local text or JSONL files, or a
Hugging Face dataset); `load_documents` turns it into a list of document strings. Bad user input
raises `ConfigError` naming the file (and line) and the reason: no matching file, a binary or
non-UTF-8 file, a line over `MAX_LINE_CHARS`, a JSONL line that is not an object holding the
text field. An unreachable hub or a missing `datasets` package raises `EnvironmentProblem`.
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
MAX_LINE_CHARS = 1 << 23  # prose has paragraphs, not 8 Mi characters without a line break
_JOIN = "\n\n"

DEFAULT_TEXT_FIELD = "text"  # the record field holding the text, unless `text_field` says


@dataclass(frozen=True)
class TextSource:
    """A description of a text corpus; `path` is for text/jsonl, `dataset` and the rest for hf."""

    kind: SourceKind
    path: str | None = None
    text_field: str = DEFAULT_TEXT_FIELD  # jsonl and hf: the record field holding the text
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
        docs = [_read_text(path) for path in matching_files(source.path or "")]
    elif source.kind == "jsonl":
        docs = [
            doc
            for path in matching_files(source.path or "")
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


def matching_files(pattern: str) -> list[Path]:
    """The files a path, directory or glob pattern names, sorted; ConfigError if there are none
    (a directory: none with a text suffix)."""
    expanded = Path(pattern).expanduser()
    if expanded.is_file():
        return [expanded]
    if expanded.is_dir():
        files = sorted(
            p for p in expanded.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
        )
        if not files:
            raise ConfigError(
                f"the directory {pattern!r} holds no {', '.join(sorted(TEXT_SUFFIXES))} file",
                hint="give a file, or a glob such as 'data/*.jsonl' for other suffixes",
            )
        return files
    files = sorted(Path(p) for p in glob.glob(str(expanded), recursive=True) if Path(p).is_file())
    if not files:
        raise ConfigError(
            f"no text files found at {pattern!r}",
            hint="give an existing file, a directory of .txt/.md files, or a glob such as "
            "'data/*.txt'",
        )
    return files


def _read_text(path: Path) -> str:
    """The UTF-8 text of a file; a binary file (a NUL byte), another encoding or a line over
    MAX_LINE_CHARS is a ConfigError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{path} is not a text file: a NUL byte at byte {nul:,} (binary data, "
                          "or UTF-16 text?)", hint="give UTF-8 text files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    long_line = _long_line(text)
    if long_line is not None:
        number, length = long_line
        raise ConfigError(f"{path}:{number}: a line of {length:,} characters, over the limit of "
                          f"{MAX_LINE_CHARS:,}; text sources are prose broken into lines",
                          hint="give line-broken text (JSONL: one document per line)")
    return text


def _long_line(text: str) -> tuple[int, int] | None:
    """(1-based number, length) of the first line longer than MAX_LINE_CHARS, or None; scans
    without splitting the text."""
    start, number = 0, 1
    while True:
        end = text.find("\n", start)
        stop = len(text) if end < 0 else end
        if stop - start > MAX_LINE_CHARS:
            return number, stop - start
        if end < 0:
            return None
        start, number = end + 1, number + 1


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
        except RecursionError as exc:
            raise ConfigError(f"{path}:{number}: JSON nested too deeply") from exc
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{number}: a JSON {_json_kind(record)}, not an object "
                              f"with a {field!r} field")
        if field not in record:
            keys = ", ".join(map(repr, list(record)[:6])) or "none"
            raise ConfigError(f"{path}:{number}: no field {field!r} in this JSON line "
                              f"(its fields: {keys})")
        value = record[field]
        if not isinstance(value, str):
            raise ConfigError(
                f"{path}:{number}: field {field!r} is a {_json_kind(value)}, not a string"
            )
        docs.append(value)
    return docs


def _json_kind(value: object) -> str:
    """The JSON word for a decoded value's type."""
    if value is None:
        return "null"
    kinds = ((bool, "boolean"), (str, "string"), (int, "number"), (float, "number"),
             (list, "array"), (dict, "object"))
    return next(word for kind, word in kinds if isinstance(value, kind))


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
