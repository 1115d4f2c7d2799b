"""Compile and step times of SmolLM2-135M with and without scanning over layers, side by side.

For each layout (`scan_layers` False: 30 unrolled layers; True: one `nn.scan`), on the same
converted SmolLM2-135M-Instruct checkpoint (restored in either layout: the checkpoint's own
layout converts on load), this measures the three programs a user waits for:

  score    the scorer's teacher-forced call (`token_log_probs` summed per row, as
           `scoring.RowScorer` jits it), `--score_batch` rows x `--score_length` tokens;
  decode   greedy decoding with the KV cache (`greedy_decode`: prefill + `lax.while_loop`),
           `--decode_batch` random prompts of up to `--prompt_length` tokens, at most
           `--max_decode_length` new tokens (the loop stops when every row has produced EOS;
           the number of steps run is printed, the same in both layouts);
  train    the trainer's jitted step (`training.step.make_train_step`: AdamW, grad clip,
           donated state), `--train_batch` rows x `--train_length` tokens;

each as: trace + lower seconds, XLA compile seconds, and the minimum and median time of
`--repeats` calls after a first call, the calls alternating between the layouts (both see the
same contention). Compile times are cold (no persistent compilation cache). The load average
is printed with every figure: on a shared machine they are indicative only.

    python benchmarks/scan_compile.py                                 # both layouts
    python benchmarks/scan_compile.py --modes=scanned --programs=score,decode
    python benchmarks/scan_compile.py --checkpoint=demo_models/smollm2-135m-instruct
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
import jax.numpy as jnp  # noqa: E402

from activeit_jax import partitioning  # noqa: E402
from activeit_jax.models import checkpoints, layer_layout  # noqa: E402
from activeit_jax.training import state as ts, step as train_step  # noqa: E402

MODES = {"unscanned": False, "scanned": True}
PROGRAMS = ("score", "decode", "train")


def load_average() -> str:
    with open("/proc/loadavg", encoding="utf-8") as handle:
        return " ".join(handle.read().split()[:3])


def random_rows(rng: np.random.Generator, batch: int, length: int, vocab: int,
                pad_id: int) -> np.ndarray:
    """Token ids `[batch, length]`, each row right-padded after a random length >= half."""
    tokens = rng.integers(3, vocab, (batch, length)).astype(np.int32)
    tokens[tokens == pad_id] = pad_id + 1
    for row, n in enumerate(rng.integers(length // 2, length + 1, batch)):
        tokens[row, n:] = pad_id
    return tokens


def lm_batch(rng: np.random.Generator, batch: int, length: int, model) -> dict[str, np.ndarray]:
    cfg = model.config
    tokens = random_rows(rng, batch, length + 1, cfg.vocab_size, cfg.pad_id)
    weights = (tokens[:, 1:] != cfg.pad_id).astype(np.float32)
    weights[:, :length // 4] = 0.0  # a prompt part, as in scoring and training rows
    return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
            "decoder_loss_weights": weights}


class Program:
    """A compiled program and its arguments: `call()` runs it once and waits for it."""

    def __init__(self, jitted, args: tuple, donates_first: bool = False) -> None:
        t0 = time.perf_counter()
        lowered = jitted.lower(*args)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        self.lower_s, self.compile_s = t1 - t0, t2 - t1
        self.args, self.donates_first = args, donates_first
        self.first_call_s = self.call()

    def call(self) -> float:
        start = time.perf_counter()
        out = self.compiled(*self.args)
        jax.block_until_ready(out)
        if self.donates_first:  # the train step donates its state: feed it its own output
            self.args = (out[0], *self.args[1:])
        self.out = out
        return time.perf_counter() - start


def build(model, params, mesh, program: str, args) -> Program:
    """Traces, lowers and compiles one program (timed) and runs it once."""
    rng = np.random.default_rng(0)
    rules = model.logical_axis_rules
    params_sh = jax.tree.map(lambda x: x.sharding, params)
    row = ts.batch_sharding(mesh, 1)
    matrix = ts.batch_sharding(mesh, 2)
    with partitioning.mesh_context(mesh, rules):
        if program == "score":
            batch = lm_batch(rng, args.score_batch, args.score_length, model)

            def score_fn(p, b):
                weights = b["decoder_loss_weights"]
                return (model.token_log_probs(p, b) * weights).sum(-1), weights.sum(-1)
            fn = jax.jit(score_fn, in_shardings=(params_sh, {k: matrix for k in batch}),
                         out_shardings=(row, row))
            return Program(fn, (params, batch))
        if program == "decode":
            prompts = random_rows(rng, args.decode_batch, args.prompt_length,
                                  model.config.vocab_size, model.config.pad_id)
            batch = {"decoder_input_tokens": prompts}
            fn = jax.jit(lambda p, b: model._greedy_decode(p, b, args.max_decode_length),
                         in_shardings=(params_sh, {"decoder_input_tokens": matrix}))
            built = Program(fn, (params, batch))
            print(f"    (decode ran {int(built.out[1])} of {args.max_decode_length} steps)",
                  flush=True)
            return built
        batch = lm_batch(rng, args.train_batch, args.train_length, model)
        schedule = ts.make_schedule("constant", 5e-5)
        optimizer = ts.make_optimizer("adamw", schedule, max_grad_norm=1.0,
                                      stacked_layers=model.config.scans_layers)
        specs = partitioning.logical_to_mesh_specs(model.params_logical_axes(), rules)
        state_sh = ts.train_state_shardings(mesh, optimizer, params, specs)
        batch_sh = {k: matrix for k in batch}
        state = jax.jit(lambda p: ts.create_train_state(p, optimizer),
                        out_shardings=state_sh)(jax.tree.map(jnp.copy, params))
        fn = train_step.make_train_step(model, optimizer, schedule, mesh=mesh,
                                        state_shardings=state_sh, batch_sharding=batch_sh,
                                        use_dropout=False)
        return Program(fn, (state, batch, jax.random.key(0)), donates_first=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=os.path.join(REPO, "demo_models",
                                                             "smollm2-135m-instruct"))
    parser.add_argument("--modes", default="unscanned,scanned")
    parser.add_argument("--programs", default=",".join(PROGRAMS))
    parser.add_argument("--score_batch", type=int, default=8)
    parser.add_argument("--score_length", type=int, default=288)
    parser.add_argument("--decode_batch", type=int, default=8)
    parser.add_argument("--prompt_length", type=int, default=256)
    parser.add_argument("--max_decode_length", type=int, default=32)
    parser.add_argument("--train_batch", type=int, default=4)
    parser.add_argument("--train_length", type=int, default=288)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--remat", action="store_true", help="remat on (train step)")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    programs = [p for p in args.programs.split(",") if p]
    mesh = partitioning.make_mesh({"data": 1}, devices=jax.devices()[:1])
    base = checkpoints.read_model(args.checkpoint)
    print(f"SmolLM2 checkpoint {args.checkpoint}: {base.config.num_layers} layers, "
          f"{base.num_params() / 1e6:.1f}M params; jax {jax.__version__}, "
          f"{jax.devices()[0].platform}; load average {load_average()}", flush=True)
    models, params = {}, {}
    for mode in modes:
        config = dataclasses.replace(layer_layout.with_scan_layers(base.config, MODES[mode]),
                                     remat=args.remat)
        models[mode] = type(base)(config, base.logical_axis_rules)
        params[mode] = checkpoints.restore_params(
            args.checkpoint, models[mode], partitioning.params_shardings(models[mode], mesh))
    rows = []
    for program in programs:
        built = {}
        for mode in modes:
            before = load_average()
            built[mode] = build(models[mode], params[mode], mesh, program, args)
            b = built[mode]
            print(f"  {mode:9s} {program:6s}: lower {b.lower_s:6.2f} s, compile "
                  f"{b.compile_s:6.2f} s, first call {b.first_call_s:6.2f} s   (load {before} "
                  f"-> {load_average()})", flush=True)
        # Calls alternate between the layouts, so both see the same contention; the minimum
        # is the least disturbed call.
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode in modes:
                times[mode].append(built[mode].call())
        for mode in modes:
            print(f"  {mode:9s} {program:6s}: calls {' '.join(f'{t:.3f}' for t in times[mode])}"
                  f" s   (load {load_average()})", flush=True)
        rows.append((program, {m: (built[m].lower_s + built[m].compile_s, min(times[m]),
                                   float(np.median(times[m]))) for m in modes}))
        del built
    print("\nprogram  " + "".join(f"| {m + ' lower+compile':>25s} | {m + ' step min/median':>28s} "
                                  for m in modes))
    for program, figures in rows:
        cells = "".join(f"| {figures[m][0]:23.2f} s | {figures[m][1]:11.3f} s / "
                        f"{figures[m][2]:9.3f} s " for m in modes)
        print(f"{program:8s} {cells}")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
