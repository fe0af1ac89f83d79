"""What `--out` may replace, decided before any work is done.

A release folder replaces only a missing path, an empty folder, or an earlier release of this
tool, recognised by `RELEASE_MARKER` (written into every release) and a report.json. Anything
else is refused (ConfigError, exit 2) naming what is in the way, unless `force`. Even `force`
never replaces a folder whose removal would take what the user cannot get back: the current
folder or one of its parents, the filesystem root, the home folder, the input model, the
pipeline file's folder, the cache, or a folder holding `.git`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from wanda_export import __version__
from wanda_export.config import PipelineConfig
from wanda_export.errors import ConfigError
from wanda_export.model.loading import classify_path
from wanda_export.paths import cache_root
from wanda_export.report.record import SCHEMA_VERSION

log = logging.getLogger("wanda_export.pipeline")

TOOL = "wanda-export"
RELEASE_MARKER = ".wanda-export-release"
REPORT_FILE = "report.json"
SHOWN_ENTRIES = 5  # entries named when a folder is in the way
_GLOB = frozenset("*?[")
_NEW_FOLDER = "choose a new or empty folder for --out"

Protected = tuple[str, Path]  # (what it is, for messages; where it is)


def parse_out(text: str) -> Path:
    """The `--out` option as a path; an empty value is refused (it would mean the cwd)."""
    if not text.strip():
        raise ConfigError("--out is empty", hint=f"{_NEW_FOLDER}, e.g. --out wanda-out")
    return Path(text).expanduser()


def locate(out: Path) -> Path:
    """`out` made absolute with symlinks resolved in its parents but not in its last part, so a
    symlink at `--out` is seen as one (and never followed to the folder it points at)."""
    full = Path.cwd() / out
    if full.name in ("", ".."):
        return full.resolve()
    return full.parent.resolve() / full.name


def marker_text() -> str:
    """The content of `RELEASE_MARKER`: the tool and the report schema that wrote the release."""
    return json.dumps({"tool": TOOL, "report_schema_version": SCHEMA_VERSION,
                       "tool_version": __version__}, sort_keys=True) + "\n"


def write_marker(folder: Path) -> None:
    """Mark `folder` as a release of this tool, so that a later run may replace it."""
    (folder / RELEASE_MARKER).write_text(marker_text(), encoding="utf-8")


def is_release(folder: Path) -> bool:
    """Whether `folder` is an earlier release: our marker (naming this tool) and a report.json."""
    try:
        marker = json.loads((folder / RELEASE_MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (isinstance(marker, dict) and marker.get("tool") == TOOL
            and (folder / REPORT_FILE).is_file() and not (folder / REPORT_FILE).is_symlink())


def protected_paths(config: PipelineConfig, cache_dir: Path) -> list[Protected]:
    """Every path a release must never replace (nor a parent of), for `check_out_dir`."""
    cwd = Path.cwd()
    found: list[Protected] = [("the filesystem root", Path(cwd.anchor)),
                              ("the current folder", cwd),
                              ("the pipeline file's folder", config.base_dir),
                              ("the cache", cache_dir),
                              ("the default model's cache", cache_root())]
    try:
        found.append(("the home folder", Path.home()))
    except RuntimeError:  # no home folder known
        pass
    kind, source = classify_path(config.model.resolved_path(config.base_dir))
    if kind in ("dir", "gguf"):
        found.append(("the input model", Path(source)))
    for section in (config.data.calibration, config.data.evaluation):
        if section is not None and section.path:
            path = Path(section.to_text_source(config.base_dir).path)
            while _GLOB & set(path.name):  # a glob: the folder before its first pattern
                path = path.parent
            found.append(("the data", path))
    return [(label, path.expanduser().resolve()) for label, path in found]


def check_out_dir(out: Path, protected: Sequence[Protected], *, force: bool) -> Path:
    """Return the absolute release folder for `out`, or raise ConfigError if it may not be
    replaced (see the module docstring); `force` lets a non-empty folder go, nothing else."""
    target = locate(out)
    if target.is_symlink():
        raise ConfigError(f"--out {target} is a symbolic link; a release folder replaces only "
                          "a folder", hint=_NEW_FOLDER)
    if target.exists() and not target.is_dir():
        what = "a file" if target.is_file() else "not a folder"
        raise ConfigError(f"--out {target} is {what}; a release folder replaces only a folder",
                          hint=_NEW_FOLDER)
    never = "(--force does not override this)"
    for label, path in protected:
        if target == path:
            raise ConfigError(f"--out {target} is {label}; replacing it would delete it {never}",
                              hint=_NEW_FOLDER)
        if path.is_relative_to(target):
            raise ConfigError(f"--out {target} holds {label} ({path}); replacing it would "
                              f"delete it {never}", hint=_NEW_FOLDER)
    if os.path.lexists(target / ".git"):
        raise ConfigError(f"--out {target} holds .git (a repository); replacing it would delete "
                          f"it {never}", hint=_NEW_FOLDER)
    if not target.exists():
        _check_creatable(target)
        return target
    entries = sorted(os.listdir(target))
    if not entries or is_release(target):
        return target
    if force:
        log.warning("--force: %s (not a wanda-export release) will be replaced", target)
        return target
    shown = ", ".join(name + "/" * (target / name).is_dir() for name in entries[:SHOWN_ENTRIES])
    more = f" and {len(entries) - SHOWN_ENTRIES} more" if len(entries) > SHOWN_ENTRIES else ""
    raise ConfigError(
        f"--out {target} is a folder that is not an earlier wanda-export release "
        f"(no {RELEASE_MARKER}); it holds {shown}{more}",
        hint=f"{_NEW_FOLDER}, or pass --force to replace this folder and everything in it")


def _check_creatable(target: Path) -> None:
    """Refuse a missing `target` whose nearest existing ancestor is not a folder."""
    for parent in target.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ConfigError(f"--out {target} cannot be created: {parent} is not a folder",
                                  hint=_NEW_FOLDER)
            return
