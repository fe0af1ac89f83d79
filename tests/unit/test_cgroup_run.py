"""benchmarks/cgroup_run.py: limit parsing, and (as root, with a cgroup memory controller) a real
run that the limit OOM-kills and one that fits, each reported and cleaned up."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wanda_export.errors import EnvironmentProblem

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "cgroup_run.py"
spec = importlib.util.spec_from_file_location("cgroup_run", SCRIPT)
cgroup_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cgroup_run)
ALLOCATE_300_MIB = [sys.executable, "-c", "x = bytearray(300 * 2**20)"]


@pytest.mark.parametrize(("text", "expected"), [
    ("1073741824", 2**30), ("1GiB", 2**30), ("200MiB", 200 * 2**20), ("1.5GB", 1_500_000_000),
    (" 64KiB ", 65536),
])
def test_limit_parses_bytes_and_units(text, expected):
    assert cgroup_run.parse_limit(text) == expected


@pytest.mark.parametrize("text", ["", "1XB", "GiB", "-1GiB", "1 GiB extra"])
def test_limit_rejects_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="is not a size"):
        cgroup_run.parse_limit(text)


def test_command_is_required(capsys):
    with pytest.raises(SystemExit) as exited:
        cgroup_run.main(["1GiB", "--"])
    assert exited.value.code == 2
    assert "no command given" in capsys.readouterr().err


def can_make_cgroups() -> bool:
    try:
        return os.geteuid() == 0 and os.access(cgroup_run.layout()["root"], os.W_OK)
    except EnvironmentProblem:
        return False


def run_limited(limit: str) -> tuple[int, dict[str, str]]:
    """Run the script in its own process (a fork of pytest would count pytest's RSS)."""
    done = subprocess.run([sys.executable, str(SCRIPT), limit, "--", *ALLOCATE_300_MIB],
                          capture_output=True, text=True, timeout=60, check=False)
    report = dict(re.findall(r"cgroup_run: (\w+(?: \w+)?)\s+(.+)", done.stderr))
    group = Path(re.search(r"\((/sys/fs/cgroup/\S+)\)", report["limit"])[1])
    assert not group.exists()  # removed afterwards
    return done.returncode, report


@pytest.mark.skipif(not can_make_cgroups(), reason="needs root and a cgroup memory controller")
def test_a_command_over_the_limit_is_oom_killed_and_reported():
    code, report = run_limited("200MiB")
    assert code == 137
    assert report["exit code"] == "137 (killed by SIGKILL)"
    assert report["OOM kills"] == "1"
    assert report["peak usage"].startswith(f"{200 * 2**20} bytes")


@pytest.mark.skipif(not can_make_cgroups(), reason="needs root and a cgroup memory controller")
def test_a_command_within_the_limit_passes_with_its_peak():
    code, report = run_limited("1GiB")
    assert code == 0
    assert (report["exit code"], report["OOM kills"], report["limit hit"]) == ("0", "0", "0 times")
    peak = int(report["peak usage"].split()[0])
    rss = int(report["peak RSS"].split()[0])
    assert 300 * 2**20 < peak < 400 * 2**20
    assert 300 * 2**20 < rss < 400 * 2**20
