"""Prompt perturbations for prompt uncertainty, and the seeded random streams they draw from.

A perturbation changes the *instruction* side of a prompt only: the task definition and the
inputs of the positive examples (`PromptParts.definition` / `PromptParts.example_inputs`).
The example outputs and the instance input are never touched, and the perturbed parts are
rendered with the same function as the unperturbed prompt.

Registry (`--perturbation=NAME`, options with `--perturbation_option=KEY=VALUE`):

- ``drop`` (default, the paper's): every whitespace-separated word is dropped independently
  with probability ``rate`` (``--drop_rate``, default 0.2).
- ``sentinel``: the same random word choice, but each maximal run of dropped words becomes one
  T5 sentinel ``<extra_id_i>``, numbered from 0 across the definition then the example inputs.
- ``repeat``: every word is repeated (written twice) with probability ``rate``.
- ``insert``: after every word, with probability ``rate``, one extraneous word is inserted,
  drawn uniformly from ``words`` (a comma-separated list; default a built-in list of common
  English words unrelated to any task).
- ``paraphrase``: the definition is replaced by a user paraphrase read from ``file`` (JSON or
  JSONL; records ``{"task": NAME, "paraphrases": [str, ...]}``). Perturbation ``k`` (0-based)
  uses paraphrase ``k mod len(paraphrases)``; the example inputs stay as they are.

Reproducibility: every random choice comes from ``task_rng(seed, task_name, purpose)``, a numpy
Generator seeded from a SHA-256 of (seed, task name, purpose), never from python ``hash()``
(salted per process). The K perturbations of a task are drawn once and shared by all its
instances. Words keep their original separators, so a perturbation that changes nothing
returns the text unchanged (an empty definition stays empty: PU over identical prompts is 0).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from activeit_jax.core import json_text

_WORD_RE = re.compile(r"\S+")


# --------------------------------------------------------------------------- seeded streams


def stable_hash(*parts: Any) -> int:
    """A process-independent 64-bit hash of `parts` (their `str`), for seeding.

    Args:
      *parts: values whose `str()` forms the hashed text (joined by NUL).

    Returns:
      A non-negative int < 2**64, the same in every process and on every machine.
    """
    text = "\x00".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def task_rng(seed: int, task_name: str, purpose: str) -> np.random.Generator:
    """The numpy Generator for one (seed, task, purpose), e.g. purpose "instances"/"perturb".

    Independent streams for different purposes mean that, for example, changing the
    perturbation kind never changes which instances are chosen.
    """
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stable_hash(task_name, purpose)]))


# --------------------------------------------------------------------------- text helpers


def _split_words(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Splits `text` into its leading whitespace and (word, whitespace after it) pairs."""
    matches = list(_WORD_RE.finditer(text))
    if not matches:
        return text, []
    leading = text[:matches[0].start()]
    pairs = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        pairs.append((match.group(), text[match.end():end]))
    return leading, pairs


def _join_words(leading: str, pairs: Sequence[tuple[str, str]], trailing: str) -> str:
    """Inverse of `_split_words` for an edited list: the last word gets `trailing` after it."""
    body = "".join(word + sep for word, sep in pairs[:-1]) + pairs[-1][0]
    return leading + body + trailing


def _edit_words(text: str, edit: Callable[[list[tuple[str, str]]], list[tuple[str, str]]]
                ) -> str:
    """Applies `edit` to the (word, separator) pairs of `text`; unchanged pairs -> same text."""
    leading, pairs = _split_words(text)
    if not pairs:
        return text
    new_pairs = edit(pairs)
    if new_pairs == pairs:
        return text
    trailing = pairs[-1][1]
    if not new_pairs:
        return ""
    return _join_words(leading, new_pairs, trailing)


def drop_words(text: str, rate: float, rng: np.random.Generator) -> str:
    """Drops each whitespace-separated word of `text` independently with probability `rate`.

    One uniform draw per word, in order (so the same rng state gives the same mask).
    """
    def edit(pairs):
        keep = rng.random(len(pairs)) >= rate
        return [pair for pair, k in zip(pairs, keep) if k]
    return _edit_words(text, edit)


def sentinel_words(text: str, rate: float, rng: np.random.Generator,
                   first_sentinel: int = 0) -> tuple[str, int]:
    """Replaces each maximal run of dropped words by one `<extra_id_i>` (i counting up).

    Returns:
      (new text, next free sentinel index).
    """
    counter = [first_sentinel]

    def edit(pairs):
        keep = rng.random(len(pairs)) >= rate
        out: list[tuple[str, str]] = []
        in_span = False
        for (word, sep), k in zip(pairs, keep):
            if k:
                out.append((word, sep))
            elif in_span:  # extend the current masked span; it takes this word's separator
                out[-1] = (out[-1][0], sep)
            else:
                out.append((f"<extra_id_{counter[0]}>", sep))
                counter[0] += 1
            in_span = not k
        return out
    return _edit_words(text, edit), counter[0]


def repeat_words(text: str, rate: float, rng: np.random.Generator) -> str:
    """Writes each word twice with probability `rate` (separated by a single space)."""
    def edit(pairs):
        repeat = rng.random(len(pairs)) < rate
        out = []
        for (word, sep), r in zip(pairs, repeat):
            if r:
                out.append((word, " "))
            out.append((word, sep))
        return out
    return _edit_words(text, edit)


DEFAULT_EXTRANEOUS_WORDS: tuple[str, ...] = (
    "apple", "river", "yellow", "quickly", "table", "seven", "cloud", "guitar", "window",
    "purple", "mountain", "bicycle", "softly", "garden", "orange", "pencil", "ocean", "silver",
    "tomorrow", "basket")


def insert_words(text: str, rate: float, rng: np.random.Generator,
                 words: Sequence[str] = DEFAULT_EXTRANEOUS_WORDS) -> str:
    """After each word, with probability `rate`, inserts a word drawn uniformly from `words`."""
    def edit(pairs):
        draws = rng.random(len(pairs))
        picks = rng.integers(0, len(words), size=len(pairs))
        out = []
        for (word, sep), d, pick in zip(pairs, draws, picks):
            if d < rate:
                out.append((word, " "))
                out.append((words[pick], sep))
            else:
                out.append((word, sep))
        return out
    return _edit_words(text, edit)


# --------------------------------------------------------------------------- registry


class Perturbation(Protocol):
    """Returns perturbed prompt parts; only `definition` and `example_inputs` may change.

    Args:
      parts: a frozen dataclass with fields `definition: str` and `example_inputs:
        tuple[str, ...]` (the data layer's `PromptParts`).
      rng: the task's perturbation Generator (shared by the K perturbations, drawn in order).
      task_name: the task's name.
      index: which perturbation this is, 0..K-1.
    """

    def __call__(self, parts: Any, rng: np.random.Generator, *, task_name: str,
                 index: int) -> Any: ...


PERTURBATIONS: dict[str, Callable[..., Perturbation]] = {}


def register_perturbation(name: str) -> Callable[[Callable[..., Perturbation]],
                                                  Callable[..., Perturbation]]:
    """Decorator registering a factory `make(**options) -> Perturbation` under `name`."""
    def decorate(factory):
        if name in PERTURBATIONS:
            raise ValueError(f"perturbation {name!r} already registered")
        PERTURBATIONS[name] = factory
        return factory
    return decorate


def get_perturbation(name: str, **options: Any) -> Perturbation:
    """Builds the registered perturbation `name` with its options.

    Raises:
      ValueError: unknown name (the message lists the registered ones) or bad options.
    """
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose one of {sorted(PERTURBATIONS)}")
    try:
        return PERTURBATIONS[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for perturbation {name!r}: {options} ({err})") from err


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    return rate


def _per_text(fn: Callable[[str, np.random.Generator], str]) -> Perturbation:
    def perturb(parts, rng, *, task_name, index):
        del task_name, index
        definition = fn(parts.definition, rng)
        example_inputs = tuple(fn(text, rng) for text in parts.example_inputs)
        return dataclasses.replace(parts, definition=definition, example_inputs=example_inputs)
    return perturb


@register_perturbation("drop")
def make_drop(rate: float = 0.2) -> Perturbation:
    """Word dropout with probability `rate` (the paper's perturbation)."""
    rate = _check_rate(rate)
    return _per_text(lambda text, rng: drop_words(text, rate, rng))


@register_perturbation("sentinel")
def make_sentinel(rate: float = 0.2) -> Perturbation:
    """Dropped-word spans become `<extra_id_i>` sentinels (numbered across the prompt)."""
    rate = _check_rate(rate)

    def perturb(parts, rng, *, task_name, index):
        del task_name, index
        definition, nxt = sentinel_words(parts.definition, rate, rng, 0)
        inputs = []
        for text in parts.example_inputs:
            text, nxt = sentinel_words(text, rate, rng, nxt)
            inputs.append(text)
        return dataclasses.replace(parts, definition=definition, example_inputs=tuple(inputs))
    return perturb


@register_perturbation("repeat")
def make_repeat(rate: float = 0.2) -> Perturbation:
    """Token repetition: each word written twice with probability `rate`."""
    rate = _check_rate(rate)
    return _per_text(lambda text, rng: repeat_words(text, rate, rng))


@register_perturbation("insert")
def make_insert(rate: float = 0.2, words: str | Sequence[str] | None = None) -> Perturbation:
    """Extraneous token insertion after each word with probability `rate`."""
    rate = _check_rate(rate)
    if words is None:
        vocab = DEFAULT_EXTRANEOUS_WORDS
    elif isinstance(words, str):
        vocab = tuple(w.strip() for w in words.split(",") if w.strip())
    else:
        vocab = tuple(words)
    if not vocab:
        raise ValueError("insert: `words` is empty")
    return _per_text(lambda text, rng: insert_words(text, rate, rng, vocab))


def read_paraphrases(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Reads user paraphrases: JSON list / JSONL of {"task": NAME, "paraphrases": [str, ...]}.

    A JSON object mapping task name -> list of paraphrases is accepted too.
    """
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    stripped = text.strip()
    records: Iterable[Any]
    if stripped.startswith("{") and "\n{" not in stripped:
        obj = json_text.loads(stripped)
        if "task" in obj:
            records = [obj]
        else:
            return {str(k): tuple(v) for k, v in obj.items()}
    elif stripped.startswith("["):
        records = json_text.loads(stripped)
    else:
        records = [json_text.loads(line) for line in text.splitlines() if line.strip()]
    out: dict[str, tuple[str, ...]] = {}
    for rec in records:
        if "task" not in rec or "paraphrases" not in rec:
            raise ValueError(f"{path}: each record needs 'task' and 'paraphrases': {rec}")
        if not rec["paraphrases"]:
            raise ValueError(f"{path}: task {rec['task']!r} has no paraphrases")
        out[rec["task"]] = tuple(str(p) for p in rec["paraphrases"])
    return out


@register_perturbation("paraphrase")
def make_paraphrase(file: str) -> Perturbation:
    """User paraphrases of the definition; perturbation k uses paraphrase k mod count."""
    table = read_paraphrases(file)

    def perturb(parts, rng, *, task_name, index):
        del rng
        if task_name not in table:
            raise KeyError(f"paraphrase file {file} has no paraphrases for task {task_name!r}")
        options = table[task_name]
        return dataclasses.replace(parts, definition=options[index % len(options)])
    return perturb


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """Turns ["rate=0.3", "words=a,b"] into {"rate": 0.3, "words": "a,b"} (numbers parsed)."""
    options: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"perturbation option {item!r} must look like KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            options[key.strip()] = float(value) if re.fullmatch(r"[-+0-9.eE]+", value) else value
        except ValueError:
            options[key.strip()] = value
    return options
