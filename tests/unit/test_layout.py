"""The package's architecture, checked: no shadowed module names, imports that point down, pure models."""

import ast
import importlib.metadata
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "gandist"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of gandist."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    """The gandist modules a file imports (anywhere in it, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name.split(".")[0] == "gandist"}


def test_no_name_in_gandist_shadows_a_top_level_module():
    # `accelerate launch gandist/train.py` runs with gandist/ first on sys.path
    installed = set(importlib.metadata.packages_distributions())
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    names -= {"__init__", "__main__", "__pycache__", "assets"}
    clashes = {n for n in names if n in sys.stdlib_module_names or n in installed}
    assert not clashes, f"gandist/{clashes} would shadow a standard-library or installed module"


def test_only_the_train_command_imports_the_loop():
    importers = {
        m for m, path in _modules().items() if any(i.startswith("gandist.training.loop") for i in _imports(path))
    }
    assert importers <= {"gandist.cli.train"}, importers


@pytest.mark.parametrize("package", ["gandist.models", "gandist.objectives"])
def test_models_and_objectives_know_nothing_of_distribution_or_logging(package):
    for module, path in _modules().items():
        if not module.startswith(package):
            continue
        tree = ast.parse(path.read_text())
        top = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not top & {"accelerate", "deepspeed", "wandb", "webdataset", "tqdm"}, (module, top)
        assert "torch.distributed" not in path.read_text(), module
        inside = {i for i in _imports(path) if not i.startswith((package, "gandist.config"))}
        assert not inside, (module, inside)


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("gandist.config", "gandist."),  # the config imports nothing of gandist
        ("gandist.files", "gandist."),
        ("gandist.data", "gandist.training"),
        ("gandist.strategy", "gandist.training"),
        ("gandist.models", "gandist.training"),
        ("gandist.metrics", "gandist.cli"),
        ("gandist.training", "gandist.cli"),
        ("gandist.training", "gandist.planning"),  # the planner runs the loop's phases, not the other way
        ("gandist.strategy", "gandist.planning"),
        ("gandist.planning", "gandist.cli"),
        ("gandist.generator", "gandist.cli"),
    ],
)
def test_imports_point_down(lower, upper):
    for module, path in _modules().items():
        if module == lower or module.startswith(lower + "."):
            wrong = {i for i in _imports(path) if i.startswith(upper) and not i.startswith(lower)}
            wrong -= {"gandist.config"} if lower != "gandist.config" else set()
            wrong -= {"gandist.files"} if lower not in ("gandist.config", "gandist.files") else set()
            assert not wrong, f"{module} imports {wrong}"


def test_no_function_is_longer_than_a_screen_or_two():
    long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno > 80:
                long.append(f"{module}.{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
