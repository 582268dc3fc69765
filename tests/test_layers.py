"""The package layering of prunelab: every import runs down the floors, none up, no cycles.

Every ``import`` statement of ``src/prunelab`` is read with :mod:`ast` — lazy imports inside functions
and ``TYPE_CHECKING`` blocks included — and mapped to the package (or ground module) it comes from and
goes to. An import is allowed only from a higher floor to a strictly lower one, so two packages on the
same floor never import each other and no cycle can form. The table is the one in
``docs/architecture.md``; a new upward edge fails here with the file and the line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "prunelab"

#: Floor of every package and ground module (higher floors may import lower ones only).
FLOORS: dict[str, int] = {
    "errors": 0,
    "_version": 0,
    "registry": 1,
    "_io": 1,
    "dataclass_yaml": 1,
    "distributed": 1,
    "core": 2,
    "metrics": 3,
    "stats": 3,
    "data": 3,
    "criteria": 4,
    "models": 4,
    "reparam": 4,
    "pruning": 5,
    "surgery": 5,
    "training": 5,
    "regularizers": 6,
    "checkpoint": 6,
    "channels": 6,
    "methods": 7,
    "export": 7,
    "experiments": 8,
    "cli": 9,
    "__main__": 10,
    # The package facade: its lazy attribute map (prunelab.prune, prunelab.Pruner) reaches pruning.
    "prunelab": 10,
}


def _unit_of_file(path: Path, root: Path = SRC) -> str:
    rel = path.relative_to(root)
    if len(rel.parts) == 1:
        return "prunelab" if rel.stem == "__init__" else rel.stem
    return rel.parts[0]


def _unit_of_module(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "prunelab":
        return None
    return "prunelab" if len(parts) == 1 else parts[1]


def _edges(root: Path = SRC) -> list[tuple[str, str, str]]:
    """``(from unit, to unit, "file:line")`` for every import of one prunelab unit by another."""
    edges = []
    for path in sorted(root.rglob("*.py")):
        source = _unit_of_file(path, root)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
                if node.module == "prunelab":  # ``from prunelab import distributed``
                    targets = [f"prunelab.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                unit = _unit_of_module(target)
                if unit is not None and unit != source:
                    edges.append((source, unit, f"{path.relative_to(root)}:{node.lineno}"))
    return edges


def test_every_unit_has_a_floor() -> None:
    units = {_unit_of_file(p) for p in SRC.rglob("*.py")}
    missing = sorted(units - set(FLOORS))
    assert not missing, f"give these packages a floor in FLOORS and in docs/architecture.md: {missing}"


def test_imports_only_run_down() -> None:
    upward = [
        f"{where}: {source} (floor {FLOORS[source]}) imports {target} (floor {FLOORS.get(target)})"
        for source, target, where in _edges()
        if target not in FLOORS or FLOORS[target] >= FLOORS[source]
    ]
    assert not upward, "imports that do not run down a floor:\n" + "\n".join(upward)


def test_core_imports_only_torch_and_the_ground() -> None:
    core_targets = {target for source, target, _ in _edges() if source == "core"}
    assert core_targets <= {"errors", "registry"}, core_targets


@pytest.mark.parametrize("module", ["errors", "registry", "_io", "dataclass_yaml", "distributed"])
def test_ground_modules_import_only_the_ground(module: str) -> None:
    targets = {target for source, target, _ in _edges() if source == module}
    assert all(FLOORS[t] <= 1 for t in targets), targets


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    # The rule is only as good as the parser: a function-level or TYPE_CHECKING import must count.
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from prunelab.methods import base\n"
        "def f():\n    from prunelab import experiments\n    import prunelab.surgery.graph\n"
    )
    targets = sorted(target for _, target, _ in _edges(tmp_path))
    assert targets == ["experiments", "methods", "surgery"]
