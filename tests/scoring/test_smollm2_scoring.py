"""Prompt uncertainty of NIV2 tasks on the real SmolLM2-135M-Instruct, against an independent
computation with transformers' PyTorch LLaMA and transformers' own tokenizer.

The scorer runs on our Flax model (the session's GGUF conversion) with the default prompt
format, the Tk-Instruct prompt as the user turn of SmolLM2's ChatML template. The reference
reads nothing of ours but the saved texts of `prompts.jsonl` (source, prediction): transformers
loads the same GGUF file with its own dequantization, tokenises the texts with its own
tokenizer, greedy-decodes the original prompts with `generate`,
computes each row's p = exp(mean log p(response + <|im_end|> | prompt)) teacher forced in
PyTorch, and the task's prompt uncertainty and prediction probability from those with numpy.
2 tasks x 2 instances x (1 + K=2) prompts, short lengths.
"""
from __future__ import annotations

import glob
import json
import os

import jax
import numpy as np
import pytest

from activeit_jax import partitioning, scoring
from activeit_jax.core import io_utils
from activeit_jax.data import niv2

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N, K = 2, 2
MAX_SRC, MAX_TGT = 320, 16
EOS = 2


@pytest.fixture(scope="module")
def tasks(sample_data):
    """The two sample NIV2 tasks with the shortest definitions (short prompts, cheap rows)."""
    loaded = [niv2.load_niv2_task(p)
              for p in sorted(glob.glob(str(sample_data / "niv2" / "tasks" / "*.json")))]
    return sorted(loaded, key=lambda t: len(t.definition))[:2]


@pytest.fixture(scope="module")
def scored(smollm2, tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2_scores")
    # One device: the 135M parameters are not copied onto 8 virtual ones.
    mesh = partitioning.make_mesh({"data": 1}, devices=jax.devices()[:1])
    params = jax.device_put(smollm2.params,
                            partitioning.params_shardings(smollm2.model, mesh))
    config = scoring.ScoreConfig(
        num_instances=N, num_perturbations=K, seed=0, max_source_length=MAX_SRC,
        max_target_length=MAX_TGT, max_decode_length=MAX_TGT, save_prompts=True,
        batch_size=6, tasks_per_chunk=2, source_buckets=(MAX_SRC,),
        sequence_buckets=(MAX_SRC + MAX_TGT,))
    scoring.score_pool(smollm2.model, params, smollm2.vocabulary, iter(tasks), str(out), config,
                       mesh=mesh, run_args={"checkpoint": "smollm2"}, progress=False)
    return out


def _reference_p(model, tokenizer, source: str, prediction: str) -> float:
    prompt = tokenizer(source, add_special_tokens=False)["input_ids"]
    response = tokenizer(prediction, add_special_tokens=False)["input_ids"][:MAX_TGT - 1] + [EOS]
    assert len(prompt) < MAX_SRC  # no cut: the whole saved text conditions the response
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].double()
    log_probs = torch.log_softmax(logits, -1)
    start = len(prompt) - 1  # logits at t predict token t + 1
    scored = [log_probs[start + j, token].item() for j, token in enumerate(response)]
    return float(np.exp(np.mean(scored)))


def _reference_prediction(model, tokenizer, source: str) -> str:
    prompt = tokenizer(source, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=MAX_TGT, eos_token_id=EOS, pad_token_id=0)
    generated = out[0, prompt.shape[1]:].tolist()
    if EOS in generated:
        generated = generated[:generated.index(EOS)]
    return tokenizer.decode(generated)


@pytest.fixture
def one_torch_thread():
    """PyTorch's OpenMP threads crawl when the cores are shared (10x slower here under load);
    one thread is fast and gives the same numbers."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.e2e
def test_prompt_uncertainty_matches_transformers(scored, tasks, smollm2_torch,
                                                 smollm2_hf_tokenizer, one_torch_thread):
    torch_model = smollm2_torch
    rows = io_utils.read_jsonl(os.path.join(scored, "prompts.jsonl"))
    scores = {r["task"]: r for r in io_utils.read_jsonl(os.path.join(scored, "scores.jsonl"))}
    assert list(scores) == [t.name for t in tasks]
    assert len(rows) == len(tasks) * N * (1 + K)
    with open(os.path.join(scored, "run_args.json"), encoding="utf-8") as handle:
        args = json.load(handle)["args"]
    assert args["prompt_formats"]["niv2"] == "tk_instruct_chat"
    assert args["special_ids"] == {"pad": 0, "bos": None, "eos": EOS}
    worst = 0.0
    for task in tasks:
        mine = [r for r in rows if r["task"] == task.name]
        p = np.zeros((N, 1 + K))
        instances = sorted({r["instance"] for r in mine}, key=[r["instance"] for r in mine].index)
        for r in mine:
            i = instances.index(r["instance"])
            # The saved source is the whole chat text: system turn, user turn, assistant header.
            assert r["source"].startswith("<|im_start|>system\n")
            assert r["source"].endswith("<|im_end|>\n<|im_start|>assistant\n")
            if r["perturbation"] == 0:
                assert r["prediction"] == _reference_prediction(
                    torch_model, smollm2_hf_tokenizer, r["source"])
            p[i, r["perturbation"]] = _reference_p(torch_model, smollm2_hf_tokenizer,
                                                   r["source"], r["prediction"])
            worst = max(worst, abs(r["p"] - p[i, r["perturbation"]]) / p[i, r["perturbation"]])
            assert r["p"] == pytest.approx(p[i, r["perturbation"]], rel=1e-3)
        pu = np.mean(np.abs(p[:, 1:] - p[:, :1]))
        assert scores[task.name]["prompt_uncertainty"] == pytest.approx(pu, rel=1e-3, abs=1e-6)
        assert scores[task.name]["prediction_probability"] == pytest.approx(p[:, 0].mean(),
                                                                            rel=1e-3)
    print(f"SmolLM2 PU vs transformers: worst relative row difference {worst:.2e}; "
          f"PU {[round(scores[t.name]['prompt_uncertainty'], 5) for t in tasks]}")


@pytest.mark.e2e
def test_score_cli_on_niv2_needs_no_vocab(smollm2_checkpoint, tasks, sample_data, tmp_path):
    """`activeit-jax score` on the converted checkpoint, NIV2 pool, no --vocab: the stored
    tokenizer and its chat template give ChatML Tk-Instruct prompts (saved verbatim)."""
    import subprocess
    import sys
    (tmp_path / "pool.txt").write_text("".join(t.name + "\n" for t in tasks))
    out = tmp_path / "out"
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device
    run = subprocess.run(
        [sys.executable, "-m", "activeit_jax.main", "score", "--noprogress",
         f"--checkpoint={smollm2_checkpoint}", f"--niv2_dir={sample_data / 'niv2'}",
         f"--tasks={tmp_path / 'pool.txt'}", f"--out={out}", "--num_instances=1",
         "--num_perturbations=1", f"--max_source_length={MAX_SRC}", "--max_target_length=8",
         "--batch_size=4", f"--source_buckets={MAX_SRC}", "--save_prompts"],
        capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["task"] for r in io_utils.read_jsonl(out / "scores.jsonl")] == [t.name for t in tasks]
    rows = io_utils.read_jsonl(out / "prompts.jsonl")
    assert len(rows) == 2 * 2 and all(r["source"].startswith("<|im_start|>system\n")
                                      for r in rows)
    args = json.loads((out / "run_args.json").read_text())["args"]
    assert args["vocab"] == "stored with the checkpoint"
    assert args["prompt_formats"] == {"niv2": "tk_instruct_chat", "self_instruct": "alpaca_chat"}
    refused = subprocess.run(
        [sys.executable, "-m", "activeit_jax.main", "score", f"--checkpoint={smollm2_checkpoint}",
         f"--niv2_dir={sample_data / 'niv2'}", f"--tasks={tmp_path / 'pool.txt'}",
         f"--out={tmp_path / 'other'}", "--prompt_format=tk_instruct_chat",
         f"--vocab={sample_data / 'vocab' / 'sample_spm.model'}"],
        capture_output=True, text=True, timeout=900, env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "activeit-jax score: error: --prompt_format: prompt_format 'tk_instruct_chat' needs a "
        "vocabulary with a chat template")
