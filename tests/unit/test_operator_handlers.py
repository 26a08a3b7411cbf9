"""Importing the Kopf handlers reads no settings: they are built in the startup handler and travel in the
Runtime, so a bad value fails the operator's start-up with the setting's name, never the import."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_the_handlers_reads_no_settings() -> None:
    env = {**os.environ, "KUBETASKS_OPERATOR__SCHEDULE_SYNC_INTERVAL": "not a duration",
           "KUBETASKS_OPERATOR__POOL_SIZE": "-1"}
    code = ("import sys; import kubetasks.operator.handlers as h; "
            "sys.exit(0 if 'kubetasks.worker.settings' in sys.modules and h.FINALIZER else 1)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
