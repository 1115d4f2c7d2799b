"""Where the bundled files are: `configs/` (gin files) and `data/sample/` (the sample data and
vocabulary), in a source checkout and in an installed wheel alike.

A checkout holds them at the top of the repository, beside the `activeit_jax/` package; a
wheel ships them as package data inside the package (setup.py maps `configs/` to
`activeit_jax/configs/` and `data/sample/` to `activeit_jax/data/sample/`), so both layouts
have the same relative paths below one root, `RESOURCE_ROOT`: a gin file's
`"data/sample/niv2"` and `--gin_file=experiments/niv2_t5_large.gin` resolve the same way in
both.

The seqio task registrations (`activeit_jax.tasks`) are the repository's top-level `tasks/`
folder: setup.py's `package_dir` installs it as `activeit_jax.tasks`, and an editable install
maps it there too; `install_checkout_tasks` does the same for a checkout used without any
install (on PYTHONPATH).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKOUT_DIR = os.path.dirname(PACKAGE_DIR)


def _is_checkout(directory: str) -> bool:
    """A source checkout: setup.py and configs/ beside the package (site-packages has
    neither)."""
    return (os.path.isfile(os.path.join(directory, "setup.py"))
            and os.path.isdir(os.path.join(directory, "configs")))


# The root that holds configs/ and data/sample/: the checkout, else the installed package.
RESOURCE_ROOT = CHECKOUT_DIR if _is_checkout(CHECKOUT_DIR) else PACKAGE_DIR
CONFIGS_DIR = os.path.join(RESOURCE_ROOT, "configs")
SAMPLE_DIR = os.path.join(RESOURCE_ROOT, "data", "sample")
TASKS_MODULE = "activeit_jax.tasks"


def resolve_path(path: str) -> str:
    """`path` as given when it exists from the working directory (or is absolute), else the
    same relative path below `RESOURCE_ROOT` when that exists (configs name bundled files as
    "data/sample/..."), else `path` unchanged (the caller reports it missing)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = os.path.join(RESOURCE_ROOT, path)
    return candidate if os.path.exists(candidate) else path


class _CheckoutTasksFinder(importlib.abc.MetaPathFinder):
    """Finds `activeit_jax.tasks` in the checkout's top-level `tasks/` folder."""

    def __init__(self, tasks_dir: str):
        self.tasks_dir = tasks_dir

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TASKS_MODULE:
            return None
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(self.tasks_dir, "__init__.py"),
            submodule_search_locations=[self.tasks_dir])


def install_checkout_tasks() -> None:
    """Makes `import activeit_jax.tasks` load the `tasks/` folder beside this package when the
    package runs from a source checkout that has no `activeit_jax/tasks` of its own (a wheel
    has one; an editable install's finder would map the name to the checkout it was
    installed from, which need not be this one). Called once by the package's `__init__`."""
    tasks_dir = os.path.join(CHECKOUT_DIR, "tasks")
    if (not _is_checkout(CHECKOUT_DIR) or os.path.isdir(os.path.join(PACKAGE_DIR, "tasks"))
            or not os.path.isfile(os.path.join(tasks_dir, "__init__.py"))):
        return
    if not any(isinstance(f, _CheckoutTasksFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutTasksFinder(tasks_dir))
