"""LLM-judge pairwise evaluation against a local fake OpenAI-compatible server (127.0.0.1)."""
from __future__ import annotations

import json
import logging
import re

import pytest

from activeit_jax.core.errors import ConfigError
from activeit_jax.loop import judge
from activeit_jax.loop.judge import ChatClient, JudgeConfig, JudgeError, JudgeItem
from tests.fake_openai import FakeServer, reply_for, shown_answers

KEY = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture
def server():
    fake = FakeServer(KEY)
    yield fake
    fake.close()


@pytest.fixture
def sleeps():
    return []


def _client(server, sleeps, key=KEY, **overrides):
    settings = dict(base_url=server.base_url, model="judge-model", max_retries=3,
                    backoff_s=0.5, timeout_s=5.0, jitter=0.0)  # exact waits to compare
    config = JudgeConfig(**{**settings, **overrides})
    return ChatClient(config, api_key=key, sleep=sleeps.append)


def _items(n, good_is_a):
    return [JudgeItem(id=f"item{i}", instruction=f"Do thing {i}.", input="",
                      output_a=("GOOD" if good_is_a(i) else "bad") + f" answer A{i}",
                      output_b=("bad" if good_is_a(i) else "GOOD") + f" answer B{i}")
            for i in range(n)]


def _pick_good(prompt):
    """A judge that always prefers the output containing GOOD."""
    return reply_for(prompt, "first" if "GOOD" in shown_answers(prompt)[0] else "second")


def _assert_no_key(*texts):
    for text in texts:
        assert KEY not in text


@pytest.mark.parametrize("reply,verdict", [
    ("Output (a)", "a"), ("Output (b)", "b"), ("output (B).", "b"), ("Equal", "equal"),
    ('"Output (a)"', "a"), ("**Output (b)** is better.", "b"),
    ("Both are equally good.", "equal"), ("I prefer Output(a) here.", "a"),
    ("Output (a) is better than Output (b).", "a"),
    ("Output (b) is better than Output (a).", "b"),
    ("The capital of France is Paris.", "unparsed"), ("", "unparsed"),
    ("Either Output (a) or Output (b)", "unparsed"), ("(a)", "unparsed"),
])
def test_parse_verdict(reply, verdict):
    assert judge.parse_verdict(reply, "ours") == verdict


@pytest.mark.parametrize("reply,verdict", [
    ("(1)", "a"), ("(2)", "b"), ('"(2)"', "b"), ("Equal", "equal"), ("Output: (1)", "a"),
    ("( 2 ).", "b"), ("(1) is better than (2).", "a"), ("Both are equally bad.", "equal"),
    ("Output (a)", "unparsed"), ("1", "unparsed"), ("Either (1) or (2)", "unparsed"),
    ("The capital of France is Paris.", "unparsed"),
])
def test_parse_verdict_of_the_paper_template(reply, verdict):
    assert judge.parse_verdict(reply) == verdict == judge.parse_verdict(reply, "paper")


def test_default_prompt_is_the_papers_template_verbatim():
    # Kung et al. (2023), appendix A.1, Table 1, filled in for one fixed item shown in the
    # order "ba" (model B's answer first).
    item = JudgeItem("x", "Translate the sentence to English.", "hola mundo", "hello world",
                     "hi world")
    expected_system = "You're a helpful AI system that is meant to imitate human judgment."
    expected_user = (
        'Given an instruction, input, and two predictions "(1)" and "(2)", please tell me '
        'which prediction is most satisfying and correct. If (1) is better, output "(1)". '
        'If (2) is better, output "(2)". If both predictions are equally good or equally '
        'bad, you can output "Equal".\n\n'
        "Instruction: Translate the sentence to English.\n"
        "Input: hola mundo\n"
        "Now given two predictions:\n"
        "(1): hi world\n"
        "(2): hello world\n"
        "Output:")
    messages = judge.build_messages(item, "ba")
    assert messages == [{"role": "system", "content": expected_system},
                        {"role": "user", "content": expected_user}]
    assert JudgeConfig().prompt_template == "paper"
    assert judge.build_messages(item, "ba", "ours")[0]["content"] == judge.SYSTEM_PROMPT
    with pytest.raises(ConfigError, match="prompt_template must be one of"):
        JudgeConfig(prompt_template="mine")


def test_winner_mapping_undoes_the_order():
    assert judge.winner_of("a", "ab") == "A" and judge.winner_of("b", "ab") == "B"
    assert judge.winner_of("a", "ba") == "B" and judge.winner_of("b", "ba") == "A"
    assert judge.winner_of("equal", "ba") == "tie" == judge.winner_of("unparsed", "ab")


def test_order_is_seeded_random_and_undone(server, sleeps, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server.default = _pick_good
    items = _items(16, good_is_a=lambda i: i % 4 != 0)  # A better on 12 of 16
    client = _client(server, sleeps)
    summary = judge.run_pairwise(items, client, tmp_path / "res.jsonl", seed=3)
    assert (summary.win, summary.tie, summary.lose) == (12, 0, 4)
    records = [json.loads(line) for line in open(tmp_path / "res.jsonl")]
    orders = [r["order"] for r in records]
    assert {"ab", "ba"} == set(orders)  # both orders occur
    assert orders == [judge.presentation_order(3, it.id) for it in items]
    for request, record, item in zip(server.requests, records, items):
        prompt = request["body"]["messages"][-1]["content"]
        shown_first = shown_answers(prompt)[0]
        expected_first = item.output_a if record["order"] == "ab" else item.output_b
        assert expected_first in shown_first
        assert request["body"]["model"] == "judge-model"
    assert [judge.presentation_order(4, it.id) for it in items] != orders  # seed matters
    _assert_no_key(caplog.text, (tmp_path / "res.jsonl").read_text(), repr(client))


def test_unrelated_replies_count_as_ties_and_errors(server, sleeps, tmp_path):
    server.script = [("reply", "(1)"), ("reply", "lorem ipsum"), ("reply", "Equal")]
    items = _items(3, good_is_a=lambda i: True)
    summary = judge.run_pairwise(items, _client(server, sleeps), tmp_path / "r.jsonl", seed=0)
    orders = [judge.presentation_order(0, it.id) for it in items]
    first = judge.winner_of("a", orders[0])
    # the unrelated reply: a tie for the winner, counted in the Error column, not as a Tie
    assert summary.n == 3 and (summary.tie, summary.error) == (1, 1)
    assert (summary.win, summary.lose) == ((1, 0) if first == "A" else (0, 1))
    records = [json.loads(line) for line in open(tmp_path / "r.jsonl")]
    assert [r["verdict"] for r in records] == ["a", "unparsed", "equal"]
    assert [r["winner"] for r in records][1:] == ["tie", "tie"]
    assert {r["prompt_template"] for r in records} == {"paper"}
    assert [(r["id"], r["reply"]) for r in judge.unparsed_records(records)] == [
        ("item1", "lorem ipsum")]


def test_a_results_file_is_never_continued_with_another_template(server, sleeps, tmp_path):
    server.default = _pick_good
    items = _items(4, good_is_a=lambda i: True)
    path = tmp_path / "r.jsonl"
    judge.run_pairwise(items[:2], _client(server, sleeps, prompt_template="ours"), path)
    with pytest.raises(JudgeError, match="'ours'.* prompt template, not 'paper'"):
        judge.run_pairwise(items, _client(server, sleeps), path)
    summary = judge.run_pairwise(items, _client(server, sleeps, prompt_template="ours"), path)
    assert (summary.win, summary.n) == (4, 4)
    # a file written before the template was recorded was judged with ours
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(json.dumps({"id": "item0", "order": "ab", "verdict": "a", "winner": "A",
                                  "reply": "Output (a)"}) + "\n")
    with pytest.raises(JudgeError, match="'ours'"):
        judge.run_pairwise(items, _client(server, sleeps), legacy)


def test_retries_with_backoff_on_5xx(server, sleeps, caplog):
    caplog.set_level(logging.DEBUG)
    server.script = [("status", 503), ("status", 500), ("status", 429), ("reply", "Equal")]
    client = _client(server, sleeps)
    assert client.complete([{"role": "user", "content": "hi"}]) == "Equal"
    assert len(server.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)
    assert "retry 1/3" in caplog.text
    _assert_no_key(caplog.text)


def test_gives_up_after_max_retries(server, sleeps, caplog):
    caplog.set_level(logging.DEBUG)
    server.script = [("status", 502)] * 10
    with pytest.raises(JudgeError, match="HTTP 502.*gave up after 4") as info:
        _client(server, sleeps).complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 4 and len(sleeps) == 3
    assert info.value.__cause__ is None and info.value.__context__ is None
    _assert_no_key(caplog.text, str(info.value))


def test_client_error_is_not_retried(server, sleeps):
    server.script = [("status", 400)]
    with pytest.raises(JudgeError, match="HTTP 400"):
        _client(server, sleeps).complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1 and sleeps == []


def test_timeout_is_retried(server, sleeps):
    server.script = [("sleep", 1.0), ("reply", "Output (b)")]
    client = _client(server, sleeps, timeout_s=0.2)
    assert client.complete([{"role": "user", "content": "hi"}]) == "Output (b)"
    assert sleeps == [0.5]


def test_key_never_leaks(server, sleeps, tmp_path, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    # A wrong key: the server echoes the sent header (containing the key) in its error body.
    wrong = "sk-wrong-ANOTHER-SECRET-987"
    client = _client(server, sleeps, key=wrong)
    with pytest.raises(JudgeError) as info:
        judge.run_pairwise(_items(1, lambda i: True), client, tmp_path / "r.jsonl")
    assert "HTTP 401" in str(info.value) and "<redacted>" in str(info.value)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert wrong not in repr(client) and wrong not in str(vars(client))
    assert info.value.__cause__ is None
    # The environment path: key read from the variable named in the config.
    monkeypatch.setenv("MY_JUDGE_KEY", KEY)
    env_client = ChatClient(JudgeConfig(base_url=server.base_url, api_key_env="MY_JUDGE_KEY",
                                        max_retries=0), sleep=sleeps.append)
    server.default = lambda prompt: "(1)"
    judge.run_pairwise(_items(2, lambda i: True), env_client, tmp_path / "ok.jsonl")
    assert server.requests[-1]["auth"] == f"Bearer {KEY}"
    # Connection refused (server gone): retried, then an error without the key.
    server.close()
    with pytest.raises(JudgeError, match="cannot reach|Error") as refused:
        env_client.complete([{"role": "user", "content": "hi"}])
    out = capsys.readouterr()
    texts = [caplog.text, out.out, out.err, str(refused.value), repr(env_client),
             (tmp_path / "ok.jsonl").read_text()]
    for text in texts:
        assert KEY not in text and wrong not in text


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("ABSENT_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeError, match="ABSENT_JUDGE_KEY"):
        ChatClient(JudgeConfig(api_key_env="ABSENT_JUDGE_KEY"))


class _FlakyClient:
    """Answers '(1)' (the first answer shown) and raises after `fail_after` calls."""

    def __init__(self, fail_after=None):
        self.calls = 0
        self.fail_after = fail_after

    def complete(self, messages):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise JudgeError("boom")
        self.calls += 1
        return "(1)"


def test_results_file_resumes(tmp_path):
    items = _items(5, lambda i: True)
    path = tmp_path / "results.jsonl"
    with pytest.raises(JudgeError):
        judge.run_pairwise(items, _FlakyClient(fail_after=3), path, seed=1)
    assert len(path.read_text().splitlines()) == 3
    with open(path, "a") as handle:  # a torn write from a killed process
        handle.write('{"id": "item3", "ord')
    client = _FlakyClient()
    summary = judge.run_pairwise(items, client, path, seed=1)
    assert client.calls == 2 and summary.n == 5
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"item{i}" for i in range(5)]
    expected_wins = sum(judge.winner_of("a", judge.presentation_order(1, it.id)) == "A"
                        for it in items)
    assert summary.win == expected_wins and summary.win + summary.lose == 5
    assert judge.summarize_results(path) == summary
    # Nothing left to do: no calls.
    again = _FlakyClient(fail_after=0)
    assert judge.run_pairwise(items, again, path, seed=1) == summary


def test_duplicate_ids_rejected(tmp_path):
    item = _items(1, lambda i: True)[0]
    with pytest.raises(ValueError, match="unique"):
        judge.run_pairwise([item, item], _FlakyClient(), tmp_path / "r.jsonl")


def test_messages_show_both_answers_in_order():
    item = JudgeItem("x", "Translate.", "hola", "hello", "hi")
    ab = judge.build_messages(item, "ab", "ours")[-1]["content"]
    ba = judge.build_messages(item, "ba", "ours")[-1]["content"]
    assert re.search(r"# Output \(a\)\nhello\n\n# Output \(b\)\nhi", ab)
    assert re.search(r"# Output \(a\)\nhi\n\n# Output \(b\)\nhello", ba)
    assert "hola" in ab and "Translate." in ab
    paper = judge.build_messages(item, "ab")[-1]["content"]
    assert paper.endswith("(1): hello\n(2): hi\nOutput:") and shown_answers(paper) == (
        "hello", "hi")


def _content_judge(prompt):
    """Prefers the answer that says GOOD, wherever it is shown; "Equal" when neither or both
    do; an off-protocol reply when an answer says WEIRD."""
    shown_a, shown_b = shown_answers(prompt)
    if "WEIRD" in shown_a + shown_b:
        return "Hard to say, they differ in style."
    if ("GOOD" in shown_a) == ("GOOD" in shown_b):
        return "Equal"
    return reply_for(prompt, "first" if "GOOD" in shown_a else "second")


def test_verdicts_follow_content_not_position(server, sleeps, tmp_path):
    # The paper's protocol: neutral labels, seeded random order, "equal" allowed, off-protocol
    # replies count as equal. Then swapping A and B (or the seed) must only flip the winner.
    contents = [("GOOD one", "bad one"), ("bad two", "GOOD two"), ("same", "same too"),
                ("GOOD x", "GOOD y"), ("WEIRD a", "fine b"), ("bad z", "GOOD z")] * 3
    items = [JudgeItem(f"i{k}", f"Task {k}.", "", a, b) for k, (a, b) in enumerate(contents)]
    swapped = [JudgeItem(it.id, it.instruction, it.input, it.output_b, it.output_a)
               for it in items]
    server.default = _content_judge
    client = _client(server, sleeps)
    winners = {}
    for seed in (0, 5):
        for name, batch in (("as_is", items), ("swapped", swapped)):
            path = tmp_path / f"{name}_{seed}.jsonl"
            judge.run_pairwise(batch, client, path, seed=seed)
            winners[name, seed] = [r["winner"] for r in map(json.loads, open(path))]
    by_content = ["A", "B", "tie", "tie", "tie", "B"] * 3  # hand-read from `contents`
    flip = {"A": "B", "B": "A", "tie": "tie"}
    for seed in (0, 5):
        assert winners["as_is", seed] == by_content
        assert winners["swapped", seed] == [flip[w] for w in by_content]
    orders = [judge.presentation_order(0, it.id) for it in items]
    assert {"ab", "ba"} == set(orders)  # both positions were used for the preferred answer
    assert orders != [judge.presentation_order(5, it.id) for it in items]
    verdicts = [r["verdict"] for r in map(json.loads, open(tmp_path / "as_is_0.jsonl"))]
    assert verdicts[4] == "unparsed" and verdicts[2] == "equal"


def test_judge_names_label_files_and_reject_odd_characters():
    assert judge.judge_name(JudgeConfig(model="gpt-4")) == "gpt-4"
    assert judge.judge_name(JudgeConfig(model="gpt-4", name="GPT4_main")) == "GPT4_main"
    for bad in ("a/b", ".hidden", "gpt 4", ""):
        with pytest.raises(ValueError, match="judge name"):
            judge.check_judge_name(bad)
