"""Run a command under a memory cgroup limit and report its peak memory, OOM kills and time.

    python benchmarks/cgroup_run.py 1GiB -- python benchmarks/make_random_checkpoint.py OUT
    python benchmarks/cgroup_run.py 2147483648 -- wanda-export run pipeline.yaml

The scale tests of issue 11 must prove a run fits a memory limit the way CI runners and
containers impose one. This creates a fresh cgroup inside the caller's own (v1 `memory`
controller, or v2 where the root lists it), so any limit above it still applies; writes the
limit (and, where there is swap, the memory+swap limit, so swap cannot hide the use); moves only
the child into it; and removes it afterwards, also after a failure or an interrupt. Needs root.

The report goes to stderr: the cgroup's peak usage, which also counts page cache charged to it
(file reads and writes, which the kernel reclaims under the limit), the largest process's peak
RSS, how often the limit was hit, OOM kills, wall time and exit code. The exit code is the
command's (128 + N when signal N killed it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from wanda_export.errors import EnvironmentProblem

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1 = {"root": CGROUP_ROOT / "memory", "limit": "memory.limit_in_bytes",
      "swap": "memory.memsw.limit_in_bytes", "peak": "memory.max_usage_in_bytes"}
V2 = {"root": CGROUP_ROOT, "limit": "memory.max", "swap": "memory.swap.max",
      "peak": "memory.peak"}
JOIN_AND_EXEC = 'echo $$ > "$0" && exec "$@"'
UNITS = {"": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def parse_limit(text: str) -> int:
    """Bytes from `1073741824`, `1GiB`, `200MiB` or `1.5GB`.

    Not accelerate's parser: importing it loads torch into this process, and the child's peak
    RSS would then include the ~150 MiB this process has when it forks.
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]i?B)?", text.strip())
    if not match or (match[2] or "") not in UNITS:
        units = ", ".join(unit for unit in UNITS if unit)
        raise ValueError(f"{text!r} is not a size: bytes, or a number with {units}")
    return int(float(match[1]) * UNITS[match[2] or ""])


def layout() -> dict:
    """File names of the cgroup version that has the memory controller on this machine."""
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.is_file() and "memory" in controllers.read_text().split():
        return V2
    if V1["root"].is_dir():
        return V1
    raise EnvironmentProblem(f"no cgroup memory controller under {CGROUP_ROOT}")


def own_cgroup(files: dict) -> Path:
    """This process's cgroup in the hierarchy of ``files``.

    New groups nest in it, so the limit and accounting the caller is under (a CI runner's, a
    container's, a sandbox's) still cover the command.
    """
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",")
        if (names == [""]) if files is V2 else ("memory" in names):
            return files["root"] / path.lstrip("/")
    raise EnvironmentProblem("/proc/self/cgroup does not name this process's memory cgroup")


def swap_on() -> bool:
    """Whether the machine has swap (v1's memory+swap limit then stops swap hiding the use).

    Without swap it is not set: the kernel then counts limit hits on neither counter.
    """
    return len(Path("/proc/swaps").read_text().splitlines()) > 1


def hit_counts(group: Path, files: dict) -> tuple[int, int]:
    """(times the limit was hit, OOM kills) of ``group``."""
    events = group / ("memory.oom_control" if files is V1 else "memory.events")
    fields = dict(line.split() for line in events.read_text().splitlines())
    if files is V2:
        return int(fields["max"]), int(fields["oom_kill"])
    counters = [group / "memory.failcnt", group / "memory.memsw.failcnt"]
    return max(int(c.read_text()) for c in counters if c.exists()), int(fields["oom_kill"])


def remove(group: Path) -> None:
    """Kill what the command left running in ``group`` (its descendants), then remove it."""
    procs = group / "cgroup.procs"
    for _ in range(100):
        pids = [int(pid) for pid in procs.read_text().split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    group.rmdir()


def run(limit: int, command: list[str]) -> int:
    """Run ``command`` in a new cgroup limited to ``limit`` bytes; report; return its exit code."""
    files = layout()
    group = own_cgroup(files) / f"cgroup_run-{os.getpid()}"
    try:
        group.mkdir()
    except PermissionError as error:
        raise EnvironmentProblem(f"cannot create {group}: cgroup_run needs root") from error
    if not (group / files["limit"]).exists():
        group.rmdir()
        raise EnvironmentProblem(f"{group.parent} does not enable the memory controller for the "
                                 "cgroups under it (cgroup.subtree_control)")
    forward = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        (group / files["limit"]).write_text(str(limit))
        if files is V2 and (group / files["swap"]).exists():
            (group / files["swap"]).write_text("0")
        elif files is V1 and swap_on() and (group / files["swap"]).exists():
            (group / files["swap"]).write_text(str(limit))
        started = time.perf_counter()
        # a shell joins the cgroup, then becomes the command: this process stays outside
        child = subprocess.Popen(["/bin/sh", "-c", JOIN_AND_EXEC, group / "cgroup.procs", *command],
                                 start_new_session=True)
        for signum in forward:  # the child has its own session: pass interrupts on to it
            signal.signal(signum, lambda n, _frame: child.send_signal(n))
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        peak = int((group / files["peak"]).read_text())
        hits, oom_kills = hit_counts(group, files)
    finally:
        for signum, handler in forward.items():
            signal.signal(signum, handler)
        remove(group)
    code = child.returncode
    exit_code = 128 - code if code < 0 else code
    how = f" (killed by {signal.Signals(-code).name})" if code < 0 else ""
    rss = usage.ru_maxrss * 1024
    for line in (
        f"limit        {limit} bytes = {limit / 2**30:.3f} GiB ({group})",
        f"peak usage   {peak} bytes = {peak / 2**30:.3f} GiB ({files['peak']}, with page cache)",
        f"peak RSS     {rss} bytes = {rss / 2**30:.3f} GiB (largest process)",
        f"limit hit    {hits} times",
        f"OOM kills    {oom_kills}",
        f"wall time    {wall:.1f} s",
        f"exit code    {exit_code}{how}",
    ):
        print(f"cgroup_run: {line}", file=sys.stderr)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    """Parse ``LIMIT -- COMMAND...`` and run it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("limit", help="bytes, or with a unit: 1GiB, 200MiB, 1.5GB")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (LIMIT -- COMMAND ARGS...)")
    try:
        limit = parse_limit(args.limit)
    except ValueError as error:
        parser.error(f"limit: {error}")
    if limit <= 0:
        parser.error(f"limit must be positive, got {args.limit!r}")
    try:
        return run(limit, command)
    except (EnvironmentProblem, OSError) as error:
        print(f"cgroup_run: {error}", file=sys.stderr)
        return EnvironmentProblem.exit_code


if __name__ == "__main__":
    sys.exit(main())
