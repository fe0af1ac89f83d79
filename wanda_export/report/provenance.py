"""Where and with what a run was made, for report.json: when (UTC), the versions of Python, of
the libraries that shape the numbers and of wanda-export itself (with its git commit when it
runs from a checkout), and the host (CPU model, cores, GPU). Read without importing the
libraries, so it costs milliseconds."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

# The distributions whose versions a report names (null when not installed).
VERSIONED = ("torch", "transformers", "onnxruntime", "onnxruntime-genai", "lm-eval",
             "wanda-export")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_GIT_TIMEOUT_S = 5.0


def created_now() -> str:
    """The current time in UTC, ISO 8601 to the second: `2026-11-30T14:39:07+00:00`."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_commit(folder: Path = _PACKAGE_DIR) -> str | None:
    """The commit of the git checkout `folder` is in (`-dirty` appended when it has changes),
    or None (an installed wheel, no git, or not a repository)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                                  text=True, timeout=_GIT_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def versions() -> dict[str, str | None]:
    """Python's version, each of VERSIONED's (None when not installed), and wanda-export's git
    commit (`wanda-export-commit`, None when unknown)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    found |= {name: _version(name) for name in VERSIONED}
    found["wanda-export-commit"] = git_commit()
    return found


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host() -> dict[str, object]:
    """The machine: OS, CPU model, logical cores (and those this process may use), the first
    GPU torch sees (its name; None without one) and how many there are."""
    import torch

    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "cores_usable": usable, "gpu": gpus[0] if gpus else None, "gpu_count": len(gpus)}
