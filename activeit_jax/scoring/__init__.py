"""Prompt-uncertainty scorer: a whole task pool through one jitted call per batch.

Definitions (Kung et al., 2023, "Active Instruction Tuning"), per task:

- Choose ``n`` instances (``num_instances``, default 10; all of them when the task has fewer)
  with the task's "instances" rng. Their unperturbed prompt (definition + positive examples +
  instance input, Tk-Instruct format) is greedily decoded: the *original prediction* y(x).
- Draw ``K`` perturbed prompts (``num_perturbations``, default 20) with the task's "perturb"
  rng; the same K perturbations of the definition / example inputs serve every instance.
- For instance x and prompt k: ``p_k(x) = exp(mean_t log p(y_t | prompt_k, x, y_<t))``, teacher
  forced on the original prediction re-tokenised as SeqIO does (EOS included); ``p_0`` is the
  same under the unperturbed prompt.
- ``prompt_uncertainty = mean_{x, k=1..K} |p_k(x) - p_0(x)|``;
  ``prediction_probability = mean_x p_0(x)``;
  ``perplexity = mean_x exp(-mean_t log p(y_t | prompt_0, x, y_<t))`` (= mean of 1 / p_0(x));
  ``entropy`` (optional) = mean_x of the mean over target positions of the entropy of the
  next-token distribution under prompt 0 (teacher forced on y(x)).

Tokenisation follows SeqIO: ``ids = vocab.encode(text)``; a sequence longer than the maximum
length is cut to ``ids[:max_len - 1] + [EOS]`` (EOS kept). The saved prompt text
(``save_prompts``) is exactly the string that was tokenised.

Prompt formats (``ScoreConfig.prompt_format``, default "auto"; `data.prompts`): T5 uses the
Tk-Instruct source above. Decoder-only models (`DecoderOnlyModel`, LLaMA; `model.decoder_only`)
use the same definitions and formulas with the model's own special ids and, by default,

- NIV2 tasks: the Tk-Instruct source (definition + positive examples that fit + instance);
  Self-Instruct items: the Stanford Alpaca prompt (instruction = the definition, input = the
  instance input, no demonstrations, so only the instruction is perturbed);
- when the vocabulary carries a chat template (`HFTokenizerVocabulary.chat_template`, e.g.
  SmolLM2's ChatML), that text becomes the user turn of the template, rendered as
  transformers' ``apply_chat_template(messages, add_generation_prompt=True)`` renders it
  (`data.chat`; SmolLM2's template adds its default system turn): formats
  ``tk_instruct_chat`` / ``alpaca_chat``. The perturbation changes the same parts as for T5
  (definition and example inputs) before the template is applied, and ``prompts.jsonl``'s
  ``source`` is the whole rendered text, chat markup included -- exactly what was tokenised.
  The prediction is the assistant turn: generation ends at EOS or the end-of-turn token
  (``<|im_end|>``, SmolLM2's EOS too); when the two differ, the end-of-turn token is scored
  before the EOS.
- The BOS follows the model's config (``bos_id`` None: no BOS, as SmolLM2's tokenizer adds
  none, ``add_bos`` False); below, ``bos + `` is empty then.
- Prompt ids are ``vocab.encode(prompt)`` without special tokens (special-token markup in the
  text, e.g. ``<|im_start|>``, encodes to its single id), cut to their *last*
  ``max_source_length - 1`` ids, so that ``bos + prompt`` fits ``max_source_length`` (the cut
  `models.make_prompt_batch` makes for the evaluator's decoding).
- The original prediction is greedily decoded after ``bos + prompt``; it ends at the model's
  EOS or the end-of-turn token (or the first padding id, as the evaluator's
  `evaluation.decode_tokens`), and its text is ``vocab.decode`` of the ids before it.
- The response is re-tokenised as ``vocab.encode(text)[:max_target_length - 1] + [EOS]``
  (the model's EOS, always present), and ``p_k = exp(mean log p(response ids incl. EOS |
  bos + prompt_k))``, teacher forced on ``bos + prompt_k + response`` with the loss weights on
  the response (`models.make_decoder_only_batch`).
- Scoring rows are bucketed on their total length ``len(prompt) + len(response)`` (the
  number of input positions; ``ScoreConfig.sequence_buckets``, default powers of two up to
  ``max_source_length + max_target_length``); decoding rows on ``1 + len(prompt)`` over the
  source buckets. In ``summary.json``'s padding statistics, "source" then counts the input
  positions of the whole sequence and "target" the scored (response) positions over the
  same slots.
- ``run_args.json`` additionally fingerprints ``prompt_format`` (as configured),
  ``prompt_formats`` (what it resolves to for NIV2 tasks and Self-Instruct items), the chat
  template's hash when a chat format is used, and the model's pad / bos / eos ids (bos None:
  the model takes no BOS, as its tokenizer's ``add_bos``). An encoder-decoder run with the
  default format keeps the fingerprint it always had.

Edge cases:

- A task with fewer than n instances uses all it has (``n_instances`` records how many); a task
  with none is skipped and listed in ``summary.json`` (``skipped``).
- An empty definition with no example inputs leaves nothing to perturb: the K prompts equal the
  original, so PU is exactly 0 (``|p_k - p_0|`` over identical rows, scored once).
- A prompt longer than ``max_source_length`` is cut (encoder-decoder: its end, the instance
  input; decoder-only: its start): the task is still scored, a warning names it, and
  ``truncated_instances`` in ``scores.jsonl`` counts its cut instances.
- A NaN or infinite score stops the run (`NonFiniteScoreError`, nothing of that task written),
  as does a vocabulary larger than the model's embedding (checked before anything runs).

Execution: tasks stream through in fixed chunks of ``tasks_per_chunk`` consecutive pool tasks
(the pool is iterated lazily). In a chunk, all (1+K) x n rows of all tasks are de-duplicated,
sorted by length and cut into batches by a token budget (``batch_tokens``: rows x padded
source length about constant, at most ``batch_size`` rows; `scoring.batching`): lengths round
up to fine buckets (8 per power of two by default), target lengths to the rows' real ones,
and a dynamic programme over the sorted rows trades padded slots against calls and new
shapes, so padding stays low with few compilations (bounded by the bucket grid, independent
of the pool size). One jitted function, batch axis sharded over the mesh's data axes, runs
every batch; each shape compiles once for the whole run. Decoding the originals is batched
the same way (greedy, KV cache in the heads-major layout, stopping when every row has ended).
``adaptive`` holds the optional adaptive perturbation budget (K0 perturbations for every task,
more only near the selection boundary).

One process per directory: `score_pool` holds ``out_dir``'s run lock (`activeit_jax.core.run_lock`;
each host its shard journal's, process 0 also ``out_dir``'s) and refuses a second process.

Resumability: every finished task appends one line to ``scores.jsonl`` (and, with
``save_prompts``, its rows to ``prompts.jsonl`` before that). A restarted run with the same
arguments (``run_args.json`` holds a fingerprint; different arguments are refused) removes the
temp files of a killed atomic write, truncates a torn tail, drops prompt rows of unfinished
tasks, and recomputes only chunks that still hold
unfinished tasks -- the whole chunk, so every batch is composed exactly as in an uninterrupted
run and the numbers are bit-identical. At the end, ``scores.jsonl`` is rewritten atomically in
pool order with the Task Map categories, and ``taskmap.csv`` / ``.png`` / ``.svg`` and
``summary.json`` are written.

Multi-host: each host (JAX process) scores the pool tasks ``i`` with ``i % num_hosts ==
host`` on a mesh of its own devices, with no cross-host collective in the loop, journalling
them in ``out_dir/shards/host{k}-of-{n}/`` (``scores.jsonl``, ``skipped.jsonl``,
``prompts.jsonl``, ``run_args.json``, and ``done.json`` with its throughput once its shard is
complete). After a barrier, process 0 merges the journals into ``out_dir`` in pool order and
writes the Task Map and summary (``num_hosts`` and the per-host statistics in ``hosts``). A
resumed run may use another number of hosts: every journal under ``shards/`` counts as done.
Only the batch composition differs from a single-host run, which changes float rounding, not
the numbers (compare with ``rel=1e-4``; predictions and categories are identical in practice).

Output files (in ``out_dir``; their names, and where a run of the loop puts this directory:
`activeit_jax.layout`):

- ``scores.jsonl``: one line per scored task, pool order: index (position in the pool), task,
  prompt_uncertainty, prediction_probability, perplexity, entropy (null unless computed),
  category (Task Map, see `activeit_jax.scoring.taskmap`), label ("cls"/"gen"), n_instances,
  n_perturbations, truncated_instances. While a run is in progress (or after a kill) the
  lines are in completion order and lack the category.
- ``prompts.jsonl`` (``save_prompts``): one line per (task, instance, perturbation): task,
  instance (id), perturbation (0 = unperturbed, 1..K), source (the exact text tokenised),
  prediction (the original prediction's text), p.
- ``skipped.jsonl``: tasks left out (index, task, reason), e.g. "no instances".
- ``taskmap.csv`` / ``taskmap.png`` / ``taskmap.svg``: the Task Map.
- ``summary.json``: categories and thresholds, skipped tasks, and the whole run's throughput,
  padding waste and compilation counts over every session (call) of every host
  (``num_sessions``; each session journals its counts in ``sessions.jsonl`` after every task,
  see `run_stats`), with the last call's alone under ``last_session``. Timing differs between a
  resumed and an uninterrupted run; every other file is identical.
- ``run_args.json``: the fingerprinted arguments (`ScoreConfig.FINGERPRINTED` + the pool,
  checkpoint and vocabulary paths). Batch sizes, chunking, buckets and the mesh are not
  fingerprinted: changing them on resume is allowed and only changes float rounding.

Layout (one job per module): `formulas` (the numbers above, numpy), `config` (`ScoreConfig`,
buckets), `batching` (batch shapes), `adaptive` (adaptive perturbation budget), `tokens` (id
cuts), `planning` (instances and the (1+K) prompts of a task),
`row_scorer` (jitted, sharded batches on the device), `journal` (run directory, fingerprint,
resume repair, final files), `multihost` (host shards and their merge), `run_stats`
(throughput over sessions and hosts), `pool` (the driver, `score_pool`).
"""
from activeit_jax.data.buckets import bucket_for, default_buckets
from activeit_jax.scoring.config import ScoreConfig, fingerprint
from activeit_jax.scoring.formulas import (
                                         mean_perplexity,
                                         prediction_probability,
                                         prompt_uncertainty,
                                         sequence_probability,
                                         task_metrics,
)
from activeit_jax.scoring.journal import (
                                         ResumeMismatchError,
                                         check_run_args,
                                         finalize,
                                         finished_tasks,
                                         prepare_run_dir,
)
from activeit_jax.scoring.multihost import ShardInfo, merge_journals, shard_dir
from activeit_jax.scoring.planning import (
                                         PromptBuilder,
                                         SkippedTask,
                                         TaskPlan,
                                         TaskStub,
                                         choose_instances,
                                         prompt_formats,
)
from activeit_jax.scoring.pool import NonFiniteScoreError, ScoreHooks, score_pool
from activeit_jax.scoring.row_scorer import PaddingStats, RowScorer
from activeit_jax.scoring.tokens import cut_generated, keep_last_ids, truncate_ids

__all__ = [
    "NonFiniteScoreError", "PaddingStats", "PromptBuilder",
    "ResumeMismatchError", "RowScorer", "ScoreConfig", "ScoreHooks", "ShardInfo", "SkippedTask",
    "TaskPlan", "TaskStub", "bucket_for", "check_run_args", "choose_instances", "cut_generated",
    "default_buckets", "finalize", "finished_tasks", "fingerprint",
    "keep_last_ids", "mean_perplexity", "merge_journals", "prediction_probability",
    "prepare_run_dir", "prompt_formats", "prompt_uncertainty", "score_pool",
    "sequence_probability", "shard_dir",
    "task_metrics", "truncate_ids",
]
