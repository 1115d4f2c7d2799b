"""Multi-host on CPU: two local processes x 4 devices (gloo, coordinator on 127.0.0.1) against
the single-process 8-device run of the same scoring and training.

What "equal" means here:
- scoring: the same tasks, order, skipped list, labels, instance counts, Task Map categories,
  prompts and greedy predictions; the float scores within rel=1e-4 / abs=1e-7 (a host
  scores its tasks in other batches than the single process -- 4 rows per device instead of 2,
  other chunk neighbours -- and XLA's CPU kernels round differently for other shapes; the
  same tolerance as the 1-vs-8-device test of tests/scoring/test_scoring_pipeline.py);
- training: the best parameters allclose (rtol=1e-4, atol=1e-6: the gradient all-reduce
  crosses processes through gloo, summing in another order), the same losses per step and the
  same validation predictions.

Plus the layout (the data axis spans both processes, each model group sits in one) and that
every output is written once (process 0) or through orbax.

The device-grid helper of `partitioning` is also checked on fake devices (fast, no e2e mark).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from activeit_jax import partitioning, scoring
from activeit_jax.core import io_utils, run_lock
from activeit_jax.data import errors, niv2, vocab as vocab_lib
from activeit_jax.models import EncoderDecoderModel, T5Config, checkpoints
from activeit_jax.training import trainer
from activeit_jax.training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = T5Config(vocab_size=1152, d_model=32, num_heads=4, d_kv=8, d_ff=64,
                num_encoder_layers=1, num_decoder_layers=1)
N, K = 2, 3
SCORE_REL, SCORE_ABS = 1e-4, 1e-7
PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-6
FLOAT_FIELDS = ("prompt_uncertainty", "prediction_probability", "perplexity", "entropy")


# ---------------------------------------------------------------- device grid (fast)

def _fake_devices(num_processes, per_process, interleave=False, platform="cpu"):
    devices = [SimpleNamespace(id=p * 100 + i, process_index=p, platform=platform,
                               device_kind="cpu", slice_index=0)
               for p in range(num_processes) for i in range(per_process)]
    if interleave:  # the order jax.devices() does not promise
        devices = [devices[p * per_process + i] for i in range(per_process)
                   for p in range(num_processes)]
    return devices


@pytest.mark.parametrize("shape", [(8, 1, 1), (4, 1, 2), (2, 2, 2), (4, 2, 1)])
def test_device_grid_puts_hosts_on_the_data_axis(shape):
    grid = partitioning.device_grid(shape, _fake_devices(2, 4, interleave=True))
    proc = np.vectorize(lambda d: d.process_index)(grid)
    assert grid.shape == shape
    half = shape[0] // 2
    assert (proc[:half] == 0).all() and (proc[half:] == 1).all()  # data axis spans hosts
    assert sorted(d.id for d in grid.flat) == sorted(d.id for d in _fake_devices(2, 4))


def test_device_grid_falls_back_to_host_order_when_data_is_too_small():
    grid = partitioning.device_grid((1, 1, 8), _fake_devices(2, 4, interleave=True))
    assert [d.process_index for d in grid.flat] == [0] * 4 + [1] * 4


def test_tpu_granules_are_slices_not_hosts():
    # One multi-host TPU slice is one ICI domain (topology placement only); slices are joined
    # by DCN, so they are the granules of a multi-slice job.
    devices = _fake_devices(2, 4, platform="tpu")
    assert {partitioning._granule_key(d) for d in devices} == {0}
    for d in devices[4:]:
        d.slice_index = 1
    assert [partitioning._granule_key(d) for d in devices] == [0] * 4 + [1] * 4


def test_shard_info_round_robin():
    shards = [scoring.ShardInfo(k, 3) for k in range(3)]
    owners = [[s.owns(i) for s in shards].index(True) for i in range(10)]
    assert owners == [i % 3 for i in range(10)]
    assert [s.count(10) for s in shards] == [4, 3, 3]
    with pytest.raises(ValueError):
        scoring.ShardInfo(2, 2)


# ---------------------------------------------------------------- shards in one process

def _synthetic_pool():
    def task(name, n, label="gen"):
        return niv2.Task(
            name=name, definition=f"In this task you answer a question about {name}. Be brief.",
            positive_examples=tuple(niv2.Example(f"Example {i} of {name}", f"answer {i}")
                                    for i in range(2)),
            negative_examples=(), label=label,
            instances=tuple(niv2.Instance(f"{name}-{i}", f"Question {i}: what is {name}?",
                                          ("it",)) for i in range(n)))
    pool = [task(f"task{i:03d}_t", 1 + i % 3, "cls" if i % 2 else "gen") for i in range(7)]
    pool[3] = task("task003_empty", 0)
    return pool


@pytest.fixture(scope="module")
def shard_scorer():
    model = EncoderDecoderModel(TINY)
    mesh = partitioning.make_mesh({"data": -1})
    params = jax.jit(model.init_params, out_shardings=partitioning.params_shardings(
        model, mesh))(jax.random.key(1))
    config = _shard_config()
    return scoring.RowScorer(model, params, mesh, batch_size=config.batch_size,
                             decode_batch_size=config.batch_size,
                             source_buckets=config.src_buckets, target_buckets=config.tgt_buckets,
                             max_decode_length=config.max_decode_length)


def _shard_config():
    return scoring.ScoreConfig(num_instances=2, num_perturbations=2, max_source_length=64,
                               max_target_length=8, max_decode_length=8, save_prompts=True,
                               batch_size=8, tasks_per_chunk=2, source_buckets=(64,),
                               target_buckets=(8,))


def _score_shard(scorer, vocab, out, shard=None, hooks=scoring.ScoreHooks()):
    pool = [t if shard is None or shard.owns(i) else scoring.TaskStub(t.name)
            for i, t in enumerate(_synthetic_pool())]
    return scoring.score_pool(scorer.model, None, vocab, iter(pool), str(out), _shard_config(),
                              scorer=scorer, progress=False, shard=shard, hooks=hooks)


def _journal_bytes(out):
    return {n: (out / n).read_bytes() for n in ("scores.jsonl", "prompts.jsonl", "skipped.jsonl")}


def test_shard_journals_merge_resume_and_change_host_count(tmp_path, shard_scorer,
                                                           sample_data):
    vocab = vocab_lib.get_vocabulary(sample_data / "vocab" / "sample_spm.model")
    ref = _score_shard(shard_scorer, vocab, tmp_path / "ref")
    # Two shards, run one after the other in this process: the merge waits for the last.
    out = tmp_path / "sharded"
    first = _score_shard(shard_scorer, vocab, out, scoring.ShardInfo(0, 2))
    assert first["merged"] is False and not (out / "summary.json").exists()
    second = _score_shard(shard_scorer, vocab, out, scoring.ShardInfo(1, 2))
    assert second["merged"] is True and second["num_hosts"] == 2
    assert second["categories"] == ref["categories"] and second["skipped"] == ref["skipped"]
    got, want = (io_utils.read_jsonl(d / "scores.jsonl") for d in (out, tmp_path / "ref"))
    assert [r["task"] for r in got] == [r["task"] for r in want]
    for a, b in zip(got, want):
        for key in ("prompt_uncertainty", "prediction_probability", "perplexity"):
            assert a[key] == pytest.approx(b[key], rel=SCORE_REL, abs=SCORE_ABS)
    rows = io_utils.read_jsonl(out / "prompts.jsonl")
    assert [(r["task"], r["instance"], r["perturbation"]) for r in rows] == \
        [(r["task"], r["instance"], r["perturbation"])
         for r in io_utils.read_jsonl(tmp_path / "ref" / "prompts.jsonl")]
    merged = _journal_bytes(out)
    with open(out / "prompts.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"task": "task000_t", "inst')  # a torn tail: ignored, then rewritten
    scoring.merge_journals(str(out))
    scoring.finalize(str(out), _shard_config())
    assert _journal_bytes(out) == merged

    # Resumed with three hosts: every journal counts as done; nothing is recomputed.
    for k in range(3):
        again = _score_shard(shard_scorer, vocab, out, scoring.ShardInfo(k, 3))
    assert again["merged"] is True and again["last_session"]["tasks_scored"] == 0
    assert sum(h["chunks_computed"] for h in again["hosts"]) == 0
    assert _journal_bytes(out) == merged

    # A host killed after its first task resumes to the same files.
    killed = tmp_path / "killed"

    def stop(name, count):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _score_shard(shard_scorer, vocab, killed, scoring.ShardInfo(0, 2),
                     hooks=scoring.ScoreHooks(after_task=stop))
    assert len(io_utils.read_jsonl(killed / "shards" / "host0-of-2" / "scores.jsonl")) == 1
    _score_shard(shard_scorer, vocab, killed, scoring.ShardInfo(0, 2))
    _score_shard(shard_scorer, vocab, killed, scoring.ShardInfo(1, 2))
    assert _journal_bytes(killed) == merged

    # One host finishing a two-host run: scores only the missing shard, then merges.
    half = tmp_path / "half"
    _score_shard(shard_scorer, vocab, half, scoring.ShardInfo(1, 2))
    rest = _score_shard(shard_scorer, vocab, half)
    # This call scored pool indices 0, 2, 4, 6 (3, the empty one, was host 1's).
    assert rest["last_session"]["tasks_scored"] == 4
    assert [r["task"] for r in io_utils.read_jsonl(half / "scores.jsonl")] == \
        [r["task"] for r in got]


# ---------------------------------------------------------------- two processes (e2e)

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _launch(spec_path, num_processes, timeout=400):
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "multihost_worker.py"),
                               str(spec_path), str(k)], env=_child_env(), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k in range(num_processes)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for k, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"process {k} failed:\n{out[-6000:]}"
    return outputs


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_data):
    root = tmp_path_factory.mktemp("multihost")
    model = EncoderDecoderModel(TINY)
    ckpt = root / "ckpt"
    checkpoints.save_model(ckpt, model, jax.device_get(model.init_params(jax.random.key(0))))
    names = sorted(f[:-len(".json")] for f in os.listdir(sample_data / "niv2" / "tasks"))
    niv2_dir = root / "niv2"
    (niv2_dir / "tasks").mkdir(parents=True)
    for name in names[:8]:
        shutil.copy(sample_data / "niv2" / "tasks" / f"{name}.json", niv2_dir / "tasks")
    empty = json.loads((niv2_dir / "tasks" / f"{names[0]}.json").read_text())
    empty["Instances"] = []
    (niv2_dir / "tasks" / "task999_empty.json").write_text(json.dumps(empty))
    pool = names[:2] + ["task999_empty"] + names[2:5]  # 6 entries: 3 per host, one skipped
    (root / "pool.txt").write_text("\n".join(pool))
    vocab_path = sample_data / "vocab" / "sample_spm.model"
    score_config = scoring.ScoreConfig(
        num_instances=N, num_perturbations=K, seed=0, perturbation="drop",
        perturbation_options=(("rate", 0.2),), max_source_length=256, max_target_length=16,
        max_decode_length=16, compute_entropy=True, save_prompts=True, batch_size=16,
        decode_batch_size=16, tasks_per_chunk=2, source_buckets=(128, 256),
        target_buckets=(16,))
    score_flags = [f"--checkpoint={ckpt}", f"--vocab={vocab_path}", f"--niv2_dir={niv2_dir}",
                   f"--tasks={root}/pool.txt", f"--out={root}/score_multi",
                   f"--num_instances={N}", f"--num_perturbations={K}", "--drop_rate=0.2",
                   "--max_source_length=256", "--max_target_length=16", "--batch_size=16",
                   "--source_buckets=128,256", "--target_buckets=16", "--tasks_per_chunk=2",
                   "--save_prompts", "--entropy", "--mesh=data=-1"]
    train_config = dict(
        num_epochs=2, batch_size=8, num_microbatches=1, learning_rate=1e-3, warmup_steps=0,
        use_dropout=False, seed=0, max_source_length=128, max_target_length=16,
        max_instances_per_task=4, max_eval_instances_per_task=2, eval_batch_size=8,
        mesh_shape={"data": 4, "model": 2}, save_every_steps=0, max_to_keep=1,
        async_checkpointing=True, log_every_steps=1, tensorboard=False, progress_bar=False)
    spec = {"port": _free_port(), "num_processes": 2, "cpu_devices": 4,
            "checkpoint": str(ckpt), "vocab": str(vocab_path), "niv2_dir": str(niv2_dir),
            "score_flags": score_flags, "score_global_mesh_out": str(root / "score_global"),
            "train": {"config": train_config, "tasks": names[5:8], "val_tasks": names[:1],
                      "out": str(root / "train_multi")}}
    (root / "spec.json").write_text(json.dumps(spec))
    outputs = _launch(root / "spec.json", 2)
    return SimpleNamespace(root=root, model=model, ckpt=ckpt, niv2_dir=niv2_dir, pool=pool,
                           vocab=vocab_lib.get_vocabulary(vocab_path), spec=spec,
                           score_config=score_config, outputs=outputs,
                           train_config=TrainConfig(**train_config))


def _load_pool(setup):
    out = []
    for name in setup.pool:
        try:
            out.append(niv2.load_niv2_task(niv2.task_file_path(str(setup.niv2_dir), name)))
        except errors.TaskFormatError:  # the empty task, as `activeit-jax score` reads it
            out.append(scoring.SkippedTask(name, "no instances"))
    return out


def _assert_same_scores(got_dir, ref_dir):
    """scores / skipped / prompts equal; float scores within the documented tolerance."""
    got, ref = (io_utils.read_jsonl(d / "scores.jsonl") for d in (got_dir, ref_dir))
    assert len(ref) == 5
    for a, b in zip(got, ref, strict=True):
        assert {k: v for k, v in a.items() if k not in FLOAT_FIELDS} == \
            {k: v for k, v in b.items() if k not in FLOAT_FIELDS}
        for key in FLOAT_FIELDS:
            assert a[key] == pytest.approx(b[key], rel=SCORE_REL, abs=SCORE_ABS), (a["task"], key)
    assert io_utils.read_jsonl(got_dir / "skipped.jsonl") == \
        io_utils.read_jsonl(ref_dir / "skipped.jsonl")
    got_rows, ref_rows = (io_utils.read_jsonl(d / "prompts.jsonl") for d in (got_dir, ref_dir))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "p"} for r in rows]  # noqa: E731
    assert strip(got_rows) == strip(ref_rows)  # sources and greedy predictions, pool order
    np.testing.assert_allclose([r["p"] for r in got_rows], [r["p"] for r in ref_rows],
                               rtol=SCORE_REL, atol=SCORE_ABS)


@pytest.mark.e2e
def test_multihost_scoring_equals_single_process(setup):
    multi = setup.root / "score_multi"
    single = setup.root / "score_single"
    mesh = partitioning.make_mesh({"data": -1})  # this pytest process: 8 devices
    params = checkpoints.restore_params(setup.ckpt, setup.model,
                                        partitioning.params_shardings(setup.model, mesh))
    scoring.score_pool(setup.model, params, setup.vocab, iter(_load_pool(setup)), str(single),
                       setup.score_config, mesh=mesh, progress=False)

    # Same fingerprinted arguments as the CLI run (the config really is the same).
    cli_args = json.loads((multi / "run_args.json").read_text())["args"]
    for key, value in setup.score_config.fingerprint_args().items():
        assert cli_args[key] == value, key

    _assert_same_scores(multi, single)
    assert (multi / "taskmap.csv").read_text() != ""
    assert (multi / "taskmap.png").stat().st_size > 0
    # Given a mesh over both processes (data=4 x model=2), score_pool used each host's share
    # of it (data=2 x model=2 on its own devices).
    _assert_same_scores(setup.root / "score_global", single)

    # Each host journalled only its own tasks (pool index i -> host i % 2), once.
    for k in range(2):
        journal = multi / "shards" / f"host{k}-of-2"
        done = {r["index"] for r in io_utils.read_jsonl(journal / "scores.jsonl")}
        done |= {r["index"] for r in io_utils.read_jsonl(journal / "skipped.jsonl")}
        assert done == {i for i in range(len(setup.pool)) if i % 2 == k}
        assert json.loads((journal / "done.json").read_text())["shard"] == k
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["num_hosts"] == 2 and len(summary["hosts"]) == 2
    assert summary["tasks_scored"] == 5
    assert sum(h["tasks_scored"] for h in summary["hosts"]) == 5
    assert all(h["tasks_scored"] > 0 for h in summary["hosts"])


@pytest.mark.e2e
def test_multihost_training_equals_single_process(setup):
    multi = setup.root / "train_multi"
    single = setup.root / "train_single"
    train = setup.spec["train"]
    load = lambda names: [niv2.load_niv2_task(  # noqa: E731
        niv2.task_file_path(str(setup.niv2_dir), n)) for n in names]
    result = trainer.train_and_evaluate(setup.model, load(train["tasks"]),
                                        load(train["val_tasks"]), setup.vocab,
                                        setup.train_config, str(single),
                                        init_checkpoint=str(setup.ckpt))
    assert result.final_step == 4

    _, got = checkpoints.load_model(multi / "best")
    _, ref = checkpoints.load_model(single / "best")
    ref_init = checkpoints.load_model(setup.ckpt)[1]
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ref, ref_init))
    assert max(moved) > 1e-3  # training did change the weights
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=PARAM_RTOL,
                                                         atol=PARAM_ATOL), got, ref)

    def train_records(run):
        return [r for r in io_utils.read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    got_m, ref_m = train_records(multi), train_records(single)
    assert [r["step"] for r in got_m] == [r["step"] for r in ref_m] == [1, 2, 3, 4]  # once
    np.testing.assert_allclose([r["loss"] for r in got_m], [r["loss"] for r in ref_m],
                               rtol=1e-5)
    assert [r["num_tokens"] for r in got_m] == [r["num_tokens"] for r in ref_m]
    for epoch in range(2):
        name = f"eval/epoch_{epoch}_predictions.jsonl"
        assert io_utils.read_jsonl(multi / name) == io_utils.read_jsonl(single / name)
    best_got, best_ref = (json.loads((d / "best.json").read_text()) for d in (multi, single))
    assert best_got["epoch"] == best_ref["epoch"] and best_got["step"] == best_ref["step"]
    # Written once (process 0) or by orbax: the same set of files as the single process
    # (each process holds its own run lock file).
    def tree(run):
        return sorted(os.path.relpath(os.path.join(d, f), run)
                      for d, _, files in os.walk(run) for f in files
                      if "checkpoints" not in d and os.sep + "params" not in d
                      and not f.startswith(run_lock.LOCK_FILE))
    assert tree(multi) == tree(single)
    assert not [p for p in os.listdir(multi) if p.endswith((".tmp", ".old"))]
    summary = json.loads((multi / "train_summary.json").read_text())
    assert summary["final_step"] == 4


@pytest.mark.e2e
def test_training_mesh_puts_the_data_axis_across_hosts(setup):
    layouts = [json.loads(line.split(" ", 1)[1]) for out in setup.outputs
               for line in out.splitlines() if line.startswith("MESH_LAYOUT ")]
    assert len(layouts) == 2 and layouts[0]["layout"] == layouts[1]["layout"]
    layout = np.asarray(layouts[0]["layout"])  # [data=4, fsdp=1, model=2] process indices
    assert layouts[0]["axes"] == ["data", "fsdp", "model"] and layout.shape == (4, 1, 2)
    assert set(layout[:, 0, 0]) == {0, 1}  # data parallelism crosses the hosts
    for row in layout.reshape(4, 2):
        assert len(set(row)) == 1  # each tensor-parallel pair sits in one host
