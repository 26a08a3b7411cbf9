"""Looking at a running worker from outside: its HTTP endpoints, its memory, its name in the database."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body); status 0 with the reason when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def status(url: str) -> int:
    return get(url)[0]


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS, in KiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far, from /proc/<pid>/stat (utime + stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmdline(pid: int) -> list[str]:
    """A process's command line, from /proc/<pid>/cmdline."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")[:-1]


def worker_name(pid: int) -> str:
    """What a worker process writes in kubetasks.tasks.worker (consumer.worker_id)."""
    return f"{socket.gethostname()}/{pid}"


def metric(body: str, name_and_labels: str) -> float:
    """Value of one sample of a Prometheus text exposition; 0 when absent."""
    for line in body.splitlines():
        if line.startswith(name_and_labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
