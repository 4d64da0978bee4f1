"""Child-process plumbing of `ragstress serve`: CPU lists, pinning, parent-death signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from ragstress.reference.processes import child_setup, parse_cpus


def test_cpu_lists_parse_and_refuse_what_the_machine_lacks() -> None:
    available = sorted(os.sched_getaffinity(0))
    first = available[0]
    assert parse_cpus(str(first)) == frozenset({first})
    assert parse_cpus(f"{first}-{first}") == frozenset({first})
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpus("one")
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpus("3-1")
    with pytest.raises(ValueError, match="not available here"):
        parse_cpus(str(max(available) + 1000))


def test_child_is_pinned_to_the_given_cpus() -> None:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        preexec_fn=child_setup(signal.SIGTERM, frozenset({cpu})),  # noqa: PLW1509
    )
    try:
        assert psutil.Process(proc.pid).cpu_affinity() == [cpu]
    finally:
        proc.kill()
        proc.wait(5)


def test_child_dies_when_its_parent_is_killed() -> None:
    # A middle process starts a grandchild with child_setup and prints its pid; killing the
    # middle one with SIGKILL (no cleanup runs) must take the grandchild with it.
    script = (
        "import signal, subprocess, sys, time\n"
        "from ragstress.reference.processes import child_setup\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " preexec_fn=child_setup(signal.SIGTERM, None))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    middle = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert middle.stdout is not None
    grandchild = psutil.Process(int(middle.stdout.readline()))
    try:
        assert grandchild.is_running()
        middle.kill()
        middle.wait(5)
        gone, alive = psutil.wait_procs([grandchild], timeout=10)
        assert alive == []
        assert gone[0].pid == grandchild.pid
    finally:
        if grandchild.is_running():
            grandchild.kill()
