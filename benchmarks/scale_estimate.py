"""Expected time to score the full pools on a TPU v4-32 slice and on an 8 x H100 box, from FLOPs.

Nothing runs on an accelerator: the numbers follow from the formulas below, the model shapes of
`configs/models/{t5_large,llama_7b}.gin`, published bf16 peaks and an assumed model FLOP
utilisation (MFU), so anyone can rerun and check them:

    python benchmarks/scale_estimate.py
    python benchmarks/scale_estimate.py --mfu 0.3 0.4 --niv2_source_tokens 600

The work (see `activeit_jax.scoring`):

- NIV2 pool, T5-large: 620 tasks x n=10 instances x (1 + K=20) prompts = 210 rows per task,
  each a teacher-forced forward pass over a ~1024-token source and a ~20-token target (padded
  to the 32-token bucket), plus one greedy decode of the 10 unperturbed prompts per task.
- Self-Instruct pool, LLaMA-7B: 52K tasks x 1 instance x 21 prompts, each row an Alpaca prompt
  (~128 tokens) + the ~128-token original response, plus one greedy decode per task.

FLOPs (multiply-add = 2 FLOPs, dense matmuls; layer norms, softmax and gathers ignored):

- Encoder-decoder row: 2 * P_src * S + 2 * P_tgt * T + L_enc * 4 * S^2 * A
  + L_dec * (4 * T^2 * A + 4 * T * S * A), where P_src are the parameters applied to source
  tokens (encoder + the decoder's cross-attention K/V projections), P_tgt those applied to
  target tokens (rest of the decoder + the output projection), A = heads x head dim.
- Decoder-only row of N tokens: 2 * P * N + L * 4 * N^2 * A (P = every matmul parameter:
  all but the input embedding).
- The "2 * params * tokens" rule of thumb is the first term of each.
- Greedy decoding of the originals: the prefill costs FLOPs like a row's source part; each of
  the (at most `max_decode_length`) steps is bound by memory bandwidth: it reads the decoder's
  weights and the KV caches of the batch once. Step time = max(FLOP time, bytes / (HBM
  bandwidth x 0.6)).

Device time = FLOPs / (chips x peak x MFU) + decode steps; the pool is split evenly over the
hosts and their chips (one model replica per chip: both models fit one chip's HBM in bf16).
Not modelled: compilation (one program per (batch, source bucket, target bucket) shape, a few
tens of seconds each on TPU/GPU for these models; use JAX's persistent compilation cache for
the active loop's repeated scorings), checkpoint loading, and host-side prompt building
(measured by `--measure_host` on this machine's CPU; it overlaps the device work and is split
over the hosts).

MFU: the CPU benchmark `benchmarks/score_throughput.py` measured 7-44 % of this machine's
measured f32 matmul peak for tiny / small T5 (small models, where per-call overheads dominate).
For T5-large / LLaMA-7B bf16 forward passes in large batches on TPU / GPU the table assumes
30 % and 40 % (and 10 % as a pessimistic bound): assumptions, not measurements.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    chips: int
    hosts: int
    peak_flops: float      # dense bf16 FLOP/s per chip (published)
    hbm_bandwidth: float   # bytes/s per chip (published)


HARDWARE = (
    # TPU v4: 275 TFLOP/s bf16 and 1.2 TB/s HBM per chip; v4-32 = 16 chips on 4 hosts.
    Hardware("TPU v4-32 (16 chips, 4 hosts)", 16, 4, 275e12, 1.2e12),
    # H100 SXM: ~989 TFLOP/s dense bf16 and 3.35 TB/s HBM3 per GPU; one 8-GPU host.
    Hardware("8 x H100 SXM (1 host)", 8, 1, 989e12, 3.35e12),
)
BANDWIDTH_EFFICIENCY = 0.6
BYTES_PER_PARAM = 2  # bf16


@dataclasses.dataclass(frozen=True)
class T5Shape:
    """configs/models/t5_large.gin (T5 v1.1 / lm-adapt, gated-GELU, untied output layer)."""
    vocab: int = 32128
    d_model: int = 1024
    heads: int = 16
    d_kv: int = 64
    d_ff: int = 2816
    enc_layers: int = 24
    dec_layers: int = 24
    rel_buckets: int = 32

    @property
    def attn(self) -> int:
        return self.heads * self.d_kv

    def total_params(self) -> int:
        d, a, f = self.d_model, self.attn, self.d_ff
        enc = self.enc_layers * (4 * d * a + 3 * d * f + 2 * d)
        dec = self.dec_layers * (8 * d * a + 3 * d * f + 3 * d)
        return enc + dec + 2 * self.vocab * d + 2 * d + 2 * self.rel_buckets * self.heads

    def source_params(self) -> int:
        """Matmul parameters applied to every source token (encoder + cross-attention K, V)."""
        d, a, f = self.d_model, self.attn, self.d_ff
        return self.enc_layers * (4 * d * a + 3 * d * f) + self.dec_layers * 2 * d * a

    def target_params(self) -> int:
        """Matmul parameters applied to every target token (decoder rest + output layer)."""
        d, a, f = self.d_model, self.attn, self.d_ff
        return self.dec_layers * (6 * d * a + 3 * d * f) + d * self.vocab

    def row_flops(self, s: int, t: int) -> float:
        a = self.attn
        return (2 * self.source_params() * s + 2 * self.target_params() * t
                + self.enc_layers * 4 * s * s * a
                + self.dec_layers * (4 * t * t * a + 4 * t * s * a))

    def prefill_flops(self, s: int) -> float:
        return 2 * self.source_params() * s + self.enc_layers * 4 * s * s * self.attn

    def step_flops(self, s: int, ctx: int) -> float:
        """One greedy step of one row (self-attention over `ctx` generated tokens)."""
        a = self.attn
        return 2 * self.target_params() + self.dec_layers * 4 * (s + ctx) * a

    def step_bytes(self, batch: int, s: int, ctx: int) -> float:
        """Decoder weights + the batch's cross-attention and self-attention caches."""
        cache = batch * self.dec_layers * 2 * (s + ctx) * self.attn
        return BYTES_PER_PARAM * (self.target_params() + cache)


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    """configs/models/llama_7b.gin."""
    vocab: int = 32000
    d_model: int = 4096
    d_ff: int = 11008
    layers: int = 32

    @property
    def attn(self) -> int:
        return self.d_model

    def total_params(self) -> int:
        d = self.d_model
        return self.layers * (4 * d * d + 3 * d * self.d_ff + 2 * d) + d + 2 * self.vocab * d

    def matmul_params(self) -> int:
        d = self.d_model
        return self.layers * (4 * d * d + 3 * d * self.d_ff) + d * self.vocab

    def row_flops(self, n: int) -> float:
        return 2 * self.matmul_params() * n + self.layers * 4 * n * n * self.attn

    def prefill_flops(self, n: int) -> float:
        return self.row_flops(n)

    def step_flops(self, ctx: int) -> float:
        return 2 * self.matmul_params() + self.layers * 4 * ctx * self.attn

    def step_bytes(self, batch: int, ctx: int) -> float:
        cache = batch * self.layers * 2 * ctx * self.attn
        return BYTES_PER_PARAM * (self.matmul_params() + cache)


PUBLISHED_PARAMS = {"T5-large": 783_150_080, "LLaMA-7B": 6_738_415_616}


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    model: str
    rows: int                  # scored rows
    row_flops: float           # FLOPs per scored row
    decodes: int               # greedy decodes (originals)
    prefill_flops: float       # per decode
    decode_steps: int          # steps per decode batch
    step_flops: float          # per row and step (at the mean context)
    step_bytes: float          # per batch and step
    decode_batch: int          # rows per chip per decode call


def workloads(args) -> list[Workload]:
    t5, llama = T5Shape(), LlamaShape()
    s, t = args.niv2_source_tokens, args.niv2_target_bucket
    niv2_rows = args.niv2_tasks * args.niv2_instances * (1 + args.num_perturbations)
    mean_ctx = args.max_decode_length // 2
    n = args.si_prompt_tokens + args.si_response_tokens
    si_rows = args.si_tasks * 1 * (1 + args.num_perturbations)
    return [
        Workload("NIV2 pool", "T5-large", niv2_rows, t5.row_flops(s, t),
                 args.niv2_tasks * args.niv2_instances, t5.prefill_flops(s),
                 args.max_decode_length, t5.step_flops(s, mean_ctx),
                 t5.step_bytes(args.decode_batch, s, mean_ctx), args.decode_batch),
        Workload("Self-Instruct pool", "LLaMA-7B", si_rows, llama.row_flops(n),
                 args.si_tasks, llama.prefill_flops(args.si_prompt_tokens),
                 args.max_decode_length, llama.step_flops(args.si_prompt_tokens + mean_ctx),
                 llama.step_bytes(args.decode_batch, args.si_prompt_tokens + mean_ctx),
                 args.decode_batch),
    ]


def estimate(work: Workload, hw: Hardware, mfu: float) -> dict[str, float]:
    """Seconds of device time: scoring, decoding, total (pool split evenly over all chips)."""
    flops_rate = hw.chips * hw.peak_flops * mfu
    score_s = work.rows * work.row_flops / flops_rate
    batches_per_chip = math.ceil(work.decodes / (work.decode_batch * hw.chips))
    step_compute = work.decode_batch * work.step_flops / (hw.peak_flops * mfu)
    step_memory = work.step_bytes / (hw.hbm_bandwidth * BANDWIDTH_EFFICIENCY)
    decode_s = (work.decodes * work.prefill_flops / flops_rate
                + batches_per_chip * work.decode_steps * max(step_compute, step_memory))
    return {"score_s": score_s, "decode_s": decode_s, "total_s": score_s + decode_s,
            "memory_bound": step_memory > step_compute}


def _fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:5.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:5.1f} min"
    return f"{seconds / 3600:5.1f} h"


def measure_host_prep(num_tasks: int = 12) -> float:
    """Seconds per row of host-side prompt building (perturb, render, tokenise) measured on
    this machine with the bundled sample vocabulary and NIV2 tasks (n=10, K=20)."""
    import glob
    sys.path.insert(0, REPO)
    from activeit_jax import scoring
    from activeit_jax.data import niv2, vocab as vocab_lib
    vocab = vocab_lib.get_vocabulary(os.path.join(REPO, "data", "sample", "vocab",
                                                  "sample_spm.model"))
    files = sorted(glob.glob(os.path.join(REPO, "data", "sample", "niv2", "tasks", "*.json")))
    tasks = [niv2.load_niv2_task(f) for f in files[:num_tasks]]
    builder = scoring.PromptBuilder(vocab, scoring.ScoreConfig(num_instances=10,
                                                               num_perturbations=20))
    start, rows = time.perf_counter(), 0
    for i, task in enumerate(tasks):
        plan = builder.plan(i, task)
        rows += sum(len(ids) for ids in plan.source_ids)
    return (time.perf_counter() - start) / max(rows, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.1, 0.3, 0.4])
    parser.add_argument("--num_perturbations", type=int, default=20, help="K")
    parser.add_argument("--niv2_tasks", type=int, default=620)
    parser.add_argument("--niv2_instances", type=int, default=10, help="n")
    parser.add_argument("--niv2_source_tokens", type=int, default=1024)
    parser.add_argument("--niv2_target_bucket", type=int, default=32,
                        help="~20 target tokens, padded to the 32-token bucket")
    parser.add_argument("--si_tasks", type=int, default=52_000)
    parser.add_argument("--si_prompt_tokens", type=int, default=128)
    parser.add_argument("--si_response_tokens", type=int, default=128)
    parser.add_argument("--max_decode_length", type=int, default=128)
    parser.add_argument("--decode_batch", type=int, default=32, help="rows per chip per call")
    parser.add_argument("--measure_host", action="store_true",
                        help="also time host-side prompt building on this CPU")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()} ({os.cpu_count()} cores)", flush=True)

    print("Model parameters (from the configs' shapes; published in brackets):")
    for name, shape in (("T5-large", T5Shape()), ("LLaMA-7B", LlamaShape())):
        print(f"  {name:<9} {shape.total_params():>14,} [{PUBLISHED_PARAMS[name]:,}]")
    print("\nWork:")
    works = workloads(args)
    for w in works:
        total = w.rows * w.row_flops
        print(f"  {w.name:<19} {w.model:<9} {w.rows:>10,} rows x {w.row_flops / 1e12:6.3f} "
              f"TFLOP = {total / 1e15:9.1f} PFLOP;  {w.decodes:,} greedy decodes "
              f"(prefill {w.decodes * w.prefill_flops / 1e15:.1f} PFLOP, <= "
              f"{w.decode_steps} steps per batch of {w.decode_batch}/chip)")
    print(f"\nDevice time (MFU = model FLOP utilisation of the published bf16 peak; decode "
          f"steps bandwidth-bound at {BANDWIDTH_EFFICIENCY:.0%} of HBM bandwidth):")
    header = f"  {'pool':<19} {'hardware':<31} {'MFU':>4}  {'scoring':>9} {'decode':>9} " \
             f"{'total':>9}"
    print(header)
    for w in works:
        for hw in HARDWARE:
            for mfu in args.mfu:
                e = estimate(w, hw, mfu)
                print(f"  {w.name:<19} {hw.name:<31} {mfu:>4.0%}  {_fmt_time(e['score_s']):>9} "
                      f"{_fmt_time(e['decode_s']):>9} {_fmt_time(e['total_s']):>9}")
    print("\nNot included: compilation (one program per batch/bucket shape, cached across "
          "iterations with JAX's persistent compilation cache), checkpoint loading, host-side "
          "prompt building (overlapped with the device work).")
    if args.measure_host:
        per_row = measure_host_prep()
        print(f"\nHost-side prompt building on this CPU (sample vocabulary, one core): "
              f"{per_row * 1e3:.3f} ms/row -> NIV2 pool {works[0].rows * per_row:.0f} s, "
              f"Self-Instruct pool {works[1].rows * per_row:.0f} s of host time in total, "
              "divided by the number of hosts")


if __name__ == "__main__":
    main()
