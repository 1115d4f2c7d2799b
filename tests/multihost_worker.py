"""One process of the two-process CPU test in `tests/scoring/test_multihost.py` (not a test itself).

    python tests/multihost_worker.py SPEC.json PROCESS_ID

SPEC.json (written by the test) names the coordinator port, the tiny checkpoint, the sample
vocabulary and NIV2 pool, and the output directories. The process

1. runs `activeit-jax score` in-process (`commands.score.main`) with the multi-host flags
   (`--coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=K --cpu_devices=4
   --cpu_collectives=gloo`), which starts `jax.distributed`: each process scores its half of the
   pool on its own 4 devices and process 0 merges;
2. scores the pool again through `scoring.score_pool` given a mesh over both processes (what
   the active loop passes): the scorer falls back to each host's share of it;
3. trains the checkpoint for a few steps with `trainer.train_and_evaluate` on the global
   8-device mesh of the spec (data x model across both processes);
4. prints one line `MESH_LAYOUT <json>`: the process index of every device of that mesh.
"""
from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def main(spec_path: str, process_id: int) -> None:
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    from absl import flags

    from activeit_jax.commands import score
    argv = ["score", *spec["score_flags"],
            f"--coordinator_address=127.0.0.1:{spec['port']}",
            f"--num_processes={spec['num_processes']}", f"--process_id={process_id}",
            f"--cpu_devices={spec['cpu_devices']}", "--cpu_collectives=gloo", "--noprogress"]
    flags.FLAGS(argv)
    score.main(["score"])  # initialises jax.distributed first

    import jax
    import numpy as np

    from activeit_jax.data import niv2, vocab as vocab_lib
    from activeit_jax.models import checkpoints
    from activeit_jax.training import config as train_config, trainer

    assert jax.process_count() == spec["num_processes"] and len(jax.devices()) == 8

    from activeit_jax import partitioning, scoring
    from activeit_jax.scoring import pool_source
    # The library call with a mesh over both processes (as the active loop passes it): the
    # scorer localises it (each host: its 4 devices, parameters gathered) -> the same files.
    model = checkpoints.read_model(spec["checkpoint"])
    mesh = partitioning.make_mesh({"data": 4, "model": 2})
    params = checkpoints.restore_params(spec["checkpoint"], model,
                                        partitioning.params_shardings(model, mesh))
    shard = scoring.ShardInfo.of_process()
    pool, total, _ = pool_source.iter_pool(flags.FLAGS.niv2_dir, flags.FLAGS.tasks, None,
                                     shard=shard)
    scoring.score_pool(model, params, vocab_lib.get_vocabulary(spec["vocab"]), pool,
                       spec["score_global_mesh_out"], score.build_config(), mesh=mesh,
                       total=total, progress=False)
    train = spec["train"]
    config = train_config.TrainConfig(**train["config"])
    model = checkpoints.read_model(spec["checkpoint"])
    vocab = vocab_lib.get_vocabulary(spec["vocab"])
    load = lambda names: [niv2.load_niv2_task(  # noqa: E731
        niv2.task_file_path(spec["niv2_dir"], n)) for n in names]
    result = trainer.train_and_evaluate(model, load(train["tasks"]), load(train["val_tasks"]),
                                        vocab, config, train["out"],
                                        init_checkpoint=spec["checkpoint"])
    assert result.completed and result.params is not None
    mesh = partitioning.make_mesh(config.mesh_shape)
    layout = np.vectorize(lambda d: d.process_index)(mesh.devices)
    print("MESH_LAYOUT " + json.dumps({"process": process_id, "axes": list(mesh.axis_names),
                                       "layout": layout.tolist()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
