"""The PyTorch side of `score_vs_torch.py`: prompt uncertainty as a careful user writes it.

Per task: HF `generate` (greedy, KV cache on) for the task's originals in length-sorted
batches of 16, then the task's rows sorted by length in teacher-forced batches of 16, each
padded to its longest row, under `torch.inference_mode`; the decoder inputs are the labels
shifted right by the model (`prepare_decoder_input_ids_from_labels`, what `labels=` does)
and per-row sums come from the fused `cross_entropy` (`reduction='none'`: the mean loss that
`labels=` returns cannot give a row's sum). The thread count is `--torch_threads` (the
driver runs 1 and every core and keeps the faster). Prompts come from our data layer
(`scoring.PromptBuilder`) with SentencePiece called directly, so both sides score the same
rows; the numbers go to `--worker_out` as JSON.
"""
from __future__ import annotations

import json
import os
import time

ROWS_PER_BATCH = 16


def _pad(rows, pad_id: int = 0):
    import torch
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _generate(model, sources, max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations, cut after the first EOS (kept), as our decoder returns them."""
    import torch
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    generated: list[list[int]] = [[] for _ in sources]
    with torch.inference_mode():
        for lo in range(0, len(order), ROWS_PER_BATCH):
            idx = order[lo:lo + ROWS_PER_BATCH]
            enc = _pad([sources[i] for i in idx])
            out = model.generate(input_ids=enc, attention_mask=(enc != 0).long(),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 eos_token_id=1, pad_token_id=0, use_cache=True)
            for i, row in zip(idx, out[:, 1:].tolist()):
                generated[i] = (row[:row.index(1) + 1] if 1 in row
                                else [t for t in row if t != 0])
    return generated


def _score(model, rows) -> tuple[list[float], list[int]]:
    """Summed target log-probabilities and token counts of (source, target) rows."""
    import torch
    import torch.nn.functional as F
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]), len(rows[i][1])))
    sums, counts = [0.0] * len(rows), [0] * len(rows)
    with torch.inference_mode():
        for lo in range(0, len(order), ROWS_PER_BATCH):
            idx = order[lo:lo + ROWS_PER_BATCH]
            enc = _pad([rows[i][0] for i in idx])
            labels = _pad([rows[i][1] for i in idx], pad_id=-100)
            logits = model(input_ids=enc, attention_mask=(enc != 0).long(),
                           decoder_input_ids=model.prepare_decoder_input_ids_from_labels(
                               labels=labels)).logits
            nll = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none",
                                  ignore_index=-100)
            for i, total, count in zip(idx, (-nll.sum(-1)).tolist(),
                                       (labels != -100).sum(-1).tolist()):
                sums[i], counts[i] = total, count
    return sums, counts


def run_worker(args) -> None:
    """Scores the job of `args` (see score_vs_torch.py) and writes timings, FLOPs and PUs."""
    start = time.perf_counter()
    import numpy as np
    import torch
    import transformers
    from score_vs_torch import SAMPLE_VOCAB, row_flops

    from activeit_jax import scoring
    from activeit_jax.data import niv2
    from activeit_jax.data.vocab import SentencePieceVocabulary
    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    threads = torch.get_num_threads()
    imported = time.perf_counter()
    model = transformers.T5ForConditionalGeneration.from_pretrained(args.hf_dir).eval()
    vocab = SentencePieceVocabulary(SAMPLE_VOCAB)
    loaded = time.perf_counter()
    config = scoring.ScoreConfig(num_instances=args.num_instances,
                                 num_perturbations=args.num_perturbations,
                                 max_source_length=args.max_source_length,
                                 max_target_length=args.max_target_length,
                                 max_decode_length=args.max_target_length)
    builder = scoring.PromptBuilder(vocab, config)
    times = {"plan": 0.0, "decode": 0.0, "score": 0.0}
    flops = {"decode": 0.0, "score": 0.0}
    pu = {}
    names = [n.strip() for n in open(args.tasks_file) if n.strip()]
    for index, name in enumerate(names):
        t0 = time.perf_counter()
        plan = builder.plan(index, niv2.load_niv2_task(niv2.task_file_path(args.niv2_dir, name)))
        t1 = time.perf_counter()
        originals = [ids[0] for ids in plan.source_ids]
        generated = _generate(model, originals, config.max_decode_length)
        t2 = time.perf_counter()
        targets = [builder.encode_target(vocab.decode(g)) for g in generated]
        rows = [(src, targets[i]) for i, srcs in enumerate(plan.source_ids) for src in srcs]
        sums, counts = _score(model, rows)
        t3 = time.perf_counter()
        times["plan"] += t1 - t0
        times["decode"] += t2 - t1
        times["score"] += t3 - t2
        flops["decode"] += sum(row_flops(model_cfg(model), len(s), len(g))
                               for s, g in zip(originals, generated))
        flops["score"] += sum(row_flops(model_cfg(model), len(s), len(t)) for s, t in rows)
        width = config.num_perturbations + 1
        lp = np.asarray(sums).reshape(-1, width)
        nt = np.asarray(counts).reshape(-1, width)
        pu[name] = scoring.task_metrics(lp, nt)["prompt_uncertainty"]
    end = time.perf_counter()
    with open(args.worker_out, "w") as handle:
        json.dump({"main_seconds": end - start, "startup_seconds": imported - start,
                   "load_seconds": loaded - imported, "plan_seconds": times["plan"],
                   "decode_seconds": times["decode"], "score_seconds": times["score"],
                   "flops": flops, "pu": pu, "threads": threads}, handle)


def model_cfg(model):
    """Our T5Config's shape fields from a transformers T5 (for `row_flops`)."""
    from activeit_jax.models import T5Config
    c = model.config
    return T5Config(vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff,
                    num_heads=c.num_heads, num_encoder_layers=c.num_layers,
                    num_decoder_layers=c.num_decoder_layers,
                    feed_forward_proj=c.feed_forward_proj)
