"""Old module names (before the packages by stage) kept importable for one release.

A gin file written for 0.1 says `import activeit_jax.trainer`; `import` of a moved name loads
its new module under the old name and prints one deprecation line naming the new one. Gin
selectors are unchanged (`TrainConfig.num_epochs`, `LoopConfig.seeds`, ...): only the module
paths moved.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Old module -> the module that now holds what a gin file imported it for.
MOVED: dict[str, str] = {
    "activeit_jax.active_loop": "activeit_jax.loop.active_loop",
    "activeit_jax.checkpoints": "activeit_jax.models.checkpoints",
    "activeit_jax.distributed": "activeit_jax.core.distributed",
    "activeit_jax.errors": "activeit_jax.core.errors",
    "activeit_jax.evaluation": "activeit_jax.training.evaluation",
    "activeit_jax.gin_utils": "activeit_jax.core.gin_utils",
    "activeit_jax.io_utils": "activeit_jax.core.io_utils",
    "activeit_jax.judge": "activeit_jax.loop.judge",
    "activeit_jax.judge_tables": "activeit_jax.reporting.judge_tables",
    "activeit_jax.metrics": "activeit_jax.training.metrics",
    "activeit_jax.perturbation": "activeit_jax.scoring.perturbation",
    "activeit_jax.profiling": "activeit_jax.core.profiling",
    "activeit_jax.records": "activeit_jax.core.records",
    "activeit_jax.reports": "activeit_jax.reporting.render",
    "activeit_jax.run_lock": "activeit_jax.core.run_lock",
    "activeit_jax.run_results": "activeit_jax.reporting.results",
    "activeit_jax.schedule": "activeit_jax.loop.schedule",
    "activeit_jax.selection": "activeit_jax.loop.selection",
    "activeit_jax.taskmap": "activeit_jax.scoring.taskmap",
    "activeit_jax.train_config": "activeit_jax.training.config",
    "activeit_jax.train_data": "activeit_jax.training.inputs",
    "activeit_jax.train_io": "activeit_jax.training.run_dir",
    "activeit_jax.train_state": "activeit_jax.training.state",
    "activeit_jax.train_step": "activeit_jax.training.step",
    # gin files imported the trainer for `TrainConfig`'s registration.
    "activeit_jax.trainer": "activeit_jax.training.config",
    "activeit_jax.xla_defaults": "activeit_jax.core.xla_defaults",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module name to its new module, with one deprecation line."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # the default: a fresh module object named after the old path

    def exec_module(self, module):
        new_name = MOVED[module.__name__]
        print(f"activeit-jax: deprecated: `{module.__name__}` moved to `{new_name}`; update "
              "the import (the old name goes in the next release)", file=sys.stderr)
        new = importlib.import_module(new_name)
        # The same objects under the old name: gin registrations, classes and functions are
        # the new module's own.
        module.__dict__.update({k: v for k, v in vars(new).items() if not k.startswith("__")})


def install() -> None:
    """Adds the finder once (the package's `__init__` calls it)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        # First, so an old file left in a development checkout cannot shadow the alias.
        sys.meta_path.insert(0, _MovedModuleFinder())
