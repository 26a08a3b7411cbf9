"""PostgreSQL for the tests, the benchmarks and `make demo` on a fresh machine: developer tooling, kept out of
the package users install (whose `kubetasks dev` only looks for binaries, in `worker/pgserver.py`).

As root on Debian it installs Debian's `postgresql` package with apt; elsewhere it does nothing, and
`make postgres` falls back to `pip install pgserver`, whose wheel carries the binaries. Run as a script
(`make postgres`), it exits 0 when PostgreSQL binaries are there afterwards; tests/conftest.py imports it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from kubetasks.worker import pgserver


def install_debian_postgres() -> bool:
    """Install Debian's `postgresql` package when running as root on Debian; True when it worked."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            return False
    return pgserver.find_bindir() is not None


def ensure_postgres() -> Path | None:
    """The directory of PostgreSQL's binaries, installing Debian's package first when none are found."""
    bindir = pgserver.find_bindir()
    if bindir is None and install_debian_postgres():
        bindir = pgserver.find_bindir()
    return bindir


if __name__ == "__main__":
    sys.exit(0 if ensure_postgres() else 1)
