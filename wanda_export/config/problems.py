"""Where a pipeline mistake is, and how all of a file's mistakes become one `ConfigError`.

A problem is located at `FILE:LINE:COL` when its value came from the file, and at the
command-line override that set it (`--set mask.sparsity`) when one did. The error lists every
problem, sorted, and carries them as dicts (path, line, column, origin, message) in
`error.problems` for the --json error object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wanda_export.config.base import Loc
from wanda_export.errors import ConfigError

Path_ = tuple[str, ...]


@dataclass
class Locations:
    """1-based (line, column) of every YAML node, by its path of keys and list indices, and the
    override (`--set KEY`) that set each overridden path.

    `values` holds where each value starts, `keys` where the key naming it starts.
    """

    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    overrides: dict[Path_, str] = field(default_factory=dict)

    def find(self, loc: Loc, *, at_key: bool = False) -> tuple[int, int] | None:
        """The position of `loc`; of its key if `at_key`; of the nearest existing parent's key
        when `loc` itself is not in the file (a missing key)."""
        path = tuple(str(part) for part in loc)
        if path in self.values:
            return self.keys.get(path, self.values[path]) if at_key else self.values[path]
        while path:
            path = path[:-1]
            if path in self.values:
                return self.keys.get(path, self.values[path])
        return None

    def origin(self, loc: Loc) -> tuple[str, Path_] | None:
        """The override that put the value at `loc` there, as (label, overridden path), e.g.
        (`--set mask.sparsity`, ("stages", "2", "mask", "sparsity")): one that set `loc` or a
        parent of it, or one below `loc` when `loc` is not in the file (the override created
        it). None for a value from the file."""
        path = tuple(str(part) for part in loc)
        latest_first = list(reversed(self.overrides.items()))
        for overridden, label in latest_first:
            if path[: len(overridden)] == overridden:
                return label, overridden
        if path not in self.values:
            for overridden, label in latest_first:
                if overridden[: len(path)] == path:
                    return label, overridden
        return None


@dataclass(frozen=True)
class Problem:
    """One reported mistake; `loc` is a path of YAML keys and indices."""

    loc: Loc
    message: str
    at_key: bool = False
    position: tuple[int, int] | None = None
    origin: str | None = None


def render_path(loc: Loc) -> str:
    """`stages -> mask -> sparsity`: list indices of stage items are left out when a stage
    name follows (each stage appears once), other indices are kept as numbers."""
    parts = [
        str(part)
        for i, part in enumerate(loc)
        if not (str(part).isdigit() and i > 0 and loc[i - 1] == "stages" and i + 1 < len(loc))
    ]
    return " -> ".join(parts)


def _row(item: Problem, locations: Locations | None) -> dict:
    origin, position, shown = item.origin, item.position, render_path(item.loc)
    if origin is None and position is None and locations is not None:
        found = locations.origin(item.loc)
        if found is not None:
            origin = found[0]
            shown = "" if found[1] == tuple(map(str, item.loc)) else shown
        else:
            position = locations.find(item.loc, at_key=item.at_key)
    line, column = position if position else (None, None)
    return {"path": render_path(item.loc), "line": line, "column": column, "origin": origin,
            "message": item.message, "shown": shown}


def _where(source: str, row: dict) -> str:
    if row["origin"]:
        return row["origin"]
    return f"{source}:{row['line']}:{row['column']}" if row["line"] else source


def config_error(
    source: str, problems: list[Problem], locations: Locations | None = None
) -> ConfigError:
    """One ConfigError listing every problem as `SOURCE:LINE:COL: path: message` (or
    `--set KEY: message` for an overridden value), sorted by position (the file's first), with
    a count on the first line and the structured list as `.problems`."""
    rows = sorted((_row(item, locations) for item in problems),
                  key=lambda row: (row["origin"] is not None, row["line"] or 0,
                                   row["column"] or 0))
    count = f"{len(rows)} error{'s' if len(rows) != 1 else ''}"
    lines = [f"{source}: {count} in the pipeline file"]
    for row in rows:
        shown = row.pop("shown")
        lines.append(f"{_where(source, row)}: " + (f"{shown}: " if shown else "")
                     + row["message"])
    error = ConfigError("\n".join(lines))
    error.problems = rows  # type: ignore[attr-defined]
    return error
