"""GPU check: MFU of scoring and training, ours vs PyTorch on the same device, random weights.

Models: a T5-large-shaped encoder-decoder (24 + 24 layers, d_model 1024) and a LLaMA-shaped
decoder (TinyLlama-1.1B shapes: 22 layers, hidden 2048, 32 heads / 4 kv heads); bfloat16
compute. For each model:

- scoring: `--score_rows` teacher-forced rows of fixed lengths through our `RowScorer`
  (jitted, token-budget batches) and through transformers' model in batches of the same rows
  (`torch.no_grad`, bf16);
- training: `--train_steps` AdamW steps of one batch through our jitted train step (state
  donated) and through transformers + torch.optim.AdamW (bf16 autocast, fp32 master weights,
  like ours).

MFU = model FLOPs (XLA's cost analysis of our compiled program, the same work for PyTorch) /
seconds / the device's peak: its nominal dense bf16 peak when the device name is known
(H100 / H200: 989 TFLOP/s, A100: 312), and the measured bf16 matmul peak (printed too).
Each section reports its own failure and the script goes on. `benchmarks/device_check.sh`
runs it under a time limit; `--dry_run` runs every code path on CPU with tiny shapes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NOMINAL_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def model_pairs(dry_run: bool):
    """(name, our model) for the T5-large and LLaMA shapes (tiny ones with `dry_run`)."""
    from activeit_jax.models import DecoderOnlyModel, EncoderDecoderModel, LlamaConfig, T5Config
    dtype = "float32" if dry_run else "bfloat16"
    if dry_run:
        t5 = T5Config(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                      num_encoder_layers=2, num_decoder_layers=2, dtype=dtype, dropout_rate=0.0)
        llama = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, dtype=dtype)
    else:
        t5 = T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_heads=16,
                      num_encoder_layers=24, num_decoder_layers=24, dtype=dtype,
                      dropout_rate=0.0)
        llama = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                            num_layers=22, num_heads=32, num_kv_heads=4, dtype=dtype)
    return [("t5_large", EncoderDecoderModel(t5)), ("llama_1b", DecoderOnlyModel(llama))]


def device_peak() -> tuple[float | None, float, str]:
    """(nominal bf16 peak or None, measured bf16 matmul FLOP/s, device name)."""
    import jax
    import jax.numpy as jnp
    name = jax.devices()[0].device_kind
    nominal = next((v for k, v in NOMINAL_BF16.items() if k in name), None)
    n = 8192 if jax.default_backend() == "gpu" else 512
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return nominal, best, name


def synthetic_rows(model, args, rng):
    """Scoring rows of fixed lengths: (source, target) ids, the target ending with EOS."""
    vocab, eos = model.config.vocab_size, model.config.eos_id
    src, tgt = args.source_length, args.target_length
    return [(list(rng.integers(3, vocab, src - 1)) + [eos], list(rng.integers(3, vocab, tgt - 1))
             + [eos]) for _ in range(args.score_rows)]


def ours_score(model, params, rows, args) -> tuple[float, float]:
    """(seconds of the timed pass, XLA FLOPs of it): RowScorer, after a warm-up pass."""
    from activeit_jax import partitioning, scoring
    mesh = partitioning.make_mesh({"data": -1})
    top = args.source_length + args.target_length
    scorer = scoring.RowScorer(model, params, mesh, batch_size=args.score_batch,
                               decode_batch_size=args.score_batch,
                               source_buckets=(args.source_length,),
                               target_buckets=(args.target_length,), max_decode_length=1,
                               sequence_buckets=(top,), token_budget=None)
    scorer.score_async(rows).result()  # compile
    shapes = dict(scorer.score_shapes)
    start = time.perf_counter()
    scorer.score_async(rows).result()
    seconds = time.perf_counter() - start
    flops = 0.0
    for shape in shapes:
        compiled = scorer._score._jitted.lower(params, _abstract_batch(model, shape)).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops += float(cost.get("flops", 0.0)) * shapes[shape]
    return seconds, flops


def _abstract_batch(model, shape):
    import jax
    import jax.numpy as jnp
    if model.decoder_only:
        b, t = shape
        feats = {k: (b, t) for k in ("decoder_input_tokens", "decoder_target_tokens",
                                     "decoder_loss_weights")}
    else:
        b, s, t = shape
        feats = {"encoder_input_tokens": (b, s), "decoder_input_tokens": (b, t),
                 "decoder_target_tokens": (b, t), "decoder_loss_weights": (b, t)}
    return {k: jax.ShapeDtypeStruct(v, jnp.float32 if k == "decoder_loss_weights" and
                                    model.decoder_only else jnp.int32)
            for k, v in feats.items()}


def train_batch(model, rows, batch_size):
    rows = rows[:batch_size]
    # A decoder-only training target has no EOS (the builder appends it).
    targets = [t[:-1] if model.decoder_only else t for _, t in rows]
    return model.batch_builder().train_batch([s for s, _ in rows], targets, len(rows[0][0]),
                                             len(rows[0][1]))


def ours_train(model, batch, args) -> tuple[float, float]:
    """(seconds per step, XLA FLOPs per step) of our jitted AdamW train step."""
    import jax

    from activeit_jax import partitioning
    from activeit_jax.training import state as ts, step as train_step
    mesh = partitioning.make_mesh({"data": -1})
    rules = partitioning.normalize_rules(None)
    schedule = ts.make_schedule("constant", 1e-4, 0)
    optimizer = ts.make_optimizer("adamw", schedule, max_grad_norm=None)
    params = jax.jit(model.init_params)(jax.random.key(0))
    specs = partitioning.logical_to_mesh_specs(model.params_logical_axes(), rules)
    state_sh = ts.train_state_shardings(mesh, optimizer, params, specs)
    state = jax.jit(lambda p: ts.create_train_state(p, optimizer), out_shardings=state_sh)(params)
    del params
    batch_sh = partitioning.batch_shardings(mesh, batch, rules)
    rng = jax.random.key(0)
    with partitioning.mesh_context(mesh, rules):
        step = train_step.make_train_step(model, optimizer, schedule, mesh=mesh,
                                       state_shardings=state_sh, batch_sharding=batch_sh,
                                       use_dropout=False)
        placed = train_step.put_batch(batch, batch_sh)
        cost = step.lower(state, placed, rng).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        state, metrics = step(state, placed, rng)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(args.train_steps):
            state, metrics = step(state, placed, rng)
        jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / args.train_steps, float(cost.get("flops", 0.0))


def torch_model(model, params, dry_run: bool):
    """transformers' model with our weights, on the GPU (CPU for a dry run)."""
    import numpy as np
    import torch
    import transformers

    from activeit_jax.models import hf_convert
    config = hf_convert.hf_config_from_model(model)
    if model.decoder_only:
        net = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    else:
        net = transformers.T5ForConditionalGeneration(transformers.T5Config(**config))
        if not model.config.tie_word_embeddings:  # transformers 5 ties lm_head: untie it
            net.lm_head.weight = torch.nn.Parameter(net.lm_head.weight.detach().clone())
            net.all_tied_weights_keys.pop("lm_head.weight", None)
    state = {k: torch.from_numpy(np.ascontiguousarray(v))
             for k, v in hf_convert.params_to_hf(model, params).items()}
    if not model.decoder_only:
        for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            state.setdefault(alias, state["shared.weight"])
    net.load_state_dict(state, strict=False)
    return net.to("cpu" if dry_run else "cuda")


def _torch_inputs(model, batch, device):
    import torch
    feats = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
    if model.decoder_only:
        tokens = feats["decoder_input_tokens"].long()
        return {"input_ids": tokens, "attention_mask": (tokens != 0).long()}, feats
    enc = feats["encoder_input_tokens"].long()
    return {"input_ids": enc, "attention_mask": (enc != 0).long(),
            "decoder_input_ids": feats["decoder_input_tokens"].long()}, feats


def torch_side(model, params, rows, args) -> dict:
    """Seconds of the PyTorch scoring pass and of one PyTorch training step."""
    import torch
    device = "cpu" if args.dry_run else "cuda"
    sync = (lambda: None) if args.dry_run else torch.cuda.synchronize
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    net = torch_model(model, params, args.dry_run)
    batches = [train_batch(model, rows[i:i + args.score_batch], args.score_batch)
               for i in range(0, len(rows), args.score_batch)]

    def score_pass():
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=not args.dry_run):
            for batch in batches:
                inputs, feats = _torch_inputs(model, batch, device)
                logp = torch.log_softmax(net(**inputs).logits.float(), -1)
                target = feats["decoder_target_tokens"].long()[..., None]
                (logp.gather(-1, target)[..., 0] * feats["decoder_loss_weights"]).sum(-1).cpu()
    net.eval()
    score_pass()
    sync()
    start = time.perf_counter()
    score_pass()
    sync()
    score_s = time.perf_counter() - start
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    inputs, feats = _torch_inputs(model, train_batch(model, rows, args.train_batch), device)
    labels = feats["decoder_target_tokens"].long().masked_fill(
        feats["decoder_loss_weights"] == 0, -100)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=not args.dry_run):
            logits = net(**inputs).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                 ignore_index=-100)
        loss.backward()
        optimizer.step()
    step()
    sync()
    start = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    sync()
    return {"score_s": score_s, "train_s": (time.perf_counter() - start) / args.train_steps}


def run_model(name, model, args, peak) -> None:
    """Ours then PyTorch for one model; prints MFU lines (a failure is printed, not raised)."""
    import jax
    import numpy as np
    rng = np.random.default_rng(0)
    rows = synthetic_rows(model, args, rng)
    out = {}
    try:
        params = jax.jit(model.init_params)(jax.random.key(0))
        out["score_s"], out["score_flops"] = ours_score(model, params, rows, args)
        host_params = jax.device_get(params)
        del params
        out["train_s"], out["train_flops"] = ours_train(
            model, train_batch(model, rows, args.train_batch), args)
        print(f"[{name}] ours: scoring {len(rows)} rows {out['score_s']:.2f}s = "
              f"{out['score_flops'] / out['score_s'] / peak:.1%} MFU; training step "
              f"{out['train_s'] * 1e3:.0f} ms = {out['train_flops'] / out['train_s'] / peak:.1%}"
              f" MFU", flush=True)
    except Exception:  # noqa: BLE001 - report and go on with the other sections
        print(f"[{name}] ours FAILED:\n{traceback.format_exc()[-2000:]}", flush=True)
        return
    try:
        theirs = torch_side(model, host_params, rows, args)
        print(f"[{name}] pytorch: scoring {theirs['score_s']:.2f}s = "
              f"{out['score_flops'] / theirs['score_s'] / peak:.1%} MFU; training step "
              f"{theirs['train_s'] * 1e3:.0f} ms = "
              f"{out['train_flops'] / theirs['train_s'] / peak:.1%} MFU (same FLOPs as ours)")
        print(f"[{name}] ours / pytorch speed: scoring {theirs['score_s'] / out['score_s']:.2f}x,"
              f" training {theirs['train_s'] / out['train_s']:.2f}x", flush=True)
    except Exception:  # noqa: BLE001
        print(f"[{name}] pytorch FAILED:\n{traceback.format_exc()[-2000:]}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry_run", action="store_true", help="tiny shapes on CPU")
    parser.add_argument("--models", default="t5_large,llama_1b")
    parser.add_argument("--score_rows", type=int, default=512)
    parser.add_argument("--score_batch", type=int, default=64)
    parser.add_argument("--train_batch", type=int, default=16)
    parser.add_argument("--train_steps", type=int, default=5)
    parser.add_argument("--source_length", type=int, default=512)
    parser.add_argument("--target_length", type=int, default=64)
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()} ({os.cpu_count()} cores)", flush=True)
    if args.dry_run:
        args.score_rows, args.score_batch, args.train_batch = 8, 4, 4
        args.train_steps, args.source_length, args.target_length = 1, 16, 8
    import jax
    nominal, measured, device = device_peak()
    peak = nominal or measured
    print(f"device {device} ({jax.default_backend()}); bf16 peak nominal "
          f"{(nominal or 0) / 1e12:.0f} TFLOP/s, measured matmul {measured / 1e12:.1f} TFLOP/s;"
          f" MFU below uses {peak / 1e12:.1f}", flush=True)
    for name, model in model_pairs(args.dry_run):
        if name in args.models.split(","):
            start = time.perf_counter()
            run_model(name, model, args, peak)
            print(f"[{name}] section took {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
