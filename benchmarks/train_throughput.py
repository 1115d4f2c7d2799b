"""Training-step throughput: our jitted sharded train step vs PyTorch, in the same run.

For each model config (tiny and small T5 of configs/models/, random init, float32 on CPU by
default) this prints:
  - ours: tokens/s (padded encoder + decoder positions per second), target tokens/s, step time,
    and achieved FLOP/s (XLA's cost analysis of the compiled step / measured step time) with
    its ratio to this machine's f32 matmul peak, measured at the start of the same run;
  - PyTorch: `transformers.T5ForConditionalGeneration` built from the same config
    (`hf_convert.hf_config_from_model`), loaded with the same initial weights, the same batch,
    AdamW with the same hyper-parameters; tokens/s and the ratio ours / PyTorch;
  - the first-step losses of both (they must agree: same weights, same batch).

Both sides use every CPU core by default (`--torch_threads`); timings are the median of
`--steps` steps after `--warmup` untimed ones. On a shared machine PyTorch's OpenMP threads
suffer badly from contention; compare with `--torch_threads=1` there.

    python benchmarks/train_throughput.py                  # a few minutes on a laptop CPU
    python benchmarks/train_throughput.py --configs=tiny --steps=10 --batch_size=32
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from activeit_jax import gin_utils, partitioning, train_data, trainer  # noqa: E402
from activeit_jax import train_state as ts  # noqa: E402
from activeit_jax.models import EncoderDecoderModel, T5Config, hf_convert  # noqa: E402

LEARNING_RATE, B1, B2, EPS = 1e-4, 0.9, 0.999, 1e-8


def matmul_peak(size: int, reps: int) -> float:
    """Measured f32 FLOP/s of a jitted [size, size] @ [size, size] on the default device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def model_config(name: str, dtype: str) -> T5Config:
    """The T5Config of configs/models/t5_<name>.gin, `dtype` overridden, dropout off."""
    import gin
    gin.clear_config()
    gin_utils.parse_gin([os.path.join(REPO, "configs", "models", f"t5_{name}.gin")], [])
    config = gin.get_configurable(T5Config)()
    gin.clear_config()
    return dataclasses.replace(config, dtype=dtype, dropout_rate=0.0)


def make_batch(vocab_size: int, batch: int, source: int, target: int, seed: int = 0):
    """Random full-length rows (no padding: every position counts as a processed token)."""
    rng = np.random.default_rng(seed)
    inputs = [list(rng.integers(2, vocab_size, source - 1)) + [1] for _ in range(batch)]
    targets = [list(rng.integers(2, vocab_size, target - 1)) + [1] for _ in range(batch)]
    return train_data.encdec_features(inputs, targets, source, target)


def bench_ours(model, batch, args):
    mesh = partitioning.make_mesh({"data": -1})
    rules = partitioning.normalize_rules(None)
    schedule = ts.make_schedule("constant", LEARNING_RATE, 0)
    optimizer = ts.make_optimizer("adamw", schedule, b1=B1, b2=B2, eps=EPS, max_grad_norm=None)
    params = model.init_params(jax.random.key(0))
    param_specs = partitioning.logical_to_mesh_specs(model.params_logical_axes(), rules)
    state_sh = ts.train_state_shardings(mesh, optimizer, params, param_specs)
    state = jax.jit(lambda p: ts.create_train_state(p, optimizer),
                    out_shardings=state_sh)(params)
    batch_sh = trainer.batch_shardings(mesh, batch)
    with partitioning.mesh_context(mesh, rules):
        step = trainer.make_train_step(model, optimizer, schedule, mesh=mesh,
                                       state_shardings=state_sh, batch_sharding=batch_sh,
                                       num_microbatches=args.num_microbatches,
                                       use_dropout=False)
        placed = trainer.put_batch(batch, batch_sh)
        rng = jax.random.key(0)
        compiled = step.lower(state, placed, rng).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0))
        first_loss, times = None, []
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            state, metrics = step(state, placed, rng)
            loss = float(metrics["loss"])  # blocks
            if i == 0:
                first_loss = loss
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times), flops, first_loss, jax.device_get(params)


def bench_torch(model, params, batch, args):
    import torch
    import transformers
    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
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
    torch_model.train()
    optimizer = torch.optim.AdamW(torch_model.parameters(), lr=LEARNING_RATE, betas=(B1, B2),
                                  eps=EPS, weight_decay=0.0)
    enc = torch.from_numpy(batch["encoder_input_tokens"]).long()
    dec_in = torch.from_numpy(batch["decoder_input_tokens"]).long()
    labels = torch.from_numpy(batch["decoder_target_tokens"]).long()
    labels = labels.masked_fill(torch.from_numpy(batch["decoder_loss_weights"]) == 0, -100)
    first_loss, times = None, []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = torch_model(input_ids=enc, attention_mask=(enc != 0).long(),
                          decoder_input_ids=dec_in, labels=labels)
        out.loss.backward()
        optimizer.step()
        loss = float(out.loss.detach())
        if i == 0:
            first_loss = loss
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), first_loss


def bench_config(name: str, args, peak: float) -> None:
    model = EncoderDecoderModel(model_config(name, args.dtype))
    batch = make_batch(model.config.vocab_size, args.batch_size, args.max_source_length,
                       args.max_target_length)
    tokens = args.batch_size * (args.max_source_length + args.max_target_length)
    target_tokens = args.batch_size * args.max_target_length
    ours_s, flops, ours_loss, params = bench_ours(model, batch, args)
    print(f"[{name}] {model.num_params() / 1e6:.1f}M params, batch {args.batch_size} x "
          f"({args.max_source_length} + {args.max_target_length}) tokens, "
          f"{args.num_microbatches} microbatch(es), {args.dtype}")
    print(f"  ours    : {ours_s * 1e3:8.1f} ms/step  {tokens / ours_s:10.0f} tokens/s  "
          f"{target_tokens / ours_s:8.0f} target tok/s  {flops / ours_s / 1e9:7.2f} GFLOP/s "
          f"= {flops / ours_s / peak:6.1%} of matmul peak  (XLA: {flops / 1e9:.2f} GFLOP/step)")
    if args.no_torch:
        return
    torch_s, torch_loss = bench_torch(model, params, batch, args)
    print(f"  pytorch : {torch_s * 1e3:8.1f} ms/step  {tokens / torch_s:10.0f} tokens/s  "
          f"{target_tokens / torch_s:8.0f} target tok/s  (same FLOPs: "
          f"{flops / torch_s / 1e9:.2f} GFLOP/s = {flops / torch_s / peak:.1%} of peak)")
    print(f"  ratio ours / pytorch tokens/s: {torch_s / ours_s:.2f}x;  first-step loss ours "
          f"{ours_loss:.5f} vs pytorch {torch_loss:.5f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--dtype", default="float32", help="our compute dtype (CPU: float32)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_microbatches", type=int, default=1)
    parser.add_argument("--max_source_length", type=int, default=128)
    parser.add_argument("--max_target_length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--torch_threads", type=int, default=0,
                        help="torch.set_num_threads (0 = all cores)")
    args = parser.parse_args(argv)

    print(f"devices: {jax.devices()}  (cpu cores: {os.cpu_count()})")
    peak = matmul_peak(args.matmul_size, reps=5)
    print(f"measured f32 matmul peak ({args.matmul_size}^3): {peak / 1e9:.1f} GFLOP/s")
    for name in args.configs.split(","):
        bench_config(name.strip(), args, peak)


if __name__ == "__main__":
    main()
