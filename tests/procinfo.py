"""Reading a server child process from the outside, through /proc (Linux).

The hardening tests run the server in its own process so that its memory,
CPU time and descriptors can be measured without the test's own counted in.
Waits here poll /proc with a deadline: another process cannot signal us.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: Seconds between two looks at /proc while waiting for a condition in another process.
POLL_INTERVAL = 0.02


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status, e.g. ``VmRSS`` (resident now) or ``VmHWM`` (peak)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (seconds)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces; fields after its ')' are space-separated.
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def descriptors(pid: int) -> set[int]:
    """The open descriptor numbers of the process."""
    return {int(name) for name in os.listdir(f"/proc/{pid}/fd")}


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True
