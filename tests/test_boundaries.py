"""The layering holds by test: only ``pdml_ray/service/`` imports Ray or MLflow.

Every module of ``pdml_ray`` outside ``service`` is pure code: it imports neither Ray
nor MLflow, nor the service (which would bring them in). The entry points in ``jobs/``
and ``tuning/`` reach Ray and MLflow only through ``pdml_ray.service``. Imports are read
from the syntax tree (also those inside functions), so a lazy import counts as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EDGE_LIBRARIES = ("ray", "mlflow")
SERVICE = "pdml_ray.service"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module ``path`` imports (``from a import b`` gives ``a``
    and ``a.b``, since ``b`` may be a module), relative imports resolved; also
    ``importlib.import_module("...")`` and ``__import__("...")`` with a literal name."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            found.add(node.args[0].value)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


PURE_MODULES = [path for path in python_files("pdml_ray")
                if not within(module_name(path), SERVICE)]
ENTRY_POINTS = python_files("jobs") + python_files("tuning")


def test_the_walk_sees_the_tree():
    """The lists below are not vacuous: they hold the pure packages and the entry points."""
    names = {module_name(path) for path in PURE_MODULES}
    assert {"pdml_ray.engine", "pdml_ray.mining", "pdml_ray.mining.store", "pdml_ray.losses",
            "pdml_ray.models.deeplab", "pdml_ray.data.points"} <= names
    assert not any(within(name, SERVICE) for name in names)
    assert {"jobs.train", "tuning.sweep"} <= {module_name(path) for path in ENTRY_POINTS}


def test_the_import_reader_sees_every_form(tmp_path):
    """A module with each kind of import, read as if it were pdml_ray/mining/example.py."""
    source = tmp_path / "pdml_ray" / "mining" / "example.py"
    source.parent.mkdir(parents=True)
    source.write_text("import ray.train\n"
                      "from ..service import store\n"
                      "def later():\n"
                      "    import importlib\n"
                      "    from mlflow.tracking import MlflowClient\n"
                      "    importlib.import_module('ray')\n"
                      "    return __import__('mlflow')\n")
    found = imported_modules(source, tmp_path)
    assert {"ray.train", "pdml_ray.service", "pdml_ray.service.store", "mlflow.tracking",
            "ray", "mlflow"} <= found
    assert edge_imports(source, tmp_path) == ["mlflow", "mlflow.tracking",
                                              "mlflow.tracking.MlflowClient", "ray", "ray.train"]


def edge_imports(path: Path, root: Path = ROOT) -> list[str]:
    return sorted(module for module in imported_modules(path, root)
                  if any(within(module, library) for library in EDGE_LIBRARIES))


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda path: module_name(path))
def test_pure_code_imports_neither_ray_nor_mlflow_nor_the_service(path):
    assert edge_imports(path) == []
    assert sorted(module for module in imported_modules(path) if within(module, SERVICE)) == []


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=lambda path: module_name(path))
def test_entry_points_reach_ray_and_mlflow_only_through_the_service(path):
    assert edge_imports(path) == []


def test_importing_all_pure_code_loads_neither_ray_nor_mlflow():
    """The same boundary at run time, whatever the route (third-party code included)."""
    names = sorted(module_name(path) for path in PURE_MODULES)
    script = (f"import importlib, sys\n"
              f"for name in {names!r}:\n"
              f"    importlib.import_module(name)\n"
              f"print(sorted(m for m in {EDGE_LIBRARIES!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"
