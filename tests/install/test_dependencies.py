"""setup.py and the locks against what the package imports (fast; no install)."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT

# Modules of the seqio integration: what they import belongs to the `seqio` extra.
SEQIO_MODULES = ("activeit_jax/data/seqio_tasks.py", "activeit_jax/data/seqio_vocabulary.py",
                 "tasks/__init__.py")
TEST_ONLY = {"torch", "transformers", "accelerate", "pytest", "tensorflow", "seqio", "libtpu",
             "tensorflow-text", "tensorflow-datasets"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_lists() -> tuple[list[str], dict[str, list[str]]]:
    """INSTALL_REQUIRES and EXTRAS_REQUIRE of setup.py: its literal assignments, evaluated
    without running `setup()`."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    assignments = [node for node in tree.body if isinstance(node, ast.Assign)]
    namespace: dict = {}
    exec(compile(ast.Module(body=assignments, type_ignores=[]), "setup.py", "exec"), namespace)
    return namespace["INSTALL_REQUIRES"], namespace["EXTRAS_REQUIRE"]


def requirement_names(requirements: list[str]) -> set[str]:
    return {canonical(re.split(r"[<>=!\[;~ ]", r, maxsplit=1)[0]) for r in requirements}


def imported_modules(path) -> set[str]:
    """Top-level names of the modules `path` imports (anywhere, except under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"activeit_jax", "tasks", "__future__"}


def test_every_import_is_a_declared_dependency():
    """A module `activeit_jax` imports comes from an install_requires distribution; the seqio
    integration's from the `seqio` extra."""
    install, extras = setup_lists()
    runtime, seqio_extra = requirement_names(install), requirement_names(extras["seqio"])
    providers = importlib.metadata.packages_distributions()
    sources = [*sorted((REPO_ROOT / "activeit_jax").rglob("*.py")), REPO_ROOT / "tasks" /
               "__init__.py"]
    undeclared = []
    for path in sources:
        relative = path.relative_to(REPO_ROOT).as_posix()
        if "/data/sample/" in relative:
            continue
        allowed = runtime | seqio_extra if relative in SEQIO_MODULES else runtime
        for module in imported_modules(path):
            dists = {canonical(d) for d in providers.get(module, [module])}
            if not dists & allowed:
                undeclared.append(f"{relative}: {module} ({', '.join(sorted(dists))})")
    assert undeclared == []


def test_the_locks_split_runtime_from_test_packages():
    install, extras = setup_lists()
    runtime_lock = {canonical(line.split("==")[0]) for line in
                    (REPO_ROOT / "requirements.lock").read_text().splitlines()
                    if "==" in line}
    test_lock = {canonical(line.split("==")[0]) for line in
                 (REPO_ROOT / "requirements-test.lock").read_text().splitlines()
                 if "==" in line}
    assert requirement_names(install) <= runtime_lock  # every runtime dependency is pinned
    assert not runtime_lock & TEST_ONLY  # the runtime installs no test package
    assert not runtime_lock & test_lock
    assert requirement_names(extras["test"]) <= test_lock | runtime_lock
    assert "libtpu" in test_lock  # TPU compile tests


def test_no_top_level_tasks_package_and_configs_ship():
    text = (REPO_ROOT / "setup.py").read_text()
    assert '"activeit_jax.tasks": "tasks"' in text and '"activeit_jax.configs": "configs"' in text
    install, _ = setup_lists()
    tree = ast.parse(text)
    packages = [ast.unparse(k) for node in ast.walk(tree) if isinstance(node, ast.Call)
                for k in node.keywords if k.arg == "packages"]
    assert packages and "'tasks'" not in packages[0] and '"tasks"' not in packages[0]


def test_the_main_path_imports_neither_tensorflow_nor_seqio():
    """Every library module except the seqio integration, imported in one process."""
    modules = sorted(
        ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO_ROOT / "activeit_jax").rglob("*.py")
        if "commands" not in p.parts and "sample" not in p.parts
        and p.relative_to(REPO_ROOT).as_posix() not in SEQIO_MODULES)
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in ('tensorflow', 'seqio', 'torch', 'transformers') "
            "if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert len(modules) > 50  # the walk found the package
