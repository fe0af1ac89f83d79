"""The offline default corpus: docstrings of the Python standard library.

Every Python install ships the standard library's source, so its docstrings are English prose
available without a network or third-party text. Files are parsed with `ast` (never imported or
executed), and each module's text goes entirely to either the calibration or the held-out
evaluation split, chosen by a hash of its dotted name, so the two splits never share a module.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.machinery
import json
import sys
import sysconfig
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from wanda_export.atomic import atomic_write_bytes
from wanda_export.paths import cache_root

Split = Literal["calibration", "evaluation"]

SPLITS: tuple[Split, ...] = ("calibration", "evaluation")
EVALUATION_MODULUS = 4
_SKIPPED_TOP_LEVEL = frozenset({"test", "idlelib", "__main__"})
_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages"})
_JOIN = "\n\n"
CORPUS_FORMAT = 1  # bump when the corpus's construction changes, so saved copies are rebuilt
_CONTAINERS = (ast.stmt, ast.excepthandler, ast.match_case)  # what can hold a statement


def split_of(module: str) -> Split:
    """Return the split a dotted module name belongs to; stable across runs and machines."""
    digest = int(hashlib.sha256(module.encode("utf-8")).hexdigest(), 16)
    return "evaluation" if digest % EVALUATION_MODULUS == 0 else "calibration"


def _stdlib_dir() -> Path:
    """The directory holding the standard library's pure-Python sources (never a venv's)."""
    return Path(sysconfig.get_path("stdlib"))


def _skipped(path: Path, root: Path) -> bool:
    return any(part in _SKIPPED_DIRS for part in path.relative_to(root).parts)


def _module_files(name: str, stdlib: Path) -> list[tuple[str, Path]]:
    """The (dotted name, source file) pairs of one top-level stdlib module or package.

    `PathFinder.find_spec` with an explicit search path locates the source without importing
    anything and also finds the sources of modules the interpreter runs frozen (os, codecs).
    """
    spec = importlib.machinery.PathFinder.find_spec(name, [str(stdlib)])
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    origin = Path(spec.origin)
    if not spec.submodule_search_locations:
        return [(name, origin)]
    root = origin.parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if _skipped(path, root):
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join([name, *parts]), path))
    return found


def _docstrings(path: Path) -> list[str]:
    """Module, class and function docstrings of one source file, in `ast.walk` order."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    texts = []
    for node in _statements(tree):
        if isinstance(node, kinds):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                texts.append(doc.strip())
    return texts


def _statements(tree: ast.Module) -> Iterator[ast.AST]:
    """The statements of `tree` in `ast.walk`'s breadth-first order, without descending into
    expressions (where no docstring can be): the same order as `ast.walk` for these nodes, as
    every ancestor of a statement is kept, in about a fifth of the time."""
    queue = deque([tree])
    while queue:
        node = queue.popleft()
        yield node
        queue.extend(child for child in ast.iter_child_nodes(node)
                     if isinstance(child, _CONTAINERS))


Corpus = tuple[tuple[str, Split, tuple[str, ...]], ...]


@functools.lru_cache(maxsize=1)
def _corpus() -> Corpus:
    """(module, split, docstrings) for every stdlib source file that has docstrings: read from
    the user cache when this Python built it before (parsing ~700 files takes seconds, which
    `plan` and every run would pay), else built and saved there."""
    saved = _saved_corpus_path()
    try:
        rows = json.loads(saved.read_text(encoding="utf-8"))
        return tuple((module, split, tuple(docs)) for module, split, docs in rows)
    except (OSError, ValueError, TypeError):
        pass  # not built yet, or unreadable: build it again
    corpus = _build_corpus()
    try:
        atomic_write_bytes(saved, json.dumps(corpus).encode("utf-8"))
    except OSError:
        pass  # a read-only cache: the corpus is rebuilt next time
    return corpus


def _saved_corpus_path() -> Path:
    """Where this Python's corpus is kept: keyed by the interpreter's full version and its
    stdlib folder (what the corpus is made of) and CORPUS_FORMAT."""
    identity = f"{CORPUS_FORMAT}|{sys.version}|{_stdlib_dir()}"
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    return cache_root() / "corpus" / f"stdlib-docstrings-{digest}.json"


def _build_corpus() -> Corpus:
    """Parse the standard library's sources into the corpus (see `_corpus`)."""
    stdlib = _stdlib_dir()
    files: dict[str, Path] = {}
    for name in sorted(sys.stdlib_module_names):
        if name not in _SKIPPED_TOP_LEVEL:
            files.update(_module_files(name, stdlib))
    corpus = []
    for module, path in sorted(files.items(), key=lambda item: item[1].relative_to(stdlib).parts):
        docs = _docstrings(path)
        if docs:
            corpus.append((module, split_of(module), tuple(docs)))
    return tuple(corpus)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@functools.lru_cache(maxsize=2)
def builtin_text(split: Split) -> str:
    """The stdlib docstrings of one split joined with blank lines: a deterministic offline corpus."""
    _check_split(split)
    return _JOIN.join(doc for _, side, docs in _corpus() if side == split for doc in docs)


def builtin_modules(split: Split) -> list[str]:
    """The dotted names of the modules whose docstrings make up `split`, sorted."""
    _check_split(split)
    return sorted(module for module, side, _ in _corpus() if side == split)
