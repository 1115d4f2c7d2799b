"""activeit-jax: Active Instruction Tuning (prompt-uncertainty task selection) in JAX/Flax."""

__version__ = "0.1.0"
