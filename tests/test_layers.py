"""Layers you can see: the foundation (tunebench.core) and the plugin packages (methods, datasets) never
import the application layer (tunebench.app), not even inside a function."""
import ast

from .conftest import ROOT

LOWER = {"bench/core": "tunebench.core", "methods": "tunebench.methods", "datasets": "tunebench.datasets"}


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def app_imports(folder: str) -> dict[str, list[str]]:
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        bad = sorted(m for m in imported_modules(path) if m == "tunebench.app" or m.startswith("tunebench.app."))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_core_methods_and_datasets_never_import_the_app_layer():
    offenders = {folder: app_imports(folder) for folder in LOWER}
    assert offenders == {folder: {} for folder in LOWER}


def test_the_walk_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tunebench.app.runner import run_cell\n    import tunebench.app.claim\n")
    assert {"tunebench.app.runner", "tunebench.app.claim"} <= imported_modules(module)


def test_the_app_modules_live_under_bench_app_and_the_foundation_under_bench_core():
    core = {p.stem for p in (ROOT / "bench" / "core").glob("*.py")}
    app = {p.stem for p in (ROOT / "bench" / "app").glob("*.py")}
    assert {"engine", "run_context", "meter", "record", "registry", "cache", "seeding", "checkpoint"} <= core
    assert {"cli", "run", "runner", "sweeper", "report", "claim", "status", "perf", "publish"} <= app
    assert [p.name for p in (ROOT / "bench").glob("*.py")] == ["__init__.py"]
