"""The folder layout is the architecture: packages import only downwards in the order bloodml/layers.py declares,
never in a circle, and only tracking/ imports MLflow. Parsed from the source, so it fails before a user does."""

from __future__ import annotations

import ast

from bloodml.layers import APART, LAYERS, MLFLOW_ONLY_IN, markdown
from conftest import REPO

PACKAGE = REPO / "bloodml"


def imports() -> list[tuple[str, str, str, int]]:
    """(importing unit, imported unit, file, line) for every import of one bloodml unit by another; a unit is a
    top-level package or module of bloodml."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        unit, package = parts[0], list(parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                module = base + (node.module.split(".") if node.module else [])
                targets = [module[0]] if module else [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bloodml."):
                targets = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("bloodml.")]
            for target in targets:
                if target != unit and target not in ("__init__", "__version__"):
                    found.append((unit, target, str(path.relative_to(REPO)), node.lineno))
    return found


def layer_of() -> dict[str, int]:
    return {unit: index for index, (layer, _) in enumerate(LAYERS) for unit in layer}


def test_every_package_and_module_has_a_declared_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem not in ("__init__", "layers")) or (p / "__init__.py").is_file()}
    assert units - set(layer_of()) == set(), "add them to bloodml/layers.py"
    assert set(layer_of()) - units == set(), "bloodml/layers.py names units that do not exist"


def test_docs_show_the_declared_order():
    assert markdown() in (REPO / "docs" / "architecture.md").read_text(), \
        "docs/architecture.md is stale: paste bloodml.layers.markdown()"


def test_no_import_runs_upwards():
    order = layer_of()
    upward = [f"{file}:{line}: {unit} imports {target}" for unit, target, file, line in imports()
              if order[target] > order[unit]]
    assert not upward, "\n".join(upward)


def test_no_circle_between_units_and_the_apart_pairs_stay_apart():
    edges: dict[str, set[str]] = {}
    for unit, target, _, _ in imports():
        edges.setdefault(unit, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))
    circles = sorted(u for u in edges if reaches(u, u, {u}))
    assert not circles, f"units in an import circle: {circles}"
    for a, b in APART:
        assert b not in edges.get(a, set()) and a not in edges.get(b, set()), f"{a} and {b} import each other"


def test_only_tracking_imports_mlflow():
    outside = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == MLFLOW_ONLY_IN:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            outside += [f"{path.relative_to(REPO)}:{node.lineno}" for n in names if n.split(".")[0] == "mlflow"]
    assert not outside, outside


def test_the_checker_sees_an_upward_import(monkeypatch, tmp_path):
    """Planted in a copy of the package: a data/ module importing tracking/ is reported as upward."""
    import shutil

    copy = tmp_path / "bloodml"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "data" / "planted.py").write_text("from ..tracking.runs import log_params\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", copy)
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    bad = [(u, t) for u, t, _, _ in imports() if layer_of()[t] > layer_of()[u]]
    assert bad == [("data", "tracking")]
