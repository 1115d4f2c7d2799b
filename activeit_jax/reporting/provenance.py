"""What a run measured, read back from its own files: the model, its checkpoint, the pool, the
prompt format and the main settings -- so a report names them (issue 21, item 5).

Nothing here needs the gin config of the run: every value comes from a file the loop wrote
(`loop_config.json`, `seed_{s}/data/splits.json`, the trainer's and scorer's `run_args.json`,
the scorer's `summary.json`) and from the base checkpoint's `config.json` /
`tokenizer_meta.json` when it is still where the run read it. A value that cannot be found is
left out rather than guessed.
"""
from __future__ import annotations

import html
import json
import os
from typing import Any, Mapping, Sequence

from activeit_jax import layout

PROMPT_FORMAT_WORDS = {
    "tk_instruct": "Tk-Instruct (definition + up to {k} positive examples + the instance)",
    "tk_instruct_chat": "Tk-Instruct (definition + up to {k} positive examples + the instance) "
                        "as the user turn of the model's chat template",
    "alpaca": "Stanford Alpaca template",
    "alpaca_chat": "Alpaca instruction (+ input) as the user turn of the model's chat template",
}


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _args(path: str) -> dict[str, Any]:
    data = _read_json(path)
    return dict(data.get("args", {})) if isinstance(data, dict) else {}


def _first_existing(paths: Sequence[str]) -> str | None:
    return next((p for p in paths if os.path.exists(p)), None)


def _run_files(iterations: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any],
                                                   dict[str, Any]]:
    """(train run_args, scoring run_args, scoring summary) of the first iterations that have
    them (iteration 0 first)."""
    ordered = sorted(iterations, key=lambda it: (it.iteration, it.seed))
    train = next((a for a in (_args(os.path.join(it.path, layout.TRAIN_DIR,
                                                 layout.RUN_ARGS_FILE))
                              for it in ordered) if a), {})
    score_dir = _first_existing([os.path.join(it.path, layout.SCORING_DIR, layout.RUN_ARGS_FILE)
                                 for it in ordered])
    score = _args(score_dir) if score_dir else {}
    summary = (_read_json(os.path.join(os.path.dirname(score_dir),
                                       layout.SCORE_SUMMARY_FILE))
               if score_dir else None) or {}
    return train, score, summary


def model_description(checkpoint: str | None, train_args: Mapping[str, Any]) -> str | None:
    """"<name> (<kind>, <layers> layers, hidden <h>, ...)" from the checkpoint's config.json
    and tokenizer_meta.json; the trainer's recorded model otherwise."""
    if checkpoint and os.path.isdir(checkpoint):
        config = _read_json(os.path.join(checkpoint, "config.json")) or {}
        meta = _read_json(os.path.join(checkpoint, "tokenizer_meta.json")) or {}
        name = None
        source = meta.get("source") if isinstance(meta, dict) else None
        if source:
            name = os.path.basename(str(source).rstrip("/"))
            for suffix in (".gguf",):
                name = name[:-len(suffix)] if name.endswith(suffix) else name
        name = name or os.path.basename(os.path.normpath(checkpoint))
        c = config.get("config", {}) if isinstance(config, dict) else {}
        bits = [str(config.get("model_kind", "")).strip() or None]
        if c.get("num_layers"):
            bits.append(f"{c['num_layers']} layers")
        if c.get("num_decoder_layers") and not c.get("num_layers"):
            bits.append(f"{c['num_decoder_layers']} decoder layers")
        for key, word in (("hidden_size", "hidden"), ("d_model", "d_model"),
                          ("num_heads", "heads"), ("num_kv_heads", "KV heads"),
                          ("vocab_size", "vocabulary"), ("dtype", "weights")):
            if c.get(key) is not None:
                value = f"{c[key]:,}" if isinstance(c[key], int) else c[key]
                bits.append(f"{word} {value}")
        detail = ", ".join(b for b in bits if b)
        return f"{name} ({detail})" if detail else name
    model = train_args.get("model")
    return str(model) if model else None


def pool_description(run_dir: str) -> list[tuple[str, str]]:
    """Pool rows from the first seed's splits.json: the NIV2 / Self-Instruct source, the number
    of tasks per role (cls / gen) and the instance cap."""
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    seeds = sorted(seed for seed in map(layout.parse_seed_name, names) if seed is not None
                   if os.path.exists(os.path.join(layout.data_dir(run_dir, seed),
                                                  layout.SPLITS_FILE)))
    if not seeds:
        return []
    data = _read_json(os.path.join(layout.data_dir(run_dir, seeds[0]),
                                   layout.SPLITS_FILE)) or {}
    summary = data.get("summary", {})
    out = []
    sources = summary.get("sources", [])
    if data.get("kind") == "niv2" and sources:
        split_file = str(sources[0].get("path", ""))
        root = os.path.dirname(os.path.dirname(os.path.dirname(split_file)))
        read = ", ".join(f"{s.get('read')} of {s.get('named')} {s.get('name')} tasks"
                         for s in sources)
        out.append(("Task source", f"NIV2 {root or '?'} ({read})"))
    elif sources:
        out.append(("Task source", ", ".join(str(s.get("path", "")) for s in sources)))
    roles = summary.get("roles", {})
    if roles:
        out.append((f"Roles (seed {seeds[0]})", "; ".join(
            f"{role} {r.get('tasks', 0)} ({r.get('cls', 0)} cls / {r.get('gen', 0)} gen)"
            for role, r in roles.items())))
    if summary.get("quota_note"):
        out.append(("Split quotas", str(summary["quota_note"])))
    if summary.get("max_instances_per_task"):
        out.append(("Instances kept per task", str(summary["max_instances_per_task"])))
    return out


def describe_run(run_dir: str, iterations: Sequence[Any]) -> list[tuple[str, str]]:
    """(what, value) rows naming what the run measured.

    Args:
      run_dir: the run directory.
      iterations: `results.discover_run(run_dir)`.

    Returns:
      Rows in display order: model, checkpoint, pool, prompt, loop, training, scoring.
    """
    train, score, score_summary = _run_files(iterations)
    checkpoint = train.get("init") or score.get("checkpoint")
    # Zero-shot iteration 0 scores the base checkpoint itself; a trained iteration 0's scorer
    # reads its own best/ checkpoint, so the trainer's init is the base when there is one.
    rows: list[tuple[str, str]] = []
    model = model_description(checkpoint, train)
    if model:
        rows.append(("Model", model))
    if checkpoint:
        rows.append(("Base checkpoint", str(checkpoint)))
    rows += pool_description(run_dir)
    config = train.get("config", {})
    formats = score.get("prompt_formats") or {}
    fmt = formats.get("niv2") if "niv2" in formats else next(iter(formats.values()), None)
    if fmt is None and config.get("prompt_format") not in (None, "auto"):
        fmt = config.get("prompt_format")
    if fmt:
        k = score.get("num_pos_examples", config.get("num_pos_examples", "?"))
        words = PROMPT_FORMAT_WORDS.get(fmt, fmt).format(k=k)
        fit = " (examples added while they fit)" if score.get("fit_examples") else ""
        rows.append(("Prompt format", f"{fmt}: {words}{fit}"))
    loop = _read_json(os.path.join(run_dir, layout.LOOP_CONFIG_FILE)) or {}
    if loop:
        size = (f"{loop.get('tasks_per_iteration')} tasks added per iteration"
                if loop.get("tasks_per_iteration") else
                f"training-set sizes {loop.get('train_set_sizes')}" if loop.get(
                    "train_set_sizes") else f"growth x{loop.get('growth_factor')}")
        ratio = loop.get("label_ratio")
        rows.append(("Loop", f"strategies {', '.join(loop.get('strategies', []))}; seeds "
                     f"{', '.join(map(str, loop.get('seeds', [])))}; "
                     f"{loop.get('num_iterations')} iterations incl. iteration 0; {size}"
                     + (f"; quota {loop.get('quota')} {ratio}" if ratio else "")))
    if config:
        rows.append(("Training", (
            f"{config.get('num_epochs')} epochs, batch {config.get('batch_size')}, "
            f"{config.get('optimizer')} lr {config.get('learning_rate')} "
            f"{config.get('schedule')} ({config.get('warmup_steps')} warm-up steps), "
            f"{config.get('max_instances_per_task')} instances per task, source / target "
            f"{config.get('max_source_length')} / {config.get('max_target_length')} tokens, "
            f"best epoch by {config.get('selection_metric')}")))
        val = config.get("max_val_instances_per_task")
        rows.append(("Evaluation", (
            f"greedy, at most {config.get('max_decode_length') or config.get('max_target_length')}"
            f" tokens; the first {config.get('max_eval_instances_per_task')} instances per "
            f"task" + (f" ({val} per validation task for the best epoch)" if val else "")
            + "; ROUGE-L")))
    if score:
        opts = dict(score.get("perturbation_options") or [])
        text = (f"n = {score.get('num_instances')} instance(s) x K = "
                f"{score.get('num_perturbations')} perturbations ({score.get('perturbation')}"
                + (f", rate {opts['rate']}" if "rate" in opts else "") + "), source / target "
                f"{score.get('max_source_length')} / {score.get('max_target_length')} tokens")
        adaptive = score_summary.get("adaptive") if isinstance(score_summary, dict) else None
        if adaptive:
            share = (adaptive.get("rows_scored", 0) / adaptive["rows_full"]
                     if adaptive.get("rows_full") else None)
            text += (f"; adaptive budget: K0 = {adaptive.get('initial_perturbations')}, "
                     f"z = {adaptive.get('z')}, boundary of the next "
                     f"{adaptive.get('num_select')} tasks"
                     + (f" (the first scoring ran {share:.0%} of the full-K rows)"
                        if share is not None else ""))
        rows.append(("Prompt uncertainty", text))
    return rows


def provenance_markdown(rows: Sequence[tuple[str, str]]) -> str:
    """The rows as a two-column Markdown table under "## What was measured"."""
    if not rows:
        return ""
    lines = ["## What was measured\n", "| | |", "|---|---|"]
    lines += [f"| {what} | {value.replace('|', '/')} |" for what, value in rows]
    return "\n".join(lines) + "\n"


def provenance_html(rows: Sequence[tuple[str, str]]) -> str:
    """The rows as an HTML section."""
    if not rows:
        return ""
    cells = "\n".join(f"<tr><th>{html.escape(what)}</th><td style=\"text-align:left\">"
                      f"{html.escape(value)}</td></tr>" for what, value in rows)
    return f"<h2>What was measured</h2>\n<table>\n{cells}\n</table>"
