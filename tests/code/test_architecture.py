"""The package's shape: no import cycles between its modules (imports inside functions
count: hiding a cycle there is still a cycle), one home for the registry (nothing but
:mod:`bespoke.training.registry` names the ``@champion`` alias or builds an MLflow
client, and nothing sets MLflow's process-wide tracking URI), and configuration read
through ``Settings`` only."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src"


def _module_name(path: Path) -> str:
    parts = ["bespoke", *path.relative_to(SOURCE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _runtime_imports(path: Path) -> set[str]:
    """Every module named by an import that runs (``if TYPE_CHECKING:`` blocks do not)."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(inner) for part in node.body for inner in ast.walk(part)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for imported in _runtime_imports(path):
            while imported and imported not in MODULES:
                imported = imported.rpartition(".")[0]
            # A package's __init__ is imported on the way to any module in it: only a
            # module's own edges count (bespoke.training.foo -> bespoke.training is not one).
            if imported and imported != name and not name.startswith(f"{imported}."):
                edges.add(imported)
        graph[name] = edges
    return graph


def test_the_graph_sees_function_level_imports() -> None:
    # serving/champions.py loads native models through the registry module
    assert "bespoke.training.registry" in _graph()["bespoke.serving.champions"]
    assert "bespoke.training.families" in _graph()["bespoke.training.registry"]


def test_no_module_imports_itself_back() -> None:
    try:
        tuple(TopologicalSorter(_graph()).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def _source_lines(pattern: str) -> list[str]:
    return [
        f"{path.relative_to(SOURCE)}:{number}"
        for path in MODULES.values()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern in line and not line.lstrip().startswith("#")
    ]


def test_the_registry_has_one_home() -> None:
    assert _source_lines("set_tracking_uri(") == []
    assert _source_lines("set_registry_uri(") == []
    clients = {line.split(":")[0] for line in _source_lines("MlflowClient(")}
    # the registry's own client, and the experiment lookup of a training session
    assert clients == {"training/registry.py", "training/tracking.py"}
    aliases = {line.split(":")[0] for line in _source_lines("_model_version_by_alias(")}
    aliases |= {line.split(":")[0] for line in _source_lines("registered_model_alias(")}
    assert aliases == {"training/registry.py"}


def test_configuration_is_read_through_settings() -> None:
    readers = {line.split(":")[0] for line in _source_lines('os.environ.get("BESPOKE_')}
    readers |= {line.split(":")[0] for line in _source_lines('os.getenv("BESPOKE_')}
    assert readers == set()
