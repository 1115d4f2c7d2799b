"""Reliability: chat templates from model files (issue 23, items 5 and 6).

A template is data from a downloaded file. Rendering one does bounded work and allocates
bounded memory, and every failure -- a budget exceeded, a sandbox refusal, an overflow, a
template that is not a string -- is one line naming the file. Each hostile template runs in
its own interpreter under a CPU-time and an address-space limit, so a regression shows up as
a failed test rather than a hung or swapping machine.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

# Address space of the child: the interpreter with jinja needs well under this; every hostile
# template below wants many GB without the budget.
MEMORY_LIMIT = 1 << 30
CPU_SECONDS = 60

CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))
from activeit_jax.data import chat
from activeit_jax.data.errors import VocabularyError
template = json.loads(sys.argv[1])
try:
    try:
        made = chat.ChatTemplate(template, source="model/tokenizer_meta.json")
    except TypeError as err:  # a version without `source` (the test's first run)
        if "source" not in str(err):
            raise
        made = chat.ChatTemplate(template)
    print(json.dumps({{"text": made.user_prompt("hi")[:200]}}))
except VocabularyError as err:
    print(json.dumps({{"error": str(err)}}))
"""

HOSTILE = {
    "nested_range_loops": ("{% for i in range(100000) %}{% for j in range(100000) %}"
                           "{% endfor %}{% endfor %}", "operations"),
    "lipsum": ("{{ lipsum(n=100000000) }}", "lipsum"),
    "power": ("{{ 7 ** 100000000 }}", "bits"),
    "string_repetition": ("{{ 'x' * 3000000000 }}", "repetition"),
    "float_repetition": ("{{ 'x' * 3e9 }}", "TypeError"),
    "list_repetition": ("{{ ([1] * 3000000000)|length }}", "repetition"),
    "tojson_indent": ("{{ messages|tojson(indent=1000000000) }}", "tojson"),
    "tojson_float_indent": ("{{ messages|tojson(indent=1e9) }}", "tojson"),
    "big_range": ("{{ range(10**9)|list|length }}", "range"),
    "doubling_concat": ("{% set ns = namespace(x='ab') %}{% for i in range(60) %}"
                        "{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x|length }}",
                        "concatenation"),
    "doubling_plus": ("{% set ns = namespace(x=[1]) %}{% for i in range(60) %}"
                      "{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x|length }}",
                      "concatenation"),
    "doubling_captured_block": ("{% set ns = namespace(x='ab') %}{% for i in range(60) %}"
                                "{% set ns.x %}{{ ns.x }}{{ ns.x }}{% endset %}{% endfor %}"
                                "{{ ns.x|length }}", "characters or items"),
    "center": ("{{ 'x'|center(1000000000) }}", "center"),
    "replace_amplifies": ("{{ ('x' * 1000000)|replace('', 'yyyyyyyyyy') }}", "replace"),
    "join_amplifies": ("{{ ('y' * 1000000).join(range(100000)|map('string')) }}", "join"),
    "printf_width": ("{{ '%1000000000d' % 1 }}", "format width"),
    "format_width": ("{{ '{:>1000000000}'.format(1) }}", "format width"),
    "recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "Recursion"),
    "sandbox_escape": ("{{ ''.__class__.__mro__ }}", "SecurityError"),
    "overflow": ("{{ 10.0 ** 400 }}", "OverflowError"),
    "raise_exception": ("{{ raise_exception('roles must alternate') }}",
                        "roles must alternate"),
    "broken_syntax": ("{% for %}", "does not compile"),
}


def _render_in_child(template) -> dict:
    code = CHILD.format(memory=MEMORY_LIMIT, cpu=CPU_SECONDS)
    done = subprocess.run([sys.executable, "-c", code, json.dumps(template)],
                          capture_output=True, text=True, timeout=CPU_SECONDS + 30)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_templates_are_refused_in_one_line_naming_the_file(name):
    template, expected = HOSTILE[name]
    result = _render_in_child(template)
    assert "error" in result, f"{name} rendered: {result}"
    message = result["error"]
    assert message.startswith("model/tokenizer_meta.json: ") and "\n" not in message
    assert expected in message, message


@pytest.mark.parametrize("template", [["not", "a", "string"], {"default": "x"}, 3])
def test_a_template_that_is_not_a_string_is_one_line(template):
    result = _render_in_child(template)
    assert result["error"].startswith("model/tokenizer_meta.json: ")
    assert "must be a string" in result["error"]


def test_ordinary_templates_render_as_before():
    """The budget is far above what real templates use: loops over the messages, joins,
    tojson with an indent, macros, namespaces, string methods."""
    template = ("{% set ns = namespace(n=0) %}{% macro turn(m) %}<|{{ m.role }}|>"
                "{{ m.content | trim }}{% endmacro %}"
                "{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ turn(m) ~ '\\n' }}"
                "{% endfor %}{{ messages|tojson(indent=2) if ns.n > 5 else '' }}"
                "{{ ['a', 'b']|join(', ') }} {{ 'x'.upper() * 3 }} {{ 2 ** 10 }}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    result = _render_in_child(template)
    assert result == {"text": "<|user|>hi\na, b XXX 1024<|assistant|>"}


# ----------------------------------------------------------------------------- item 6

SCORE_SETTINGS = ["--num_instances=1", "--num_perturbations=1", "--max_source_length=64",
                  "--max_target_length=4", "--batch_size=1", "--noprogress"]


def _decoder_only_checkpoint(path, sample_data, chat_template):
    """A 1-layer LLaMA with a byte-level BPE tokenizer carrying `chat_template`."""
    import jax

    from activeit_jax.data import hf_tokenizer
    from activeit_jax.models import DecoderOnlyModel, LlamaConfig, checkpoints
    from tests.gguf_testlib import sample_bpe
    tokenizer = sample_bpe(sample_data)
    eos = tokenizer.token_to_id("<|im_end|>")
    vocab = hf_tokenizer.HFTokenizerVocabulary(tokenizer, eos_id=eos, chat_template="")
    model = DecoderOnlyModel(LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=16, intermediate_size=32,
        num_layers=1, num_heads=2, num_kv_heads=2, pad_id=vocab.pad_id, bos_id=None,
        eos_id=eos))
    checkpoints.save_model(path, model, model.init_params(jax.random.key(0)), vocab)
    _set_template(path, chat_template)
    return model


def _set_template(checkpoint, template) -> None:
    meta_path = checkpoint / "tokenizer_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["chat_template"] = template
    meta_path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def broken_checkpoints(tmp_path_factory, sample_data):
    """Decoder-only checkpoints whose stored chat template fails in three ways."""
    root = tmp_path_factory.mktemp("templates")
    _decoder_only_checkpoint(root / "security", sample_data, "{{ ''.__class__.__mro__ }}")
    for name, template in (("overflow", "{{ 10.0 ** 400 }}"), ("not_a_string", ["x"])):
        shutil.copytree(root / "security", root / name)
        _set_template(root / name, template)
    return root


def test_a_broken_template_stops_score_with_nothing_written(broken_checkpoints, sample_data,
                                                             tmp_path):
    """score: the template is rendered in every prompt format before the run directory is
    touched; the same command runs once the template is fixed (no run_args.json holding the
    broken template's hash refuses it)."""
    from tests.reliability.test_reliability_errors import run_cases
    pool = f"--self_instruct={sample_data}/self_instruct/user_oriented_instructions.jsonl"
    out = tmp_path / "scored"

    def args(name):
        return [f"--checkpoint={broken_checkpoints / name}", pool, f"--out={out}",
                "--gin.ScoreConfig.tasks_per_chunk=2", *SCORE_SETTINGS]
    run_cases("score", [
        (args("security"), [f"{broken_checkpoints}/security/", "chat template",
                            "SecurityError"]),
        (args("overflow"), [f"{broken_checkpoints}/overflow/", "OverflowError"]),
        (args("not_a_string"), [f"{broken_checkpoints}/not_a_string/", "chat", "string"]),
    ], tmp_path)
    assert not out.exists()
    fixed = tmp_path / "fixed"
    shutil.copytree(broken_checkpoints / "security", fixed)
    run_cases("score", [([f"--checkpoint={fixed}", pool, f"--out={out}", *SCORE_SETTINGS,
                          "--gin.ScoreConfig.tasks_per_chunk=2"],
                         [f"{fixed}/", "SecurityError"])], tmp_path)
    _set_template(fixed, "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                         "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    run_cases("score", [([f"--checkpoint={fixed}", pool, f"--out={out}", *SCORE_SETTINGS,
                          "--gin.ScoreConfig.tasks_per_chunk=2"], None)], tmp_path)
    assert (out / "scores.jsonl").exists()


def test_a_broken_template_stops_evaluate_train_and_run_before_any_write(
        broken_checkpoints, sample_data, tmp_path):
    from tests.reliability.test_reliability_errors import run_cases
    ckpt = broken_checkpoints / "security"
    (tmp_path / "tasks.txt").write_text("task063_first_i_elements\n")
    run_cases("evaluate", [
        ([f"--checkpoint={ckpt}", f"--niv2_dir={sample_data}/niv2",
          f"--tasks={tmp_path}/tasks.txt", f"--out={tmp_path}/eval"],
         [f"{ckpt}/", "SecurityError"]),
    ], tmp_path)
    run_cases("run", [
        (["--gin_file=demo_tiny.gin", f"--out={tmp_path}/run", "--noreport",
          "--gin.experiment.model=None", "--gin.experiment.vocabulary=None",
          f"--gin.experiment.init_checkpoint='{ckpt}'"], [f"{ckpt}/", "SecurityError"]),
    ], tmp_path)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "run").exists()

    from activeit_jax.data import vocab as vocab_lib
    from activeit_jax.data.errors import VocabularyError
    from activeit_jax.data.self_instruct import load_self_instruct
    from activeit_jax.models import checkpoints
    from activeit_jax.training import trainer
    from activeit_jax.training.config import TrainConfig
    tasks = load_self_instruct(sample_data / "self_instruct" / "user_oriented_instructions.jsonl",
                               max_items=2)
    with pytest.raises(VocabularyError, match="SecurityError"):
        trainer.train_and_evaluate(checkpoints.read_model(ckpt), tasks, [],
                                   vocab_lib.resolve_vocabulary(None, str(ckpt)),
                                   TrainConfig(batch_size=8, num_epochs=1),
                                   str(tmp_path / "train"))
    assert not (tmp_path / "train").exists()
