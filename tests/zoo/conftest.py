"""The zoo stage: real torchvision / timm models and the construct models through every prunelab check.

``tests/zoo/test_constructs.py`` needs only torch and runs in every environment; ``test_zoo.py`` needs
torchvision and timm (the second virtualenv of ``.ci/run``) and is skipped without them.

Every model's outcomes are written as JSON to ``$PRUNELAB_ZOO_OUT`` (default: a temporary folder), one
file per model, and the end of the run prints them as one table (``ok`` / ``refused`` / ``ERROR`` per
check), also under ``pytest -n 2``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):  # tests/zoo (zoo_models, zoo_checks, tp_reference) and tests (constructs)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from zoo_checks import OUT_ENV, zoo_out_dir


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a plain run) picks the folder
        zoo_out_dir()


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    return zoo_out_dir()


@pytest.fixture(scope="session")
def reloader() -> Iterator[Any]:
    """One fresh interpreter per test process that reloads every saved model (``zoo_checks.Reloader``)."""
    from zoo_checks import Reloader

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    loader = Reloader(sys.executable, env)
    yield loader
    loader.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    path = os.environ.get(OUT_ENV)
    if not path or not Path(path).is_dir():
        return
    rows = []
    for file in sorted(Path(path).glob("*.json")):
        try:
            data = json.loads(file.read_text())
        except ValueError:
            continue
        if "checks" in data:
            rows.append(data)
    if not rows:
        return
    checks = list(rows[0]["checks"])
    tr = terminalreporter
    tr.section(f"prunelab zoo: {len(rows)} models and constructs ({path})")
    tr.write_line(f"{'model':40s} {'TP':4s} " + " ".join(f"{c[:10]:10s}" for c in checks))
    for row in rows:
        cells = []
        for c in checks:
            status = row["checks"].get(c, {}).get("status", "-")
            cells.append(f"{('ERROR' if status == 'error' else status)[:10]:10s}")
        tp = "yes" if row.get("tp_works") else "no"
        tr.write_line(f"{row['model'][:40]:40s} {tp:4s} " + " ".join(cells))
