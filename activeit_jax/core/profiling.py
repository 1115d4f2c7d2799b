"""Where the time goes: JAX compilation seconds and matmul peak, for summaries and benchmarks.

`compile_seconds()` is the process-wide total of JAX's own compile-event durations (tracing,
lowering to MLIR and the backend compile), counted from the first call of this module's
`start_compile_clock()`; take differences around a phase to attribute compilation to it.
Compilations on several threads (the scorer compiles a plan's shapes side by side) are summed,
so the total is CPU time and can exceed the wall time it overlapped.
"""
from __future__ import annotations

import threading
import time

# JAX's duration events of one compilation (jax/_src/dispatch.py names them).
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")

_lock = threading.Lock()
_total = [0.0]
_started = [False]


def _listener(event: str, duration: float, **_: object) -> None:
    if event in _COMPILE_EVENTS:
        with _lock:
            _total[0] += float(duration)


def start_compile_clock() -> None:
    """Starts counting compilation time (idempotent)."""
    with _lock:
        if _started[0]:
            return
        _started[0] = True
    import jax.monitoring
    jax.monitoring.register_event_duration_secs_listener(_listener)


def compile_seconds() -> float:
    """Seconds spent compiling since `start_compile_clock()` (0 before it)."""
    with _lock:
        return _total[0]


def matmul_peak(size: int = 2048, reps: int = 5) -> float:
    """Measured float32 FLOP/s of a jitted `[n, n] @ [n, n]` on the default device.

    The best of `reps` runs at n = size / 2 and n = size: on a shared machine the least
    disturbed run is the closest to the peak.
    """
    import jax
    import jax.numpy as jnp
    f = jax.jit(lambda x, y: x @ y)
    best = 0.0
    for n in (size // 2, size):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        f(a, b).block_until_ready()
        for _ in range(reps):
            start = time.perf_counter()
            f(a, b).block_until_ready()
            best = max(best, 2.0 * n ** 3 / (time.perf_counter() - start))
    return best
