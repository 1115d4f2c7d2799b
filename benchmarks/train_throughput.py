"""Training throughput on real NIV2 examples: ours (unpacked and packed) vs PyTorch, one run.

For each model config (tiny and small T5 of configs/models/, random init, float32 on CPU by
default), on the same tokenised NIV2 training examples (the first `--num_tasks` train tasks of
`--niv2_dir`, sample vocabulary), this prints:
  - padding waste of the batches: ours unpacked (every row padded to the maximum lengths, as
    `train_data.EpochBatcher` builds them by default), packed (`pack=True`: several examples
    per row, t5x segment ids), bucketed (`length_buckets_per_octave=2`: each batch cut to the
    length bucket of its longest row), packed+bucketed, and the reference's dynamic padding
    (each batch padded to its longest row, HF `DataCollatorForSeq2Seq` style);
  - useful tokens/s (real source + target tokens, no padding), examples/s and achieved
    FLOP/s (XLA's cost analysis of the compiled step x steps / time) against this machine's
    measured f32 matmul peak, for one epoch over the examples. Our loop is the trainer's:
    host batch building + `put_batch` + the jitted step (state donated), no per-step
    device sync (metrics are read once at the end, as the trainer reads them every
    `log_every_steps`);
  - PyTorch: `transformers.T5ForConditionalGeneration` with the same initial weights, AdamW
    with the same hyper-parameters, the same examples in the same batches of
    `--batch_size` examples, dynamic padding; and the ratio ours (packed) / PyTorch in
    useful tokens/s;
  - the first-step losses of ours unpacked and PyTorch (same weights, same batch: equal).

PyTorch runs the epoch with 1 thread and with every core and keeps the faster (what a careful
user would do: on a shared machine its OpenMP threads suffer from contention), unless
`--torch_threads` names one count. The load average is printed.

    python benchmarks/train_throughput.py                     # a few minutes on a laptop CPU
    python benchmarks/train_throughput.py --configs=tiny --num_examples=32
    python benchmarks/train_throughput.py --configs=small --num_examples=32 --variants=packed

`--smollm2`: SmolLM2-135M-Instruct (a converted checkpoint, `--smollm2_checkpoint`) on NIV2
chat examples, ours (the trainer's step; decoder-only batches run the output head on the loss
positions only) vs transformers' `LlamaForCausalLM` + AdamW on the same examples in the same
batches (dynamic padding), the same loss masking (the response and its end of turn), loss
through `labels=`; useful tokens/s both sides and the ratio:

    python benchmarks/train_throughput.py --smollm2 --num_examples=16 --batch_size=4 \
        --max_source_length=256 --max_target_length=64 --variants=unpacked,packed
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from activeit_jax.core import xla_defaults  # noqa: E402

xla_defaults.apply()  # what `activeit-jax` applies, before jax starts

import jax  # noqa: E402

from activeit_jax import partitioning
from activeit_jax.core import gin_utils  # noqa: E402
from activeit_jax.models import EncoderDecoderModel, T5Config, hf_convert  # noqa: E402
from activeit_jax.training import (
    inputs as train_data,
    state as ts,  # noqa: E402
    step as train_step,
)

from bench_data import default_niv2_dir  # noqa: E402  (benchmarks/ is sys.path[0])

LEARNING_RATE, B1, B2, EPS = 1e-4, 0.9, 0.999, 1e-8


def model_config(name: str, dtype: str) -> T5Config:
    """The T5Config of configs/models/t5_<name>.gin, `dtype` overridden, dropout off."""
    import gin
    gin.clear_config()
    gin_utils.parse_gin([os.path.join(REPO, "configs", "models", f"t5_{name}.gin")], [])
    config = gin.get_configurable(T5Config)()
    gin.clear_config()
    return dataclasses.replace(config, dtype=dtype, dropout_rate=0.0)


def load_examples(args) -> list:
    """Tokenised NIV2 training examples (Tk-Instruct prompts, sample vocabulary)."""
    from activeit_jax.data import niv2, vocab as vocab_lib
    vocab = vocab_lib.get_vocabulary(os.path.join(REPO, vocab_lib.SAMPLE_VOCAB_RELPATH))
    has_split = os.path.exists(niv2.split_file_path(args.niv2_dir, "train"))
    names = niv2.read_split_names(args.niv2_dir, "train") if has_split else []
    paths = [niv2.task_file_path(args.niv2_dir, n) for n in names]
    paths = [p for p in paths if os.path.exists(p)][:args.num_tasks]
    tasks = [niv2.load_niv2_task(p) for p in paths]
    examples = train_data.encode_tasks(
        tasks, vocab, max_instances_per_task=args.num_examples // max(len(tasks), 1) + 1,
        num_pos_examples=2, max_source_length=args.max_source_length,
        max_target_length=args.max_target_length, seed=0)
    return examples[:args.num_examples]


def make_batcher(examples, args, pack: bool, buckets: int = 0, builder=None):
    return train_data.EpochBatcher(examples, args.batch_size, seed=0,
                                   source_length=args.max_source_length,
                                   target_length=args.max_target_length, pack=pack,
                                   length_buckets_per_octave=buckets, builder=builder)


def epoch_batches(examples, args, pack: bool, buckets: int = 0, builder=None) -> list[dict]:
    batcher = make_batcher(examples, args, pack, buckets, builder)
    return [batcher.batch(0, s) for s in range(batcher.steps_per_epoch(0))]


def padding_waste(batches, pad_id: int = 0) -> tuple[float, float]:
    """(source, target) padded-slot fractions of numpy batches (decoder-only: the whole
    sequence, then the slots of the loss positions, where the output head runs)."""
    key = "encoder_input_tokens" if "encoder_input_tokens" in batches[0] else \
        "decoder_input_tokens"
    src = sum(int((b[key] != pad_id).sum()) for b in batches)
    tgt = sum(int(b["decoder_loss_weights"].sum()) for b in batches)
    src_slots = sum(b[key].size for b in batches)
    tgt_slots = sum(b.get("decoder_loss_positions", b["decoder_target_tokens"]).size
                    for b in batches)
    return 1 - src / src_slots, 1 - tgt / tgt_slots


def bench_ours(model, examples, args, pack: bool, buckets: int = 0, params=None,
               builder=None):
    """One epoch in the trainer's loop; returns (seconds, XLA FLOPs of the epoch, first
    loss, host params, steps). The epoch's batches are built inside the timed loop, as the
    trainer builds them; every batch shape is compiled before (the trainer compiles each
    once per run, and its persistent cache keeps them across runs)."""
    mesh = partitioning.make_mesh({"data": -1})
    rules = partitioning.normalize_rules(None)
    schedule = ts.make_schedule("constant", LEARNING_RATE, 0)
    optimizer = ts.make_optimizer("adamw", schedule, b1=B1, b2=B2, eps=EPS, max_grad_norm=None)
    params = model.init_params(jax.random.key(0)) if params is None else params
    param_specs = partitioning.logical_to_mesh_specs(model.params_logical_axes(), rules)
    state_sh = ts.train_state_shardings(mesh, optimizer, params, param_specs)
    state = jax.jit(lambda p: ts.create_train_state(p, optimizer),
                    out_shardings=state_sh)(params)
    batcher = make_batcher(examples, args, pack, buckets, builder)
    first = batcher.batch(0, 0)
    batch_sh = partitioning.batch_shardings(mesh, first, rules)
    rng = jax.random.key(0)
    with partitioning.mesh_context(mesh, rules):
        step = train_step.make_train_step(model, optimizer, schedule, mesh=mesh,
                                       state_shardings=state_sh, batch_sharding=batch_sh,
                                       num_microbatches=1, use_dropout=False)
        steps, flops, first_loss, seen = batcher.steps_per_epoch(0), 0.0, None, set()
        for i in range(steps):  # compile every shape; the FLOPs of the epoch
            placed = train_step.put_batch(batcher.batch(0, i), batch_sh)
            cost = step.lower(state, placed, rng).compile().cost_analysis()
            flops += float((cost[0] if isinstance(cost, (list, tuple)) else cost)
                           .get("flops", 0.0))
            shape = tuple(sorted((k, v.shape) for k, v in placed.items()))
            if shape not in seen:  # jit's own cache: one warm-up call per shape
                seen.add(shape)
                _, metrics = step(jax.jit(lambda s: s)(state), placed, rng)
                first_loss = float(metrics["loss"]) if i == 0 else first_loss
        start = time.perf_counter()
        for i in range(steps):
            state, metrics = step(state, train_step.put_batch(batcher.batch(0, i), batch_sh), rng)
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
    return seconds, flops, first_loss, jax.device_get(params), steps


def torch_model_from(model, params, torch):
    """transformers' T5 with our weights (lm_head untied for v1.1 configs)."""
    import transformers
    hf_config = transformers.T5Config(**hf_convert.hf_config_from_model(model))
    torch_model = transformers.T5ForConditionalGeneration(hf_config)
    if not model.config.tie_word_embeddings:
        # transformers 5 ties lm_head to the embedding even for v1.1 configs: untie it.
        torch_model.lm_head.weight = torch.nn.Parameter(torch_model.lm_head.weight.detach().clone())
        torch_model.all_tied_weights_keys.pop("lm_head.weight", None)
    state = {k: torch.from_numpy(np.ascontiguousarray(v))
             for k, v in hf_convert.params_to_hf(model, params).items()}
    for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        state.setdefault(alias, state["shared.weight"])
    torch_model.load_state_dict(state, strict=True)
    return torch_model


def bench_torch(model, params, examples, args):
    """One epoch, the reference's way: batches of `batch_size` examples in the same order as
    our unpacked batches, each padded to its longest row; returns (seconds, first loss,
    padding waste (source, target))."""
    import torch
    torch_model = torch_model_from(model, params, torch)
    torch_model.train()
    optimizer = torch.optim.AdamW(torch_model.parameters(), lr=LEARNING_RATE, betas=(B1, B2),
                                  eps=EPS, weight_decay=0.0)
    batches = []
    for b in epoch_batches(examples, args, pack=False):  # same rows, then cut to the longest
        real = b["decoder_loss_weights"].sum(1) > 0
        src_len = int((b["encoder_input_tokens"] != 0).sum(1).max())
        tgt_len = int(b["decoder_loss_weights"].sum(1).max())
        batches.append({k: v[real][:, :src_len if k == "encoder_input_tokens" else tgt_len]
                        for k, v in b.items()})
    waste = padding_waste(batches)
    first_loss, start = None, time.perf_counter()
    for i, batch in enumerate(batches):
        enc = torch.from_numpy(batch["encoder_input_tokens"]).long()
        labels = torch.from_numpy(batch["decoder_target_tokens"]).long()
        labels = labels.masked_fill(torch.from_numpy(batch["decoder_loss_weights"]) == 0, -100)
        optimizer.zero_grad(set_to_none=True)
        out = torch_model(input_ids=enc, attention_mask=(enc != 0).long(),
                          decoder_input_ids=torch.from_numpy(batch["decoder_input_tokens"]).long(),
                          labels=labels)
        out.loss.backward()
        optimizer.step()
        if i == 0:
            first_loss = float(out.loss.detach())
    return time.perf_counter() - start, first_loss, waste


def _timed_first(result):
    """(seconds, *rest) -> ((*rest), seconds), for `faster_of_threads`."""
    return tuple(result[1:]), result[0]


def faster_of_threads(fn, threads: int = 0):
    """`fn()` -> (result, seconds) with `torch.set_num_threads(threads)`, or, with `threads`
    0, with 1 thread and with every core (a careful user keeps the faster); (result,
    seconds, threads, {threads: seconds}) of the faster run."""
    import torch
    runs = {}
    for count in ([threads] if threads else sorted({1, os.cpu_count() or 1})):
        torch.set_num_threads(count)
        runs[count] = fn()
    best = min(runs, key=lambda t: runs[t][1])
    return runs[best][0], runs[best][1], best, {t: round(r[1], 1) for t, r in runs.items()}


def bench_config(name: str, args, peak: float, examples) -> None:
    model = EncoderDecoderModel(model_config(name, args.dtype))
    useful = sum(len(e.inputs) + len(e.targets[0]) for e in examples)
    print(f"[{name}] {model.num_params() / 1e6:.1f}M params, {len(examples)} NIV2 examples "
          f"({useful} real tokens), batch {args.batch_size}, lengths "
          f"{args.max_source_length} + {args.max_target_length}, {args.dtype}", flush=True)
    results = {}
    variants = (("unpacked", False, 0), ("packed", True, 0), ("bucketed", False, 2),
                ("packed+bucketed", True, 2))
    for label, pack, buckets in variants:
        if label not in args.variants.split(","):
            continue
        waste = padding_waste(epoch_batches(examples, args, pack, buckets))
        seconds, flops, loss, params, steps = bench_ours(model, examples, args, pack, buckets)
        results[label] = seconds
        print(f"  ours {label:<15}: padding waste source {waste[0]:5.1%} target "
              f"{waste[1]:5.1%}; {steps} steps in {seconds:6.1f}s = {useful / seconds:7.0f} "
              f"useful tok/s, {len(examples) / seconds:5.2f} examples/s; "
              f"{flops / seconds / 1e9:6.2f} GFLOP/s = {flops / seconds / peak:5.1%} of matmul "
              f"peak; first loss {loss:.5f}", flush=True)
    if args.no_torch:
        return
    (loss, waste), seconds, threads, runs = faster_of_threads(
        lambda: _timed_first(bench_torch(model, params, examples, args)), args.torch_threads)
    print(f"  pytorch      : padding waste source {waste[0]:5.1%} target {waste[1]:5.1%} "
          f"(dynamic padding); {seconds:6.1f}s = {useful / seconds:8.0f} useful tok/s with "
          f"{threads} thread(s) (by thread count: {runs}); first loss {loss:.5f}")
    ratios = ", ".join(f"{label} {seconds / value:.2f}x" for label, value in results.items())
    print(f"  ratio useful tok/s ours / pytorch: {ratios}  (load {os.getloadavg()[0]:.2f})")


def smollm2_torch_batches(batches, pad_id: int) -> list[dict]:
    """Our unpacked decoder-only batches as a transformers user feeds `LlamaForCausalLM`:
    all-padding rows dropped, each batch cut to its longest row; `input_ids` is the whole
    text (the first input token, then every target: bos + prompt + response + eos),
    `labels` the same ids with -100 where our loss weight is 0 (the model shifts them), so
    the loss is ours (the same tokens, the same mean)."""
    out = []
    for b in batches:
        real = b["decoder_loss_weights"].sum(1) > 0
        inputs, targets = b["decoder_input_tokens"][real], b["decoder_target_tokens"][real]
        weights = b["decoder_loss_weights"][real]
        lengths = (inputs != pad_id).sum(1)
        width = int(lengths.max()) + 1
        ids = np.concatenate([inputs[:, :1], targets], 1)[:, :width]
        labels = np.concatenate([np.full((len(ids), 1), -100), np.where(
            weights > 0, targets, -100)], 1)[:, :width]
        mask = (np.arange(width)[None] <= lengths[:, None]).astype(np.int64)
        out.append({"input_ids": ids, "labels": labels, "attention_mask": mask,
                    "tokens": int(mask.sum()), "slots": int(mask.size)})
    return out


def bench_torch_smollm2(model, params, batches, pad_id: int):
    """One epoch of transformers' `LlamaForCausalLM` (our weights) + AdamW, loss through
    `labels=`; (seconds, first loss)."""
    import tempfile

    import torch
    import transformers
    with tempfile.TemporaryDirectory() as tmp:
        hf_convert.export_hf(model, params, tmp)
        torch_model = transformers.LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    torch_model.train()
    optimizer = torch.optim.AdamW(torch_model.parameters(), lr=LEARNING_RATE, betas=(B1, B2),
                                  eps=EPS, weight_decay=0.0)
    first_loss, start = None, time.perf_counter()
    for i, batch in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        out = torch_model(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                          attention_mask=torch.from_numpy(batch["attention_mask"]),
                          labels=torch.from_numpy(batch["labels"]).long())
        out.loss.backward()
        optimizer.step()
        if i == 0:
            first_loss = float(out.loss.detach())
    return time.perf_counter() - start, first_loss


def bench_smollm2(args, peak: float) -> None:
    """SmolLM2-135M-Instruct (a converted checkpoint) on NIV2 chat examples: ours (the
    trainer's step, unpacked and packed) vs transformers + AdamW on the same examples in the
    same batches, the same loss masking."""
    from activeit_jax.data import niv2, vocab as vocab_lib
    from activeit_jax.models import checkpoints
    model, params = checkpoints.load_model(args.smollm2_checkpoint)
    params = jax.device_get(params)
    vocab = vocab_lib.resolve_vocabulary(None, args.smollm2_checkpoint, decoder_only=True)
    builder = model.batch_builder(vocab)
    has_split = os.path.exists(niv2.split_file_path(args.niv2_dir, "train"))
    names = niv2.read_split_names(args.niv2_dir, "train") if has_split else []
    paths = [p for p in (niv2.task_file_path(args.niv2_dir, n) for n in names)
             if os.path.exists(p)][:args.num_tasks]
    examples = train_data.encode_tasks(
        [niv2.load_niv2_task(p) for p in paths], vocab,
        max_instances_per_task=args.num_examples // max(len(paths), 1) + 1, num_pos_examples=2,
        max_source_length=args.max_source_length, max_target_length=args.max_target_length,
        seed=0, builder=builder)[:args.num_examples]
    useful = sum(len(e.inputs) + len(e.targets[0]) for e in examples)
    print(f"[smollm2] {model.num_params() / 1e6:.1f}M params, {len(examples)} NIV2 chat "
          f"examples ({useful} real tokens), batch {args.batch_size}, lengths "
          f"{args.max_source_length} + {args.max_target_length}; load {os.getloadavg()}",
          flush=True)
    results = {}
    for label, pack, buckets in (("unpacked", False, 0), ("packed", True, 0),
                                 ("bucketed", False, 2), ("packed+bucketed", True, 2)):
        if label not in args.variants.split(","):
            continue
        waste = padding_waste(epoch_batches(examples, args, pack, buckets, builder),
                              builder.ids.pad)
        seconds, flops, loss, _, steps = bench_ours(model, examples, args, pack, buckets,
                                                    params=params, builder=builder)
        results[label] = seconds
        print(f"  ours {label:<15}: padding waste sequence {waste[0]:5.1%} loss positions "
              f"{waste[1]:5.1%}; {steps} steps in {seconds:6.1f}s = {useful / seconds:7.0f} "
              f"useful tok/s; {flops / seconds / 1e9:6.2f} GFLOP/s = {flops / seconds / peak:5.1%}"
              f" of matmul peak; first loss {loss:.5f} (load {os.getloadavg()[0]:.2f})",
              flush=True)
    if args.no_torch:
        return
    batches = smollm2_torch_batches(epoch_batches(examples, args, False, 0, builder),
                                    builder.ids.pad)
    loss, seconds, threads, runs = faster_of_threads(
        lambda: bench_torch_smollm2(model, params, batches, builder.ids.pad)[::-1],
        args.torch_threads)
    waste = 1 - sum(b["tokens"] for b in batches) / sum(b["slots"] for b in batches)
    print(f"  transformers : padding waste {waste:5.1%} (dynamic padding); {seconds:6.1f}s = "
          f"{useful / seconds:8.0f} useful tok/s with {threads} thread(s) (by thread count: "
          f"{runs}); first loss {loss:.5f}")
    ratios = ", ".join(f"{label} {seconds / value:.2f}x" for label, value in results.items())
    print(f"  ratio useful tok/s ours / transformers: {ratios}  (load {os.getloadavg()})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--dtype", default="float32", help="our compute dtype (CPU: float32)")
    parser.add_argument("--niv2_dir", default=default_niv2_dir())
    parser.add_argument("--num_tasks", type=int, default=16)
    parser.add_argument("--num_examples", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_source_length", type=int, default=1024)
    parser.add_argument("--max_target_length", type=int, default=128)
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--variants", default="unpacked,packed,bucketed,packed+bucketed",
                        help="our batch layouts to time")
    parser.add_argument("--torch_threads", type=int, default=0,
                        help="torch.set_num_threads (0 = 1 and every core, the faster)")
    parser.add_argument("--smollm2", action="store_true",
                        help="SmolLM2-135M-Instruct on NIV2 chat examples vs transformers' "
                             "LlamaForCausalLM (set --num_examples, lengths, batch size)")
    parser.add_argument("--smollm2_checkpoint",
                        default=os.path.join(REPO, "demo_models", "smollm2-135m-instruct"),
                        help="a converted SmolLM2 checkpoint directory")
    args = parser.parse_args(argv)

    from activeit_jax.core import profiling
    print(f"devices: {jax.devices()}  (cpu cores: {os.cpu_count()}, load {os.getloadavg()})")
    peak = profiling.matmul_peak()
    print(f"measured f32 matmul peak: {peak / 1e9:.1f} GFLOP/s; niv2 {args.niv2_dir}")
    if args.smollm2:
        return bench_smollm2(args, peak)
    examples = load_examples(args)
    for name in args.configs.split(","):
        bench_config(name.strip(), args, peak, examples)


if __name__ == "__main__":
    main()
