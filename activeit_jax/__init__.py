"""activeit-jax: Active Instruction Tuning (prompt-uncertainty task selection) in JAX/Flax."""
from activeit_jax.core import moved_modules as _moved_modules, resources as _resources

__version__ = "0.1.0"

_moved_modules.install()
_resources.install_checkout_tasks()
