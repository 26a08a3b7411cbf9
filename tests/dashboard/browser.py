"""Debian's chromium for the UI tests, found or installed the way tests/conftest.py gets PostgreSQL: as root,
apt-get it when missing; otherwise skip with one line, unless KUBETASKS_REQUIRE_BROWSER=1 makes it a failure.
Playwright drives it through `executable_path`: no browser is ever downloaded (`playwright install` is not run).
"""

from __future__ import annotations

import os
import shutil
import subprocess

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    for path in (os.environ.get("KUBETASKS_CHROMIUM"), *CANDIDATES, shutil.which("chromium")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def install_debian_chromium() -> bool:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "install", "-y", "-qq", "chromium"], ["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, check=False, timeout=900)
        if done.returncode == 0 and command[1] == "install":
            return find_chromium() is not None
    return False


def chromium_or_reason() -> tuple[str | None, str]:
    found = find_chromium()
    if found is None and install_debian_chromium():
        found = find_chromium()
    if found is None:
        return None, "no chromium (apt-get install chromium as root, or set KUBETASKS_CHROMIUM)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return None, "playwright is not installed (pip install -e '.[test]')"
    return found, ""
