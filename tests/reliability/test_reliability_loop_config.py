"""Reliability: the loop's settings (issue 23, item 8).

Every `LoopConfig` the loop cannot run is refused in one line when the config is built (gin
included), before `loop_config.json` or `seed_0/` is written; what depends on the pool's size
is refused before iteration 0 without building the schedule; and a run directory that holds
only such a refused start does not block the corrected command.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from activeit_jax import layout
from activeit_jax.core.errors import UsageError
from activeit_jax.loop import active_loop
from tests.loop.test_active_loop import FakeStages
from tests.reliability.test_reliability_errors import run_cases

DEMO = ["--gin_file=demo_tiny.gin", "--noreport"]


def test_impossible_loop_settings_are_one_line_and_leave_nothing(tmp_path):
    out = tmp_path / "run"
    base = [*DEMO, f"--out={out}"]
    loop = "--gin.LoopConfig."
    run_cases("run", [
        ([*base, f"{loop}num_iterations=0"], ["LoopConfig.num_iterations", ">= 1"]),
        ([*base, f"{loop}growth_factor=1.0"], ["LoopConfig.growth_factor", "> 1"]),
        ([*base, f"{loop}growth_factor=0"], ["LoopConfig.growth_factor"]),
        ([*base, f"{loop}growth_factor=1e999"], ["LoopConfig.growth_factor", "finite"]),
        ([*base, f"{loop}tasks_per_iteration=0"], ["LoopConfig.tasks_per_iteration"]),
        ([*base, f"{loop}tasks_per_iteration=1e999"], ["LoopConfig.tasks_per_iteration",
                                                       "inf"]),
        ([*base, f"{loop}train_set_sizes=(12, 8)"], ["must increase"]),
        ([*base, f"{loop}num_iterations=2", f"{loop}train_set_sizes=(0,)"],
         ["LoopConfig.train_set_sizes", ">= 1"]),
        ([*base, f"{loop}train_set_sizes=(12, 18)", f"{loop}growth_factor=2.0"],
         ["not both"]),
        ([*base, f"{loop}strategies=('nonsense',)"], ["unknown strategy", "nonsense"]),
        ([*base, f"{loop}strategies='random'"], ["LoopConfig.strategies", "list"]),
        ([*base, f"{loop}seeds=()"], ["LoopConfig.seeds"]),
        ([*base, f"{loop}quota='weird'"], ["LoopConfig.quota"]),
        ([*base, f"{loop}label_ratio={{'cls': -1}}"], ["LoopConfig.label_ratio"]),
    ], tmp_path)
    assert not out.exists()


# A child with an address-space limit: building a 10^9-entry schedule fails there instead of
# taking the machine's memory.
CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
from activeit_jax.core.errors import UsageError
from activeit_jax.loop import active_loop
from tests.loop.test_active_loop import FakeStages
config = active_loop.LoopConfig(strategies=("random",), seeds=(0,), num_iterations=10**9,
                                tasks_per_iteration=1, quota="none")
try:
    active_loop.run_loop(sys.argv[1], config, FakeStages(sys.argv[2]).stages())
    print(json.dumps({"error": None}))
except UsageError as err:
    print(json.dumps({"error": str(err)}))
"""


def test_more_iterations_than_pool_tasks_is_refused_without_building_the_schedule(
        tmp_path, sample_data):
    """num_iterations=10**9: refused once the pool's size is known, in one line, without a
    10^9-entry schedule; the run directory then holds only the refused start (its split and
    loop_config.json), and the corrected command runs in it."""
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), str(sample_data / "niv2")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    error = json.loads(done.stdout.strip().splitlines()[-1])["error"]
    assert error and "num_iterations=1000000000" in error and "at most 19" in error
    assert not active_loop.iterations_started(str(run_dir))
    corrected = active_loop.LoopConfig(strategies=("random",), seeds=(0,), num_iterations=2,
                                       tasks_per_iteration=1, quota="none")
    fake = FakeStages(str(sample_data / "niv2"))
    active_loop.run_loop(str(run_dir), corrected, fake.stages())
    stored = json.loads((run_dir / layout.LOOP_CONFIG_FILE).read_text())
    assert stored["num_iterations"] == 2
    assert (run_dir / "seed_0" / "random" / "iter_1" / layout.DONE_FILE).exists()
    # Once an iteration ran, other settings are refused as before.
    with pytest.raises(UsageError, match="different settings"):
        active_loop.run_loop(str(run_dir), active_loop.LoopConfig(
            strategies=("random",), seeds=(0,), num_iterations=3, tasks_per_iteration=1,
            quota="none"), fake.stages())


@pytest.mark.parametrize("changes,match", [
    ({"growth_factor": 1e300, "num_iterations": 3}, "2\\^53"),
    ({"growth_factor": 1.0001, "num_iterations": 2}, "must grow"),
])
def test_pool_dependent_schedule_errors_are_usage_errors(tmp_path, sample_data, changes,
                                                         match):
    config = active_loop.LoopConfig(strategies=("random",), seeds=(0,), quota="none",
                                    **changes)
    with pytest.raises(UsageError, match=match):
        active_loop.run_loop(str(tmp_path / "run"), config,
                             FakeStages(str(sample_data / "niv2")).stages())
    assert not active_loop.iterations_started(str(tmp_path / "run"))
