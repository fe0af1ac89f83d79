"""What a failed transformers load means for the user: a ConfigError naming the checkpoint, an
EnvironmentProblem (a missing package, an unreachable hub), or a re-raised bug."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from wanda_export.errors import ConfigError, EnvironmentProblem, WandaExportError
from wanda_export.model.checkpoint import first_line
from wanda_export.model.hub import load_error


def _mapped(error: Exception, where: str, trust_remote_code: bool) -> Exception | None:
    """The ConfigError / EnvironmentProblem for an exception from a transformers load.

    None for one to re-raise as it is: out of memory (the CLI maps it), our own errors, and an
    unexpected exception from transformers' own code (a bug). With trust_remote_code the
    checkpoint's Python code ran too, so any exception from it is the checkpoint's fault.
    """
    from safetensors import SafetensorError

    if isinstance(error, (WandaExportError, torch.OutOfMemoryError)):
        return None
    if isinstance(error, ImportError):
        return EnvironmentProblem(f"loading {where} needs a package that is not installed: "
                                  f"{first_line(error)}")
    if isinstance(error, (OSError, ValueError, KeyError, RuntimeError, SafetensorError)):
        return ConfigError(f"could not load {where}: {first_line(error)}")
    if trust_remote_code:
        return ConfigError(
            f"the checkpoint's own code (trust_remote_code) failed while loading {where}: "
            f"{type(error).__name__}: {first_line(error)}",
            hint="fix its modeling files, or set model: {trust_remote_code: false}",
        )
    return None


@contextmanager
def loading_errors(
    where: str, trust_remote_code: bool, hub: tuple[str, str | None, str | None] | None = None
) -> Iterator[None]:
    """Turn a failure of the transformers load inside the block into a one-line ConfigError or
    EnvironmentProblem naming `where`; an OSError of a hub load (`hub` = repo id, revision,
    why the hub was not asked) is mapped by hub.load_error."""
    try:
        yield
    except Exception as error:
        if hub is not None and isinstance(error, OSError):
            raise load_error(*hub, error) from error
        mapped = _mapped(error, where, trust_remote_code)
        if mapped is None:
            raise
        raise mapped from error
