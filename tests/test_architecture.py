"""The package's folders are its layers: a module imports only from its own layer or those below, no two modules
import each other (directly or through others), and docs/ARCHITECTURE.md names every module that exists."""

import graphlib
import re
from pathlib import Path

import pytest

from lalm_slu.core.code_version import PACKAGE_SRC, imported_modules

REPO = Path(__file__).resolve().parents[1]
PACKAGE = PACKAGE_SRC / "lalm_slu"
# Bottom to top. Layers in one tuple are siblings: neither may import the other.
LAYERS = [
    ("core",),
    ("config",),
    ("data",),
    ("model",),
    ("speech",),
    ("evaluation",),
    ("training", "planning", "report"),
    ("demo_model",),
    ("commands",),
    ("cli",),
    ("__main__",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(file: Path) -> str:
    parts = file.relative_to(PACKAGE_SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(file): file for file in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (function-level imports too), as the code's own hash follows them."""
    modules = package_modules()
    return {name: {m for m in imported_modules(name, file) if m in modules and m != name}
            for name, file in modules.items()}


def layer(module: str) -> str:
    return module.split(".")[1]


def test_every_module_is_in_a_layer():
    unplaced = sorted(m for m in package_modules() if m != "lalm_slu" and layer(m) not in RANK)
    assert unplaced == [], f"modules outside every layer (add a subpackage to LAYERS or move them): {unplaced}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{importer} -> {imported}"
        for importer, imports in graph.items()
        for imported in sorted(imports)
        if "lalm_slu" not in (importer, imported)
        and layer(importer) != layer(imported)
        and RANK[layer(imported)] >= RANK[layer(importer)]
    ]


def test_no_module_imports_from_a_layer_above_or_beside_its_own():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    try:
        list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"modules that import each other: {' -> '.join(error.args[1])}")


def test_an_upward_import_and_a_sibling_import_are_caught(tmp_path):
    """The checks are only as good as the graph: a data module importing the trainer (even inside a function)
    and the report importing the planner are both reported."""
    records = package_modules()["lalm_slu.data.records"]
    patched = tmp_path / "records.py"
    patched.write_text(records.read_text() + "\n\ndef late():\n    from lalm_slu.training.finetune import finetune\n")
    graph, modules = import_graph(), package_modules()
    graph["lalm_slu.data.records"] |= imported_modules("lalm_slu.data.records", patched) & set(modules)
    graph["lalm_slu.report.tables"].add("lalm_slu.planning.grid")
    assert set(upward_imports(graph)) - set(upward_imports(import_graph())) == {
        "lalm_slu.data.records -> lalm_slu.training.finetune",
        "lalm_slu.report.tables -> lalm_slu.planning.grid",
    }


def test_no_two_modules_share_a_basename():
    """A reader searching for `decode.py` finds one file."""
    names = {}
    for module, file in package_modules().items():
        if file.name != "__init__.py":
            names.setdefault(file.name, []).append(module)
    assert {name: found for name, found in names.items() if len(found) > 1} == {}


ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
# A module as the tour names it: a path relative to src/lalm_slu/, e.g. `training/finetune.py`.
NAMED_MODULE = re.compile(r"(?<![\w/.])((?:[a-z0-9_]+/)*[a-z0-9_]+\.py)\b")
PACKAGE_PREFIX = "src/lalm_slu/"


def named_modules() -> set[str]:
    text = ARCHITECTURE.read_text()
    return {path.removeprefix(PACKAGE_PREFIX) for path in NAMED_MODULE.findall(text)
            if not path.startswith(("tests/", "benchmarks/"))}


def test_architecture_names_only_modules_that_exist():
    missing = sorted(path for path in named_modules() if not (PACKAGE / path).is_file())
    assert missing == [], f"docs/ARCHITECTURE.md names modules that do not exist: {missing}"


@pytest.mark.parametrize("module", sorted(str(f.relative_to(PACKAGE)) for f in PACKAGE.rglob("*.py")
                                          if f.name != "__init__.py"))
def test_architecture_names_every_module(module):
    assert module in named_modules(), f"docs/ARCHITECTURE.md does not name src/lalm_slu/{module}"
