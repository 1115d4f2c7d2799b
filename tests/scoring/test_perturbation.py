"""Perturbations: the registry, each kind's behaviour, and seeded reproducibility."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from activeit_jax.scoring import perturbation as P


@dataclasses.dataclass(frozen=True)
class Parts:  # the fields the perturbations read (same names as data.prompts.PromptParts)
    definition: str
    example_inputs: tuple[str, ...]
    example_outputs: tuple[str, ...]
    instance_input: str


PARTS = Parts(definition="In this task you are given a sentence and must answer yes or no",
              example_inputs=("The cat sat on the mat today", "Dogs bark loudly at night"),
              example_outputs=("yes it is", "no it is not"),
              instance_input="Is the sky blue on a clear day")


def _draw(name, seed=0, task="task001_x", k=5, **options):
    fn = P.get_perturbation(name, **options)
    rng = P.task_rng(seed, task, "perturb")
    return [fn(PARTS, rng, task_name=task, index=i) for i in range(k)]


def test_stable_hash_is_process_independent():
    code = ("from activeit_jax.scoring.perturbation import stable_hash; "
            "print(stable_hash(3, 'task001_x', 'perturb'))")
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={"PYTHONHASHSEED": str(s)}).stdout.strip()
           for s in (1, 2)}
    assert out == {str(P.stable_hash(3, "task001_x", "perturb"))}
    assert P.stable_hash("a", "b") != P.stable_hash("ab")


def test_registry_lists_all_kinds_and_rejects_unknown():
    assert {"drop", "sentinel", "repeat", "insert", "paraphrase"} <= set(P.PERTURBATIONS)
    with pytest.raises(ValueError, match="unknown perturbation"):
        P.get_perturbation("nope")
    with pytest.raises(ValueError, match="rate"):
        P.get_perturbation("drop", rate=1.5)
    with pytest.raises(ValueError, match="bad options"):
        P.get_perturbation("drop", colour="red")


@pytest.mark.parametrize("name", ["drop", "sentinel", "repeat", "insert"])
def test_same_seed_same_perturbations_other_seed_differs(name):
    a = _draw(name, seed=0, rate=0.3)
    b = _draw(name, seed=0, rate=0.3)
    c = _draw(name, seed=1, rate=0.3)
    d = _draw(name, seed=0, task="task002_y", rate=0.3)
    assert a == b
    assert a != c and a != d
    for parts in a:  # outputs and the instance input are never touched
        assert parts.example_outputs == PARTS.example_outputs
        assert parts.instance_input == PARTS.instance_input


def test_drop_keeps_a_subsequence_of_words_at_about_the_rate():
    words = PARTS.definition.split()
    kept = 0
    for parts in _draw("drop", k=200, rate=0.2):
        out = parts.definition.split()
        it = iter(words)
        assert all(w in it for w in out)  # order-preserving subsequence
        kept += len(out)
        assert len(parts.example_inputs) == 2
    rate = 1 - kept / (200 * len(words))
    assert 0.15 < rate < 0.25


def test_drop_rate_zero_and_one_and_empty_text():
    rng = np.random.default_rng(0)
    text = "  keep\tmy   odd\nspacing "
    assert P.drop_words(text, 0.0, rng) == text  # unchanged, separators included
    assert P.drop_words(text, 1.0, rng) == ""
    assert P.drop_words("", 0.5, rng) == ""
    assert P.drop_words("   ", 0.5, rng) == "   "
    empty = Parts("", (), (), "x")
    fn = P.get_perturbation("drop", rate=0.2)
    assert fn(empty, rng, task_name="t", index=0) == empty


def test_drop_matches_the_mask_of_the_rng():
    text = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    out = P.drop_words(text, 0.5, np.random.default_rng(7))
    keep = np.random.default_rng(7).random(10) >= 0.5
    assert out == " ".join(f"w{i}" for i in range(10) if keep[i])


def test_sentinel_replaces_runs_with_numbered_sentinels():
    text = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    keep = np.random.default_rng(3).random(10) >= 0.5
    out, nxt = P.sentinel_words(text, 0.5, np.random.default_rng(3), first_sentinel=4)
    expected, i, sentinel = [], 0, 4
    while i < 10:
        if keep[i]:
            expected.append(f"w{i}")
            i += 1
        else:
            expected.append(f"<extra_id_{sentinel}>")
            sentinel += 1
            while i < 10 and not keep[i]:
                i += 1
    assert out.split() == expected and nxt == sentinel
    # Numbering continues from the definition into the example inputs.
    parts = _draw("sentinel", k=1, rate=0.5)[0]
    ids = [int(tok[len("<extra_id_"):-1]) for text in (parts.definition, *parts.example_inputs)
           for tok in text.split() if tok.startswith("<extra_id_")]
    assert ids == list(range(len(ids))) and ids


def test_repeat_and_insert_only_add_words():
    for parts in _draw("repeat", k=20, rate=0.3):
        out = parts.definition.split()
        assert [w for i, w in enumerate(out) if i == 0 or out[i - 1] != w] == \
            PARTS.definition.split()
    filler = ("zzfoo", "zzbar")
    for parts in _draw("insert", k=20, rate=0.3, words="zzfoo,zzbar"):
        out = parts.definition.split()
        assert [w for w in out if w not in filler] == PARTS.definition.split()
    inserted = sum(w in filler for p in _draw("insert", k=50, rate=0.3, words=list(filler))
                   for w in p.definition.split())
    assert inserted > 0


def test_paraphrase_from_file(tmp_path):
    path = tmp_path / "para.jsonl"
    path.write_text(json.dumps({"task": "task001_x", "paraphrases": ["P one", "P two"]}) + "\n"
                    + json.dumps({"task": "other", "paraphrases": ["Q"]}) + "\n")
    out = _draw("paraphrase", k=3, file=str(path))
    assert [p.definition for p in out] == ["P one", "P two", "P one"]
    assert all(p.example_inputs == PARTS.example_inputs for p in out)
    fn = P.get_perturbation("paraphrase", file=str(path))
    with pytest.raises(KeyError, match="task999"):
        fn(PARTS, P.task_rng(0, "task999", "perturb"), task_name="task999", index=0)
    as_json = tmp_path / "para.json"
    as_json.write_text(json.dumps({"task001_x": ["A"]}))
    assert P.read_paraphrases(as_json) == {"task001_x": ("A",)}


def test_parse_options():
    assert P.parse_options(["rate=0.3", "words=a,b"]) == {"rate": 0.3, "words": "a,b"}
    with pytest.raises(ValueError):
        P.parse_options(["rate"])
