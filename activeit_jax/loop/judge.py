"""Pairwise evaluation by an LLM judge (Self-Instruct), over an OpenAI-compatible chat API.

The protocol of the paper's Self-Instruct evaluation (Kung et al., 2023, Sec. 4 and appendix
A.1): for every item (an instruction, its input, and the answers of model A and model B) the
judge sees the two answers under neutral labels in a seeded random order
(`presentation_order`, the same for every judge) and is asked which one is better or whether
they are equal. The order is undone and the verdict recorded from model A's perspective: win,
lose or tie. A reply that fits none of the three (or names several without leading with one)
is kept as `verdict: "unparsed"` with its raw text, counts as Equal (a tie) for the winner,
and is shown in its own Error column of the report's tables. So a verdict depends on the
answers' content, never on their position. A run may use several judges (the paper: GPT-4
and ChatGPT), each with its own results file and tables in the report (`JudgeConfig.name`).

Prompt templates (`JudgeConfig.prompt_template`, `PROMPT_TEMPLATES`):

- "paper" (default): the paper's template (appendix A.1, Table 1) verbatim: the system line
  "You're a helpful AI system that is meant to imitate human judgment.", then the task text,
  `Instruction:`, `Input:`, `Now given two predictions:`, `(1): ...`, `(2): ...`, `Output:`.
  The judge replies "(1)", "(2)" or "Equal". The table prints the text; the line breaks
  (one field per line, a blank line after the task text) are our transcription of its layout.
- "ours": our wording, "Output (a)" / "Output (b)" / "Equal".

Internally the first answer shown is "a" and the second "b", whatever the template's labels.

Transport (`judge_client`): an OpenAI-compatible chat-completions client with bounded,
jittered retries that honour `Retry-After`, whole-request deadlines, no redirects, and an API
key that never reaches a log, a file or an exception; its names are re-exported here.

Concurrency: `run_pairwise` keeps up to `JudgeConfig.concurrency` requests in flight on a
bounded thread pool (the paper's Self-Instruct setting sends about 50,000 requests: one at a
time that is half a day to a day). Results are keyed by item id, so the order in which replies
arrive does not matter; only the calling thread writes the results file.

Results file (the judge's journal; JSONL, one line per item, appended and fsynced as each reply
arrives, so a killed run resumes where it stopped, re-asking only the items whose lines were not
written): `{"id", "order": "ab"|"ba", "verdict": "a"|"b"|"equal"|"unparsed", "winner":
"A"|"B"|"tie", "reply", "prompt_template"}`; "ab" means model A was shown first ((1), or
Output (a)); "reply" is the judge's raw text. A line without "prompt_template" was judged with
"ours" (written before the paper's template existed); a file is never continued with another
template.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import re
import time
from typing import Any, Callable, Mapping, Sequence

from activeit_jax.core import io_utils
from activeit_jax.loop.judge_client import (  # noqa: F401 (re-exported: one import site)
    MAX_REPLY_BYTES,
    PROMPT_TEMPLATE_NAMES,
    ChatClient,
    ChatCompleter,
    JudgeConfig,
    JudgeError,
    parse_retry_after,
)

log = logging.getLogger(__name__)

# The paper's template (Kung et al., 2023, appendix A.1, Table 1), verbatim.
PAPER_SYSTEM_PROMPT = "You're a helpful AI system that is meant to imitate human judgment."
PAPER_USER_TEMPLATE = (
    'Given an instruction, input, and two predictions "(1)" and "(2)", please tell me which '
    'prediction is most satisfying and correct. If (1) is better, output "(1)". If (2) is '
    'better, output "(2)". If both predictions are equally good or equally bad, you can output '
    '"Equal".\n'
    "\n"
    "Instruction: {instruction}\n"
    "Input: {input}\n"
    "Now given two predictions:\n"
    "(1): {first}\n"
    "(2): {second}\n"
    "Output:")

# Ours (the default before the paper's template was transcribed).
SYSTEM_PROMPT = ("You are a helpful, impartial assistant that compares the quality of two "
                 "responses to the same instruction.")

USER_TEMPLATE = """Compare two outputs written for the same instruction. Choose the output that \
follows the instruction better: correct, helpful, relevant and complete.

# Instruction
{instruction}

# Input
{input}

# Output (a)
{first}

# Output (b)
{second}

Which output is better? Reply with exactly one of: "Output (a)", "Output (b)" or "Equal" (if \
they are equally good or equally bad). Do not explain."""


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A judge prompt and how to read its replies.

    Attributes:
      system: the system message.
      user: the user message, with {instruction}, {input}, {first} and {second}.
      empty_input: what {input} shows for an item without input.
      verdict_re: finds verdicts in a reply: group 1 the first / second label, group 2 "equal".
      labels: group 1's text of the first and the second answer (e.g. "1", "2").
    """
    system: str
    user: str
    empty_input: str
    verdict_re: re.Pattern[str]
    labels: tuple[str, str]


_EQUAL = r"\b(equal)(?:ly)?\b"
PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    "paper": PromptTemplate(PAPER_SYSTEM_PROMPT, PAPER_USER_TEMPLATE, "",
                            re.compile(r"\(\s*([12])\s*\)|" + _EQUAL, re.IGNORECASE),
                            ("1", "2")),
    "ours": PromptTemplate(SYSTEM_PROMPT, USER_TEMPLATE, "(none)",
                           re.compile(r"output\s*\(\s*([ab])\s*\)|" + _EQUAL, re.IGNORECASE),
                           ("a", "b")),
}
assert tuple(PROMPT_TEMPLATES) == PROMPT_TEMPLATE_NAMES
DEFAULT_TEMPLATE = PROMPT_TEMPLATE_NAMES[0]
LEGACY_TEMPLATE = "ours"  # the template of a results line that does not name one


# ----------------------------------------------------------------------------- judging


@dataclasses.dataclass(frozen=True)
class JudgeItem:
    """One comparison: model A's and model B's answers to one instruction."""
    id: str
    instruction: str
    input: str
    output_a: str
    output_b: str


@dataclasses.dataclass(frozen=True)
class JudgeSummary:
    """Totals of one comparison from model A's perspective; the four counts are disjoint.

    Attributes:
      win, lose: items the judge gave to A / to B.
      tie: items the judge called "Equal".
      error: items whose reply was unparsed ("unrelated reply = Equal": each is a tie for the
        winner and `win_rate`, shown apart as the tables' Error column).
    """
    win: int
    tie: int
    lose: int
    error: int = 0

    @property
    def n(self) -> int:
        return self.win + self.tie + self.lose + self.error

    @property
    def win_rate(self) -> float:
        """Fraction of items A wins (0 when there are none)."""
        return self.win / self.n if self.n else 0.0


def parse_verdict(reply: str, template: str = DEFAULT_TEMPLATE) -> str:
    """Reads a judge reply to a prompt of `template`.

    A reply that mentions exactly one verdict (the paper's "(1)", "(2)", "Equal"; ours'
    "Output (a)", "Output (b)", "Equal"; "equally" counts as "Equal") gives it; one that
    mentions several gives the verdict it starts with (after quotes and markup); anything else
    is "unparsed" (counted as a tie, shown as an error).

    Returns:
      "a" (the first answer shown), "b" (the second), "equal" or "unparsed".
    """
    spec = PROMPT_TEMPLATES[template]
    first, _ = spec.labels
    matches = [(m.start(), "equal" if m.group(2) else "a" if m.group(1).lower() == first
                else "b") for m in spec.verdict_re.finditer(reply)]
    found = {verdict for _, verdict in matches}
    if len(found) == 1:
        return found.pop()
    if matches:
        lead = len(reply) - len(reply.lstrip(" \t\r\n\"'`*#:>-"))
        if matches[0][0] == lead:
            return matches[0][1]
    return "unparsed"


def presentation_order(seed: int, item_id: str) -> str:
    """"ab" (A shown as Output (a)) or "ba"; a stable function of (seed, item id)."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode("utf-8")).digest()
    return "ab" if digest[0] & 1 == 0 else "ba"


_JUDGE_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


def check_judge_name(name: str) -> str:
    """Returns `name` if it can label a judge in a file name, else raises ValueError."""
    if not _JUDGE_NAME_RE.match(name):
        raise ValueError(f"judge name {name!r}: use letters, digits, '.', '-' and '_' only "
                         f"(set JudgeConfig.name)")
    return name


def judge_name(config: JudgeConfig) -> str:
    """The label of a configured judge: `config.name`, else its model (checked)."""
    return check_judge_name(config.name or config.model)


def winner_of(verdict: str, order: str) -> str:
    """Maps a parsed verdict on the shown order back to "A", "B" or "tie"."""
    if verdict not in ("a", "b"):
        return "tie"
    first = "A" if order == "ab" else "B"
    second = "B" if order == "ab" else "A"
    return first if verdict == "a" else second


def build_messages(item: JudgeItem, order: str, template: str = DEFAULT_TEMPLATE
                   ) -> list[dict[str, str]]:
    """The chat messages for one item with its answers in `order`, in `template`
    (`PROMPT_TEMPLATES`)."""
    spec = PROMPT_TEMPLATES[template]
    first, second = ((item.output_a, item.output_b) if order == "ab"
                     else (item.output_b, item.output_a))
    user = spec.user.format(instruction=item.instruction, input=item.input or spec.empty_input,
                            first=first, second=second)
    return [{"role": "system", "content": spec.system}, {"role": "user", "content": user}]


def summarize(records: Sequence[Mapping[str, Any]]) -> JudgeSummary:
    """Win / tie / lose / error counts of result records (the last record of a repeated id
    counts; an "unparsed" verdict is an error, not a tie)."""
    last = {str(r["id"]): r for r in records}
    winners = [r["winner"] for r in last.values()]
    errors = sum(r.get("verdict") == "unparsed" for r in last.values())
    return JudgeSummary(win=winners.count("A"), tie=winners.count("tie") - errors,
                        lose=winners.count("B"), error=errors)


def unparsed_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records (last of each id) whose reply was unparsed, with their raw "reply"."""
    last = {str(r["id"]): r for r in records}
    return [r for r in last.values() if r.get("verdict") == "unparsed"]


def summarize_results(path: str | os.PathLike) -> JudgeSummary:
    """`summarize` of a results file (a torn last line is ignored)."""
    return summarize(io_utils.read_jsonl(path))


def _judge_one(client: ChatCompleter, item: JudgeItem, seed: int, template: str
               ) -> dict[str, Any]:
    """The results record of one item (asks the judge)."""
    order = presentation_order(seed, item.id)
    reply = client.complete(build_messages(item, order, template))
    verdict = parse_verdict(reply, template)
    return {"id": item.id, "order": order, "verdict": verdict,
            "winner": winner_of(verdict, order), "reply": reply, "prompt_template": template}


def _template_of(client: ChatCompleter, template: str | None) -> str:
    if template is None:
        config = getattr(client, "config", None)
        template = config.prompt_template if isinstance(config, JudgeConfig) \
            else DEFAULT_TEMPLATE
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: "
                         f"{list(PROMPT_TEMPLATES)}")
    return template


def _concurrency_of(client: ChatCompleter, concurrency: int | None) -> int:
    if concurrency is None:
        config = getattr(client, "config", None)
        concurrency = getattr(config, "concurrency", 1) if isinstance(config, JudgeConfig) \
            else 1
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    return concurrency


def run_pairwise(items: Sequence[JudgeItem], client: ChatCompleter,
                 results_path: str | os.PathLike, seed: int = 0,
                 concurrency: int | None = None, template: str | None = None
                 ) -> JudgeSummary:
    """Judges every item not yet in `results_path`, appending one line per item.

    Up to `concurrency` requests are in flight at once (a bounded pool: the next item is
    submitted only when one finishes); each finished item's line is appended (and fsynced) by
    the calling thread alone, in the order replies arrive. When a request fails for good, the
    items not yet started are dropped, those in flight are finished and written, and the first
    error is raised: a rerun asks only for what is missing.

    Args:
      items: the comparisons; ids must be unique.
      client: e.g. a `ChatClient` (shared by the worker threads, so thread-safe).
      results_path: the resumable JSONL results file.
      seed: seeds the presentation order (`presentation_order`).
      concurrency: requests in flight; None = the client's `config.concurrency` (a
        `ChatClient`), else 1.
      template: the prompt template (`PROMPT_TEMPLATES`); None = the client's
        `config.prompt_template` (a `ChatClient`), else "paper".

    Returns:
      The totals over `items` (from model A's perspective).

    Raises:
      JudgeError: a request failed for good (after the finished items were written), or the
        results file holds verdicts judged with another prompt template.
    """
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    workers = _concurrency_of(client, concurrency)
    template = _template_of(client, template)
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    io_utils.truncate_partial_tail(results_path)
    done = {str(r["id"]): r for r in io_utils.read_jsonl(results_path)}
    used = sorted({str(r.get("prompt_template", LEGACY_TEMPLATE)) for r in done.values()})
    if used and used != [template]:
        raise JudgeError(f"{os.fspath(results_path)} holds verdicts judged with the {used} "
                         f"prompt template, not {template!r}: set JudgeConfig.prompt_template "
                         f"= {used[0]!r} to continue it, or move the file away to judge again")
    todo = [item for item in items if item.id not in done]
    if done:
        log.info("judge: %d item(s) already in %s, %d to go", len(items) - len(todo),
                 os.fspath(results_path), len(todo))
    progress = _Progress(len(todo), os.fspath(results_path))

    def record(result: dict[str, Any]) -> None:
        io_utils.append_jsonl_line(results_path, result)
        done[result["id"]] = result
        progress.step()

    if workers == 1 or len(todo) <= 1:
        for item in todo:
            record(_judge_one(client, item, seed, template))
    else:
        _judge_concurrently(todo, client, seed, template, workers, record)
    return summarize([done[i] for i in ids])


class _Progress:
    """A log line every 10% of the items (and at the end) of a long judging run."""

    def __init__(self, total: int, path: str):
        self.total, self.path, self.count = total, path, 0
        self.started = time.monotonic()
        self.every = max(1, total // 10)

    def step(self) -> None:
        self.count += 1
        if self.total >= 20 and (self.count % self.every == 0 or self.count == self.total):
            rate = self.count / max(time.monotonic() - self.started, 1e-9)
            log.info("judge: %d/%d item(s) judged into %s (%.1f/s)", self.count, self.total,
                     self.path, rate)


def _judge_concurrently(todo: Sequence[JudgeItem], client: ChatCompleter, seed: int,
                        template: str, workers: int,
                        record: Callable[[dict[str, Any]], None]) -> None:
    """Runs `_judge_one` over `todo` on `workers` threads; `record` is called on this thread
    for every finished item. The first failure stops new submissions and is raised once the
    requests in flight have finished (and been recorded)."""
    pending = iter(todo)
    failure: BaseException | None = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                               thread_name_prefix="judge") as pool:
        running = set()
        for item in pending:
            running.add(pool.submit(_judge_one, client, item, seed, template))
            if len(running) >= workers:
                break
        while running:
            finished, running = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                error = future.exception()
                if error is not None:
                    failure = failure or error
                    continue
                record(future.result())
            if failure is None:
                for item in pending:
                    running.add(pool.submit(_judge_one, client, item, seed, template))
                    if len(running) >= workers:
                        break
    if failure is not None:
        raise failure
