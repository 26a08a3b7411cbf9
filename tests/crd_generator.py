"""The CRD generator, `crds/generate.py`, for the tests that check its output: it is developer tooling
outside the installed package, so it is loaded from its file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PATH = Path(__file__).resolve().parents[1] / "crds" / "generate.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kubetasks_crds_generate", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _load()
