"""The Self-Instruct setting of the loop: output-length chunk quotas, the judge stage, configs.

The loop tests use deterministic stand-in stages (as tests/test_active_loop.py does) over the
real data layer (`prepare_self_instruct` on the bundled Alpaca sample), the real selection,
the real judge client against a fake OpenAI-compatible server on 127.0.0.1, and the real
reports. The e2e test runs configs/demo_self_instruct.gin through `activeit-jax run` (tiny
LLaMA, real trainer, evaluator and decoder-only scorer), judge stage included.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from activeit_jax import layout
from activeit_jax.core import io_utils
from activeit_jax.data import prepared as prepared_lib, splits
from activeit_jax.loop import active_loop, judge as judge_lib, selection
from activeit_jax.reporting import render as reports
from tests import loop_testlib
from tests.conftest import REPO_ROOT
from tests.fake_openai import FakeServer, reply_for, shown_answers

KEY = "sk-test-judge-key-0123456789"
NUM_TEST = 10
NUM_INITIAL, NUM_VALIDATION, PER_ITERATION = 26, 13, 26


@pytest.fixture(scope="module")
def test_file(tmp_path_factory, sample_data):
    """The first NUM_TEST user-oriented instructions (the judge's and evaluator's test set)."""
    path = tmp_path_factory.mktemp("si") / "user_oriented_small.jsonl"
    with open(sample_data / "self_instruct" / "user_oriented_instructions.jsonl",
              encoding="utf-8") as handle:
        lines = handle.readlines()[:NUM_TEST]
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


class FakeStages(loop_testlib.FakeStagesBase):
    """The stand-in stages on a Self-Instruct file (with held-out validation tasks)."""

    def __init__(self, si_file: str, test_file: str):
        super().__init__()
        self.si_file, self.test_file = si_file, test_file

    def prepare(self, seed, out_dir):
        from activeit_jax.loop import stages as loop_stages
        if os.path.exists(os.path.join(out_dir, "splits.json")):
            return prepared_lib.load_prepared(out_dir)
        data = prepared_lib.prepare_self_instruct(
            self.si_file, test_path=self.test_file, seed=seed,
            quotas=splits.SelfInstructQuotas(NUM_INITIAL))
        data = loop_stages.hold_out_validation(data, NUM_VALIDATION, seed)
        prepared_lib.write_prepared(data, out_dir)
        return prepared_lib.load_prepared(out_dir)


CONFIG = active_loop.LoopConfig(
    strategies=("prompt_uncertainty", "random", "high_perplexity"), seeds=(0,),
    num_iterations=3, tasks_per_iteration=PER_ITERATION, quota="self_instruct")


def _prefer_longer_string(prompt: str) -> str:
    """The fake judge's rule: the larger answer string wins (deterministic, order-aware)."""
    a, b = shown_answers(prompt)
    return reply_for(prompt, "first" if a > b else "second" if b > a else "equal")


@pytest.fixture
def fake_judge():
    server = FakeServer(KEY)
    server.default = _prefer_longer_string
    yield server
    server.close()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, sample_data, test_file):
    run_dir = str(tmp_path_factory.mktemp("si_loop") / "run")
    fake = FakeStages(str(sample_data / "self_instruct" / "alpaca_sample.json"), test_file)
    active_loop.run_loop(run_dir, CONFIG, fake.stages())
    return run_dir, fake


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def check_chunk_quotas(run_dir, strategies, num_iterations, per_iteration):
    """Every selection of every strategy took, from each output-length chunk of the remaining
    pool, its largest-remainder share of `per_iteration` -- and only tasks of that chunk."""
    prepared = prepared_lib.load_prepared(os.path.join(run_dir, "seed_0", "data"))
    chunk_of = {n: c for c, names in enumerate(prepared.split.chunks) for n in names}
    assert set(chunk_of) == set(prepared.split.pool)
    checked = 0
    for strategy in strategies:
        remaining = list(prepared.split.pool)
        for iteration in range(1, num_iterations):
            chosen = _read_json(os.path.join(layout.iteration_dir(
                run_dir, 0, strategy, iteration), layout.SELECTED_FILE))
            sizes = {}
            for name in remaining:
                sizes[chunk_of[name]] = sizes.get(chunk_of[name], 0) + 1
            chunks = sorted(sizes)
            targets = selection.largest_remainder(per_iteration, [sizes[c] for c in chunks])
            assert chosen["quota"] == "self_instruct"
            assert [g["group"] for g in chosen["groups"]] == [f"chunk_{c}" for c in chunks]
            assert [g["target"] for g in chosen["groups"]] == targets
            assert all(g["taken"] == g["target"] and g["shortfall"] == 0
                       for g in chosen["groups"])
            by_chunk = {}
            for name in chosen["tasks"]:
                assert name in remaining, "selected twice or not from the pool"
                by_chunk[chunk_of[name]] = by_chunk.get(chunk_of[name], 0) + 1
            assert by_chunk == {c: t for c, t in zip(chunks, targets) if t}
            assert len(chosen["tasks"]) == per_iteration
            remaining = [n for n in remaining if n not in set(chosen["tasks"])]
            checked += 1
    return checked


def test_split_holds_out_validation_and_keeps_test_for_evaluation(full_run, test_file):
    run_dir, fake = full_run
    prepared = prepared_lib.load_prepared(os.path.join(run_dir, "seed_0", "data"))
    split = prepared.split
    assert split.kind == "self_instruct"
    assert (len(split.initial), len(split.validation)) == (NUM_INITIAL, NUM_VALIDATION)
    assert len(split.pool) == 300 - NUM_INITIAL - NUM_VALIDATION
    assert not set(split.validation) & (set(split.pool) | set(split.initial))
    assert sorted(n for chunk in split.chunks for n in chunk) == sorted(split.pool)
    assert len(split.test) == NUM_TEST
    # The test tasks are evaluated every iteration, never trained on or scored.
    trained = set()
    for _, directory in fake.calls:
        path = os.path.join(directory, "best", "tasks.json")
        if os.path.exists(path):
            trained |= set(_read_json(path))
    assert trained and not trained & set(split.test)
    per_task = io_utils.read_jsonl(os.path.join(run_dir, "seed_0", "iter_0",
                                                layout.PER_TASK_FILE))
    assert {r["split"] for r in per_task} == {"val", "test"}
    assert sum(r["split"] == "test" for r in per_task) == NUM_TEST
    scored = io_utils.read_jsonl(os.path.join(run_dir, "seed_0", "iter_0", "scores.jsonl"))
    assert {r["task"] for r in scored} == set(split.pool)


def test_chunk_quota_holds_in_every_selection(full_run):
    run_dir, _ = full_run
    assert check_chunk_quotas(run_dir, CONFIG.strategies, CONFIG.num_iterations,
                              PER_ITERATION) == 6


def test_judge_compares_each_strategy_with_random_and_resumes(full_run, fake_judge,
                                                              monkeypatch):
    run_dir, fake = full_run
    monkeypatch.setenv("ACTIVEIT_TEST_JUDGE_KEY", KEY)
    client = judge_lib.ChatClient(judge_lib.JudgeConfig(
        base_url=fake_judge.base_url, model="fake", api_key_env="ACTIVEIT_TEST_JUDGE_KEY",
        max_retries=0))
    evaluations = len([c for c in fake.calls if c[0] == "evaluate"])
    results = active_loop.run_judge(run_dir, CONFIG, fake.stages(), client)
    assert [(r["strategy"], r["iteration"]) for r in results] == [
        ("prompt_uncertainty", 1), ("prompt_uncertainty", 2), ("high_perplexity", 1),
        ("high_perplexity", 2)]
    assert len([c for c in fake.calls if c[0] == "evaluate"]) == evaluations  # stored ones
    assert len(fake_judge.requests) == 4 * NUM_TEST
    prepared = prepared_lib.load_prepared(os.path.join(run_dir, "seed_0", "data"))
    test_ids = [i.id for t in prepared.role_tasks("test") for i in t.instances]
    for r in results:
        it_dir = layout.iteration_dir(run_dir, 0, r["strategy"], r["iteration"])
        ref_dir = layout.iteration_dir(run_dir, 0, "random", r["iteration"])
        assert r["path"] == os.path.join(it_dir, "judge_vs_random.jsonl")
        ours = {p["id"]: p["prediction"] for p in io_utils.read_jsonl(
            os.path.join(it_dir, "eval_test", "predictions.jsonl"))}
        theirs = {p["id"]: p["prediction"] for p in io_utils.read_jsonl(
            os.path.join(ref_dir, "eval_test", "predictions.jsonl"))}
        lines = io_utils.read_jsonl(r["path"])
        assert [line["id"] for line in lines] == test_ids
        for line in lines:  # A is the strategy's model, B random's at the same iteration
            i = line["id"]
            expected = "A" if ours[i] > theirs[i] else "B" if ours[i] < theirs[i] else "tie"
            assert line["winner"] == expected
        assert (r["win"], r["tie"], r["lose"]) == (
            sum(line["winner"] == "A" for line in lines),
            sum(line["winner"] == "tie" for line in lines),
            sum(line["winner"] == "B" for line in lines))
    assert not any(name.startswith("judge_vs") for name in os.listdir(
        os.path.join(run_dir, "seed_0", "iter_0")))
    # Resumed: nothing is asked again, the same totals come back.
    again = active_loop.run_judge(run_dir, CONFIG, fake.stages(), client)
    assert again == results and len(fake_judge.requests) == 4 * NUM_TEST
    # The report summarises the files.
    report = reports.write_report(run_dir)
    with open(report["report.html"], encoding="utf-8") as handle:
        html = handle.read()
    assert "Pairwise judge" in html and html.count("<td>random</td>") >= 4


def _prefer_shorter_string(prompt: str) -> str:
    """A second judge with the opposite taste."""
    a, b = shown_answers(prompt)
    return reply_for(prompt, "first" if a < b else "second" if b < a else "equal")


def test_several_judges_each_get_their_own_files_and_table(full_run, tmp_path):
    run_dir, fake = full_run
    servers = {"gpt-4": FakeServer(KEY), "gpt-3.5-turbo": FakeServer(KEY)}
    servers["gpt-4"].default = _prefer_longer_string
    servers["gpt-3.5-turbo"].default = _prefer_shorter_string
    try:
        clients = {name: judge_lib.ChatClient(judge_lib.JudgeConfig(
            base_url=server.base_url, model=name, max_retries=0), api_key=KEY)
            for name, server in servers.items()}
        results = active_loop.run_judge(run_dir, CONFIG, fake.stages(), clients)
    finally:
        for server in servers.values():
            server.close()
    assert [(r["judge"], r["strategy"], r["iteration"]) for r in results] == [
        (j, s, i) for s in ("prompt_uncertainty", "high_perplexity") for i in (1, 2)
        for j in ("gpt-4", "gpt-3.5-turbo")]
    for first, second in zip(results[::2], results[1::2]):  # opposite tastes, same items
        assert first["path"].endswith("judge_vs_random.gpt-4.jsonl")
        assert second["path"].endswith("judge_vs_random.gpt-3.5-turbo.jsonl")
        assert (first["win"], first["tie"], first["lose"]) == (
            second["lose"], second["tie"], second["win"])
        assert first["n_items"] == NUM_TEST
    report = reports.write_report(run_dir, str(tmp_path / "report"))
    with open(report["report.html"], encoding="utf-8") as handle:
        html = handle.read()
    with open(report["results.md"], encoding="utf-8") as handle:
        markdown = handle.read()
    for name in servers:
        assert f"Pairwise judge: {name}, seed 0 (strategy vs. reference)" in html
        assert f"## Pairwise judge: {name}, seed 0 (strategy vs. reference)" in markdown
    first = results[0]
    row = (f"| prompt_uncertainty | 1 | random | {NUM_TEST} | {first['win']} | {first['tie']} "
           f"| {first['lose']} | 0 |")
    assert row in markdown.split("## Pairwise judge: gpt-4")[1]


def test_fully_trained_is_judged_against_random_at_every_iteration_per_seed(
        tmp_path, sample_data, test_file, fake_judge):
    """The paper compares the Fully Trained model with Random at every training-set size, and
    its tables are one run each: two seeds give two tables and their mean, never a sum."""
    config = active_loop.LoopConfig(
        strategies=("random", "fully_trained", "prompt_uncertainty"), seeds=(0, 1),
        num_iterations=3, tasks_per_iteration=PER_ITERATION, quota="self_instruct")
    fake = FakeStages(str(sample_data / "self_instruct" / "alpaca_sample.json"), test_file)
    run_dir = str(tmp_path / "run")
    active_loop.run_loop(run_dir, config, fake.stages())
    fake_judge.script = [("reply", "I cannot decide.")]  # one unparsed reply, seed 0
    client = judge_lib.ChatClient(judge_lib.JudgeConfig(base_url=fake_judge.base_url,
                                                        max_retries=0), api_key=KEY)
    results = active_loop.run_judge(run_dir, config, fake.stages(), client)
    assert [(r["seed"], r["strategy"], r["iteration"], r["reference_iteration"])
            for r in results] == [
        (seed, strategy, i, j) for seed in (0, 1)
        for strategy, i, j in (("fully_trained", 1, 1), ("fully_trained", 1, 2),
                               ("prompt_uncertainty", 1, 1), ("prompt_uncertainty", 2, 2))]
    for seed in (0, 1):
        full = layout.iteration_dir(run_dir, seed, "fully_trained", 1)
        theirs_by_iteration = {}
        for j, name in ((1, "judge_vs_random.jsonl"), (2, "judge_vs_random@iter_2.jsonl")):
            ref_dir = layout.iteration_dir(run_dir, seed, "random", j)
            theirs = {p["id"]: p["prediction"] for p in io_utils.read_jsonl(
                os.path.join(ref_dir, "eval_test", "predictions.jsonl"))}
            theirs_by_iteration[j] = theirs
            ours = {p["id"]: p["prediction"] for p in io_utils.read_jsonl(
                os.path.join(full, "eval_test", "predictions.jsonl"))}
            lines = io_utils.read_jsonl(os.path.join(full, name))
            assert len(lines) == NUM_TEST  # B is random's model at iteration j
            for line in lines:
                if line["verdict"] == "unparsed":
                    continue
                i = line["id"]
                assert line["winner"] == ("A" if ours[i] > theirs[i] else
                                          "B" if ours[i] < theirs[i] else "tie")
        assert theirs_by_iteration[1] != theirs_by_iteration[2]  # two different models
    # The report: a table per seed, the mean over the two seeds, no summed row, and the
    # unparsed reply in the Error column and listed with its raw text.
    markdown = open(reports.write_report(run_dir)["results.md"], encoding="utf-8").read()
    seed0 = markdown.split("## Pairwise judge: judge, seed 0")[1].split("## ")[0]
    seed1 = markdown.split("## Pairwise judge: judge, seed 1")[1].split("## ")[0]
    mean = markdown.split("## Pairwise judge: judge, mean over 2 seeds")[1].split("## ")[0]
    for table in (seed0, seed1):
        assert "| fully_trained | 1 | random | " in table
        assert "| fully_trained | 1 | random @ iter 2 | " in table
        assert table.count(f"| {NUM_TEST} | ") == 4  # each row: one run of the test items
    errors = [r for r in results if r["error"]]
    assert [(r["seed"], r["error"]) for r in errors] == [(0, 1)]
    assert errors[0]["win"] + errors[0]["tie"] + errors[0]["lose"] == NUM_TEST - 1
    first = results[0]
    assert (f"| fully_trained | 1 | random | {NUM_TEST} | {first['win']} | {first['tie']} | "
            f"{first['lose']} | 1 |") in seed0
    assert "| fully_trained | 1 | random @ iter 2 | 2 | 10.0 ± 0.0 |" in mean
    assert f"| {2 * NUM_TEST} |" not in markdown and "| all |" not in markdown
    unparsed = markdown.split("unparsed replies (the Error column)")[1]
    assert "| 0 | fully_trained | 1 | random | " in unparsed and "I cannot decide." in unparsed


def test_experiment_takes_a_list_of_judges(parse_experiment):
    import gin
    judges = ['experiment.judge = [@gpt4/JudgeConfig(), @chatgpt/JudgeConfig()]',
              'gpt4/JudgeConfig.model = "gpt-4"', 'chatgpt/JudgeConfig.model = "gpt-3.5-turbo"']
    exp = parse_experiment("demo_self_instruct.gin", judges)
    assert [judge_lib.judge_name(c) for c in exp.judge] == ["gpt-4", "gpt-3.5-turbo"]
    gin.clear_config()
    with pytest.raises(ValueError, match="distinct names"):
        parse_experiment("demo_self_instruct.gin", judges[:2])


def test_judge_generates_missing_predictions_and_checks_its_reference(
        tmp_path, sample_data, test_file, fake_judge):
    config = active_loop.LoopConfig(strategies=("prompt_uncertainty", "random"), seeds=(0,),
                                    num_iterations=2, tasks_per_iteration=PER_ITERATION,
                                    quota="self_instruct", evaluate_test=False)
    fake = FakeStages(str(sample_data / "self_instruct" / "alpaca_sample.json"), test_file)
    run_dir = str(tmp_path / "run")
    active_loop.run_loop(run_dir, config, fake.stages())
    it_dir = layout.iteration_dir(run_dir, 0, "prompt_uncertainty", 1)
    assert not os.path.exists(os.path.join(it_dir, "eval_test"))
    with pytest.raises(ValueError, match="not one of the run's strategies"):
        active_loop.run_judge(run_dir, config, fake.stages(), None, reference="high_perplexity")
    # No client (another host of a multi-host run): predictions only, no judge file.
    records = active_loop.run_judge(run_dir, config, fake.stages(), None)
    assert [(r["strategy"], r["iteration"], r["win"]) for r in records] == [
        ("prompt_uncertainty", 1, None)]
    assert os.path.exists(os.path.join(it_dir, "eval_test", "predictions.jsonl"))
    assert not os.path.exists(os.path.join(it_dir, "judge_vs_random.jsonl"))
    client = judge_lib.ChatClient(judge_lib.JudgeConfig(base_url=fake_judge.base_url,
                                                        max_retries=0), api_key=KEY)
    records = active_loop.run_judge(run_dir, config, fake.stages(), client)
    assert records[0]["n_items"] == NUM_TEST
    assert len(io_utils.read_jsonl(os.path.join(it_dir, "judge_vs_random.jsonl"))) == NUM_TEST


# ------------------------------------------------------------------------------- configs


def _paper_bindings(sample_data):
    return ['SELF_INSTRUCT_FILE = "/data/alpaca_data.json"',
            'SELF_INSTRUCT_TEST_FILE = "/data/user_oriented_instructions.jsonl"',
            f'get_vocabulary.path = "{sample_data}/vocab/sample_spm.model"',
            'experiment.init_checkpoint = "/ckpt/llama_7b"']


def test_alpaca_llama7b_config_is_the_paper_setting(parse_experiment, sample_data):
    exp = parse_experiment("experiments/alpaca_llama7b.gin", _paper_bindings(sample_data))
    cfg = exp.model.config
    assert exp.model.decoder_only  # the model decides the kind: no TrainConfig.model_kind
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (
        32000, 4096, 32, 32)
    assert (cfg.pad_id, cfg.bos_id, cfg.eos_id) == (0, 1, 2)
    assert exp.pool == "self_instruct" and exp.niv2_dir is None
    assert exp.self_instruct_file == "/data/alpaca_data.json"
    assert exp.self_instruct_test_file == "/data/user_oriented_instructions.jsonl"
    assert exp.init_checkpoint == "/ckpt/llama_7b"
    assert isinstance(exp.quotas, splits.SelfInstructQuotas) and exp.quotas.num_initial == 500
    assert exp.loop.quota == "self_instruct"
    assert tuple(exp.loop.train_set_sizes) == (1000, 2000, 4000, 8000, 16000)
    assert "prompt_uncertainty" in exp.loop.strategies and "random" in exp.loop.strategies
    tc = exp.train_config
    assert (tc.learning_rate, tc.batch_size, tc.num_epochs, tc.model_kind) == (
        2e-5, 128, 4, None)
    sc = exp.score_config
    assert (sc.num_perturbations, sc.perturbation, dict(sc.perturbation_options)) == (
        20, "drop", {"rate": 0.2})
    assert not exp.select_epoch_on_validation
    assert exp.judge is None  # off by default
    assert exp.vocabulary.vocab_size == 1000  # extra_ids 0, the T5-id check off


def test_alpaca_llama7b_config_requires_its_paths(parse_experiment, sample_data):
    import gin
    bindings = [b for b in _paper_bindings(sample_data) if "init_checkpoint" not in b]
    with pytest.raises(ValueError, match="experiment.init_checkpoint is required"):
        parse_experiment("experiments/alpaca_llama7b.gin", bindings)
    gin.clear_config()
    bindings = [b for b in _paper_bindings(sample_data) if "TEST_FILE" not in b]
    with pytest.raises(ValueError, match="experiment.self_instruct_test_file is required"):
        parse_experiment("experiments/alpaca_llama7b.gin", bindings)


def test_demo_config_and_inconsistent_settings(parse_experiment):
    import gin
    exp = parse_experiment("demo_self_instruct.gin", [])
    assert exp.pool == "self_instruct" and exp.loop.num_iterations == 2
    assert (exp.model.config.eos_id, exp.model.config.bos_id) == (1, 1151)
    assert exp.model.config.vocab_size >= exp.vocabulary.vocab_size
    gin.clear_config()
    with pytest.raises(ValueError, match="quota"):
        parse_experiment("demo_self_instruct.gin", ['LoopConfig.quota = "niv2"'])
    gin.clear_config()
    with pytest.raises(ValueError, match="judge_reference"):
        parse_experiment("demo_self_instruct.gin", [
            'experiment.judge = @JudgeConfig()', 'experiment.judge_reference = "low_perplexity"'])


@pytest.mark.parametrize("bindings,expect_validation", [
    ([], False), (["experiment.select_epoch_on_validation = True"], True)])
def test_self_instruct_train_stage_keeps_the_last_epoch_by_default(
        parse_experiment, tmp_path, monkeypatch, bindings, expect_validation):
    """Alpaca's recipe: the run command's train stage hands the trainer no validation tasks
    (fixed epochs, last kept) unless asked; the evaluate stage still validates."""
    from activeit_jax.loop import stages as loop_stages
    from activeit_jax.training import config as train_config, trainer
    seen = []

    def fake_train(model, train_tasks, val_tasks, vocab, config, out_dir,
                   init_checkpoint=None):
        seen.append(list(val_tasks))
        return train_config.TrainResult(os.path.join(out_dir, "best"), 0, {}, [], 1)

    monkeypatch.setattr(trainer, "train_and_evaluate", fake_train)
    stages = loop_stages.build_stages(parse_experiment("demo_self_instruct.gin", bindings))
    stages.train(["t1"], ["v1", "v2"], str(tmp_path / "train"))
    assert seen == [["v1", "v2"] if expect_validation else []]


# ------------------------------------------------------------------------------- end to end

MINI_GIN = """
include '{demo}'
experiment.self_instruct_test_file = "{test_file}"
experiment.self_instruct_max_items = 150
TrainConfig.num_epochs = 1
TrainConfig.progress_bar = False
TrainConfig.max_source_length = 160
ScoreConfig.max_source_length = 160
ScoreConfig.num_perturbations = 2
ScoreConfig.source_buckets = (160,)
ScoreConfig.sequence_buckets = (192,)
experiment.judge = @JudgeConfig()
JudgeConfig.base_url = "{base_url}"
JudgeConfig.model = "fake-judge"
JudgeConfig.api_key_env = "ACTIVEIT_E2E_JUDGE_KEY"
JudgeConfig.max_retries = 0
"""


@pytest.mark.e2e
def test_demo_self_instruct_runs_end_to_end_with_the_judge(tmp_path, test_file, fake_judge):
    gin_file = tmp_path / "mini.gin"
    gin_file.write_text(MINI_GIN.format(demo=REPO_ROOT / "configs" / "demo_self_instruct.gin",
                                        test_file=test_file, base_url=fake_judge.base_url))
    out = str(tmp_path / "run")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu", ACTIVEIT_E2E_JUDGE_KEY=KEY)
    proc = subprocess.run([sys.executable, "-m", "activeit_jax.main", "run",
                           f"--gin_file={gin_file}", f"--out={out}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert check_chunk_quotas(out, ("prompt_uncertainty", "random"), 2, PER_ITERATION) == 2
    scores = io_utils.read_jsonl(os.path.join(out, "seed_0", "iter_0", "scores.jsonl"))
    prepared = prepared_lib.load_prepared(os.path.join(out, "seed_0", "data"))
    assert [r["task"] for r in scores] == list(prepared.split.pool)
    assert all(0.0 < r["prediction_probability"] <= 1.0 for r in scores)
    with open(os.path.join(out, "seed_0", "iter_0", "scoring", "run_args.json")) as handle:
        assert json.load(handle)["args"]["prompt_formats"]["self_instruct"] == "alpaca"
    judged = io_utils.read_jsonl(os.path.join(out, "seed_0", "prompt_uncertainty", "iter_1",
                                              "judge_vs_random.fake-judge.jsonl"))
    assert len(judged) == NUM_TEST and len(fake_judge.requests) == NUM_TEST
    assert ("judge fake-judge seed 0 prompt_uncertainty iteration 1 vs random iteration 1: "
            in proc.stdout)
    assert {line["prompt_template"] for line in judged} == {"paper"}  # the default
    assert "seed 0: task labels (cls/gen) of" in proc.stdout
    with open(os.path.join(out, "report", "report.html"), encoding="utf-8") as handle:
        assert "Pairwise judge" in handle.read()
