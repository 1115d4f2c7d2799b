"""The XLA flags `activeit-jax` sets before JAX starts (`activeit_jax.core.xla_defaults`)."""
import json
import os
import subprocess
import sys

import numpy as np

from activeit_jax.core import xla_defaults


def test_cpu_only_machine_gets_every_flag_an_accelerator_only_the_cpu_backend_ones():
    cpu = {"JAX_PLATFORMS": "cpu"}
    xla_defaults.apply(cpu)
    assert cpu["XLA_FLAGS"].split() == list(xla_defaults.CPU_FLAGS
                                            + xla_defaults.CPU_ONLY_MACHINE_FLAGS)
    gpu = {"JAX_PLATFORMS": "cuda,cpu"}
    xla_defaults.apply(gpu)
    assert gpu["XLA_FLAGS"].split() == list(xla_defaults.CPU_FLAGS)


def test_a_flag_the_user_set_is_kept_and_the_switch_turns_everything_off():
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_disable_hlo_passes=foo"}
    xla_defaults.apply(env)
    assert env["XLA_FLAGS"].split() == ["--xla_disable_hlo_passes=foo",
                                        *xla_defaults.CPU_FLAGS]
    off = {"JAX_PLATFORMS": "cpu", "ACTIVEIT_JAX_XLA_DEFAULTS": "0"}
    xla_defaults.apply(off)
    assert "XLA_FLAGS" not in off


_SOFTMAX = """
import json, numpy as np, jax, jax.numpy as jnp
x = np.random.default_rng(0).normal(size=(3, 4, 7, 1000)).astype(np.float32) * 8
y = jax.jit(lambda a: jax.nn.log_softmax(a, -1).sum(-1))(x)
print(json.dumps(np.asarray(y).tolist()))
"""


def test_xla_accepts_the_flags_and_long_row_reductions_stay_accurate():
    """A flag XLA does not know aborts the process; without the tree reduction rewriter a
    1,000-wide log-softmax still matches float64 numpy."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    xla_defaults.apply(env)
    assert "tree_reduction_rewriter" in env["XLA_FLAGS"]
    out = subprocess.run([sys.executable, "-c", _SOFTMAX], env=env, capture_output=True,
                         text=True, check=True)
    ours = np.asarray(json.loads(out.stdout.strip().splitlines()[-1]))
    x = np.random.default_rng(0).normal(size=(3, 4, 7, 1000)) * 8
    x = x.astype(np.float32).astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    reference = (shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))).sum(-1)
    np.testing.assert_allclose(ours, reference, rtol=2e-6)


def test_a_cross_compiling_command_gets_only_the_cpu_backend_flags():
    env = {"JAX_PLATFORMS": "cpu"}
    xla_defaults.apply(env, compiles_for_this_machine=False)
    assert env["XLA_FLAGS"].split() == list(xla_defaults.CPU_FLAGS)


def test_libtpu_probe_is_quieted_only_without_a_tpu_chip(tmp_path, monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "libtpu" else None)
    env = {"TPU_WORKER_HOSTNAMES": "host-a"}
    xla_defaults.quiet_tpu_probe(env, attached=False)
    assert env["TPU_WORKER_HOSTNAMES"] == "host-a"  # what the user set is kept
    assert env["TPU_HOST_BOUNDS"] == xla_defaults.QUIET_TPU_PROBE["TPU_HOST_BOUNDS"]
    on_tpu_vm = {}
    xla_defaults.quiet_tpu_probe(on_tpu_vm, attached=True)
    assert on_tpu_vm == {}
    device = tmp_path / "0000:00:05.0"
    device.mkdir()
    (device / "vendor").write_text("0x1ae0\n")
    assert xla_defaults.tpu_chips_attached(str(tmp_path))
    (device / "vendor").write_text("0x8086\n")
    assert not xla_defaults.tpu_chips_attached(str(tmp_path))
