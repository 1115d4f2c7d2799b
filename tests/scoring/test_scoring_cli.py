"""`activeit-jax score` end to end: a saved tiny checkpoint, the sample NIV2 and Self-Instruct
pools, resume of a finished run, refusal of changed arguments."""
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

from activeit_jax.core import io_utils
from activeit_jax.models import EncoderDecoderModel, T5Config, checkpoints

TINY = T5Config(vocab_size=1152, d_model=32, num_heads=4, d_kv=8, d_ff=64,
                num_encoder_layers=1, num_decoder_layers=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = EncoderDecoderModel(TINY)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoints.save_model(path, model, model.init_params(jax.random.key(0)))
    return path


def _score(*args):
    cmd = [sys.executable, "-m", "activeit_jax.main", "score", "--noprogress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_cli_niv2_pool_then_resume_and_refuse(tmp_path, checkpoint, sample_data):
    names = sorted(f[:-len(".json")] for f in os.listdir(sample_data / "niv2" / "tasks"))[:5]
    niv2_dir = tmp_path / "niv2"
    (niv2_dir / "tasks").mkdir(parents=True)
    for name in names:
        shutil.copy(sample_data / "niv2" / "tasks" / f"{name}.json", niv2_dir / "tasks")
    empty = json.loads((niv2_dir / "tasks" / f"{names[0]}.json").read_text())
    empty["Instances"] = []
    (niv2_dir / "tasks" / "task999_empty.json").write_text(json.dumps(empty))
    (tmp_path / "pool.txt").write_text("\n".join(names[:2] + ["task999_empty"] + names[2:]))
    out = tmp_path / "out"
    common = [f"--checkpoint={checkpoint}", f"--vocab={sample_data}/vocab/sample_spm.model",
              f"--niv2_dir={niv2_dir}", f"--tasks={tmp_path}/pool.txt", f"--out={out}",
              "--num_instances=2", "--num_perturbations=3", "--max_source_length=128",
              "--max_target_length=8", "--batch_size=16", "--mesh=data=4,model=2",
              "--save_prompts", "--tasks_per_chunk=2"]
    run = _score(*common)
    assert run.returncode == 0, run.stderr[-3000:]
    scores = io_utils.read_jsonl(out / "scores.jsonl")
    assert [r["task"] for r in scores] == names
    for key in ("task", "prompt_uncertainty", "prediction_probability", "perplexity", "entropy",
                "category", "label", "n_instances", "n_perturbations"):
        assert key in scores[0]
    assert len(io_utils.read_jsonl(out / "prompts.jsonl")) == 5 * 2 * 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == [{"task": "task999_empty", "reason": "no instances"}]
    for name in ("taskmap.csv", "taskmap.png", "taskmap.svg", "summary.json"):
        assert (out / name).stat().st_size > 0
    before = (out / "scores.jsonl").read_bytes()
    again = _score(*common)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_session"]["chunks_computed"] == 0
    assert (out / "scores.jsonl").read_bytes() == before
    refused = _score(*common[:-1], "--num_perturbations=4")
    assert refused.returncode != 0 and "different arguments" in refused.stderr


@pytest.mark.e2e
def test_cli_self_instruct_pool(tmp_path, checkpoint, sample_data):
    items = json.loads((sample_data / "self_instruct" / "alpaca_sample.json").read_text())[:6]
    (tmp_path / "si.json").write_text(json.dumps(items))
    out = tmp_path / "out"
    run = _score(f"--checkpoint={checkpoint}", f"--vocab={sample_data}/vocab/sample_spm.model",
                 f"--self_instruct={tmp_path}/si.json", f"--out={out}", "--num_perturbations=3",
                 "--max_source_length=128", "--max_target_length=8", "--batch_size=8",
                 "--perturbation=sentinel")
    assert run.returncode == 0, run.stderr[-3000:]
    scores = io_utils.read_jsonl(out / "scores.jsonl")
    assert len(scores) == 6 and all(r["n_instances"] == 1 for r in scores)


@pytest.mark.e2e
def test_cli_prepared_jsonl_scores_only_the_pool_role(tmp_path, checkpoint, sample_data):
    from activeit_jax.data import niv2
    files = sorted(os.listdir(sample_data / "niv2" / "tasks"))[:3]
    lines = []
    for role, name in zip(("initial", "pool", "pool"), files):
        record = niv2.load_niv2_task(sample_data / "niv2" / "tasks" / name).to_dict()
        lines.append(json.dumps({**record, "role": role}))
    (tmp_path / "tasks.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    run = _score(f"--checkpoint={checkpoint}", f"--vocab={sample_data}/vocab/sample_spm.model",
                 f"--tasks={tmp_path}/tasks.jsonl", f"--out={out}", "--num_instances=1",
                 "--num_perturbations=2", "--max_source_length=64", "--max_target_length=4",
                 "--batch_size=8")
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["task"] for r in io_utils.read_jsonl(out / "scores.jsonl")] == \
        [f[:-len(".json")] for f in files[1:]]
