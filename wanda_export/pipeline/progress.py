"""Progress reporting for long work: a no-op default and a rich progress bar on stderr."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[[int], None]


class NullProgress:
    """Reports nothing; the library default and `--quiet`."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        """Yield a callable advancing the task by n units."""
        yield lambda n=1: None


class RichProgress(NullProgress):
    """A rich progress bar per task, drawn on the given console (stderr in the CLI)."""

    def __init__(self, console) -> None:
        self.console = console

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(description, total=total)
            yield lambda n=1: progress.advance(task_id, n)
