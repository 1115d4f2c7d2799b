"""Flags generated from config dataclasses (`commands.common.define_config_flags`): every
field's flag has the field's default, older flag names keep working, and a flag, a gin binding
and a default combine as documented (flag > gin binding > default; a flag and a `--gin.`
binding of one field are refused).

Each command defines its flags in the global absl registry, so each runs in its own
interpreter (`_cases`): one start-up per command.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from activeit_jax.commands import common
from activeit_jax.scoring import ScoreConfig
from activeit_jax.scoring.taskmap import TaskMapThresholds

REPO = pathlib.Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: reads cases from argv[2] (JSON), prints one JSON line each.
_SCRIPT = textwrap.dedent("""
    import dataclasses, importlib, json, sys
    import gin
    from absl import flags
    from activeit_jax.core import gin_utils
    from activeit_jax.core.errors import ActiveITError
    module = importlib.import_module("activeit_jax.commands." + sys.argv[1])
    from activeit_jax.commands import common

    def evaluate_config():  # as `evaluate` builds it (no train_job binding here)
        module.EVAL_FLAGS.check_conflicts()
        config = gin.get_configurable("activeit_jax.training.TrainConfig")()
        return dataclasses.replace(config, **module.EVAL_FLAGS.given())

    build = {"score": lambda: module.build_config(), "select": lambda: module.SELECT_FLAGS.build(),
             "evaluate": evaluate_config}[sys.argv[1]]
    if sys.argv[1] == "score":  # what the every-field test reads
        out = {"flags": {}, "flag_names": dict(module.SCORE_FLAGS.flag_names),
               "thresholds": dict(module.THRESHOLD_FLAGS.flag_names)}
        for name in [*module.SCORE_FLAGS.flag_names.values(),
                     *module.THRESHOLD_FLAGS.flag_names.values(), "drop_rate"]:
            out["flags"][name] = flags.FLAGS[name].default
        print("FLAGS " + json.dumps(out))
    for args in json.loads(sys.argv[2]):
        flags.FLAGS.unparse_flags()
        gin.clear_config()
        rest, gin_utils.COMMAND_LINE_BINDINGS[:] = gin_utils.split_gin_bindings(["x", *args])
        flags.FLAGS(rest)
        try:
            common.parse_gin_from_flags()
            config = build()
            print("CASE " + json.dumps({"config": dataclasses.asdict(config)}, default=str))
        except ActiveITError as err:
            print("CASE " + json.dumps({"error": str(err)}))
""")


def _cases(command: str, cases: list[list[str]], cwd) -> tuple[dict, list[dict]]:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, command, json.dumps(cases)],
                          capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}"
                                   f"{os.environ.get('PYTHONPATH', '')}"))
    lines = done.stdout.splitlines()
    results = [json.loads(line[5:]) for line in lines if line.startswith("CASE ")]
    assert len(results) == len(cases), done.stderr[-3000:]
    head = [json.loads(line[6:]) for line in lines if line.startswith("FLAGS ")]
    return (head[0] if head else {}), results


def _config(result: dict) -> dict:
    assert "config" in result, result
    return result["config"]


def _as_json(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def test_field_docs_reads_the_attributes_section():
    docs = common.field_docs(ScoreConfig)
    assert docs["num_perturbations"] == "K, perturbed prompts per task."
    # "a / b: text" entries are every name's; continuation lines join the entry.
    assert docs["max_source_length"] == docs["max_target_length"]
    assert "(`python benchmarks/padding_plan.py`)" in docs["decode_buckets_per_octave"]
    assert set(docs) == {f.name for f in dataclasses.fields(ScoreConfig)}


def test_every_score_config_field_has_a_flag_with_its_default(tmp_path):
    head, (plain,) = _cases("score", [[]], tmp_path)
    fields = {f.name: f for f in dataclasses.fields(ScoreConfig)}
    defaults = ScoreConfig()
    # Fields set through other flags: perturbation_options by --perturbation_option and
    # --drop_rate (the rate of the default "drop"); thresholds by TaskMapThresholds' flags.
    composite = {"perturbation_options", "thresholds"}
    assert set(head["flag_names"]) | composite == set(fields)
    assert head["flag_names"]["compute_entropy"] == "entropy"  # the older name is kept
    for name, flag in head["flag_names"].items():
        default = getattr(defaults, name)
        if isinstance(default, tuple) or fields[name].type.startswith("tuple"):
            default = None if default is None else [str(v) for v in default]
        assert head["flags"][flag] == default, name
    assert dict(defaults.perturbation_options) == {"rate": head["flags"]["drop_rate"]}
    for name, flag in head["thresholds"].items():
        assert head["flags"][flag] == getattr(TaskMapThresholds(), name), name
    # No flag, no gin: the dataclass itself.
    assert _config(plain) == _as_json(ScoreConfig())


def test_score_flags_gin_and_their_precedence(tmp_path):
    (tmp_path / "score.gin").write_text("ScoreConfig.num_perturbations = 7\n"
                                        "ScoreConfig.perturbation_options = (('rate', 0.5),)\n")
    old_flags = ["--num_instances=2", "--num_perturbations=3", "--drop_rate=0.3", "--entropy",
                 "--max_source_length=256", "--max_target_length=16", "--batch_size=16",
                 "--source_buckets=128,256", "--target_buckets=16", "--tasks_per_chunk=2",
                 "--save_prompts", "--batch_tokens=0", "--pu_quantile=0.5",
                 "--perturbation=sentinel", "--prompt_format=tk_instruct"]
    _, results = _cases("score", [
        old_flags,
        ["--gin.ScoreConfig.num_perturbations=5", "--gin.ScoreConfig.max_target_length=32"],
        ["--gin_file=score.gin"],
        ["--gin_file=score.gin", "--num_perturbations=3", "--drop_rate=0.1"],
        ["--num_perturbations=3", "--gin.ScoreConfig.num_perturbations=5"],
        ["--entropy", "--gin.ScoreConfig.compute_entropy=False"],
        ["--drop_rate=0.1", "--gin.ScoreConfig.perturbation_options=(('rate', 0.5),)"],
        ["--gin.ScoreConfig.perturbation='repeat'", "--max_decode_length=9"],
        ["--source_buckets=a,b"],
        ["--num_perturbations=0"],
        ["--pu_quantile=2"],
    ], tmp_path)
    assert _config(results[0]) == _as_json(ScoreConfig(
        num_instances=2, num_perturbations=3, perturbation="sentinel",
        perturbation_options=(("rate", 0.3),), prompt_format="tk_instruct",
        max_source_length=256, max_target_length=16, max_decode_length=16,
        compute_entropy=True, save_prompts=True, batch_size=16, batch_tokens=None,
        tasks_per_chunk=2, source_buckets=(128, 256), target_buckets=(16,),
        thresholds=TaskMapThresholds(pu_quantile=0.5)))
    # gin alone; the decoding length follows max_target_length wherever it was set.
    got = _config(results[1])
    assert (got["num_perturbations"], got["max_target_length"], got["max_decode_length"]) == \
        (5, 32, 32)
    got = _config(results[2])  # a gin file ...
    assert got["num_perturbations"] == 7 and got["perturbation_options"] == [["rate", 0.5]]
    got = _config(results[3])  # ... and flags over it
    assert got["num_perturbations"] == 3 and got["perturbation_options"] == [["rate", 0.1]]
    assert results[4]["error"] == ("--num_perturbations and --gin.ScoreConfig.num_perturbations "
                                   "both set ScoreConfig.num_perturbations: give one")
    assert "--entropy and --gin.ScoreConfig.compute_entropy" in results[5]["error"]
    assert "--drop_rate and --gin.ScoreConfig.perturbation_options" in results[6]["error"]
    got = _config(results[7])
    assert got["perturbation"] == "repeat" and got["perturbation_options"] == [["rate", 0.2]]
    assert got["max_decode_length"] == 9
    assert "--source_buckets must be integers" in results[8]["error"]
    assert "num_perturbations" in results[9]["error"] and ">= 1" in results[9]["error"]
    assert "pu_quantile must be in [0, 1]" in results[10]["error"]


def test_select_config_from_flags_gin_and_the_deprecated_name(tmp_path):
    _, results = _cases("select", [
        [],
        ["--strategy=random", "--num_tasks=5", "--quota=niv2", "--seed=1", "--iteration=2"],
        ["--gin.SelectConfig.label_ratio={'cls': 1, 'gen': 1}",
         "--gin.SelectConfig.on_missing_score='drop'"],
        ["--gin.selection_settings.quota='niv2'", "--num_tasks=4"],
        ["--gin.selection_settings.quota='niv2'", "--gin.SelectConfig.quota='none'"],
        ["--quota=niv2", "--gin.selection_settings.quota='none'"],
        ["--strategy=nonsense"],
        ["--num_tasks=-1"],
        ["--strategy=high_perplexity", "--perplexity_variant=paper_text",
         "--category_selection=random"],
    ], tmp_path)
    assert _config(results[0]) == {"strategy": "prompt_uncertainty", "num_tasks": 68,
                                   "quota": "none", "seed": 0, "iteration": 0,
                                   "label_ratio": None, "on_missing_score": "error",
                                   "perplexity_variant": "reference",
                                   "category_selection": "rank"}
    got = _config(results[1])
    assert (got["strategy"], got["num_tasks"], got["quota"], got["seed"], got["iteration"]) \
        == ("random", 5, "niv2", 1, 2)
    got = _config(results[2])
    assert got["label_ratio"] == {"cls": 1, "gen": 1} and got["on_missing_score"] == "drop"
    got = _config(results[3])
    assert got["quota"] == "niv2" and got["num_tasks"] == 4
    assert _config(results[4])["quota"] == "none"  # the new name wins over the old one
    assert "--quota and --gin.selection_settings.quota both set" in results[5]["error"]
    assert "nonsense" in results[6]["error"] and "--strategy" in results[6]["error"]
    assert "--num_tasks" in results[7]["error"]
    got = _config(results[8])
    assert (got["perplexity_variant"], got["category_selection"]) == ("paper_text", "random")


def test_evaluate_shortcuts_of_train_config(tmp_path):
    (tmp_path / "run.gin").write_text("import activeit_jax.training.config\n"
                                      "TrainConfig.eval_batch_size = 16\n")
    _, results = _cases("evaluate", [
        [],
        ["--gin_file=run.gin"],
        ["--gin_file=run.gin", "--batch_size=32", "--max_instances_per_task=5"],
        ["--batch_size=32", "--gin.TrainConfig.eval_batch_size=8"],
    ], tmp_path)
    assert _config(results[0])["eval_batch_size"] == 64
    assert _config(results[1])["eval_batch_size"] == 16
    got = _config(results[2])
    assert got["eval_batch_size"] == 32 and got["max_eval_instances_per_task"] == 5
    assert "--batch_size and --gin.TrainConfig.eval_batch_size both set" in results[3]["error"]


def test_a_field_no_flag_can_hold_must_be_skipped():
    @dataclasses.dataclass(frozen=True)
    class Odd:
        """Attributes:
          table: a mapping.
        """
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="Odd.table"):
        common.define_config_flags(Odd)
