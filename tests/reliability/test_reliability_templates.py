"""Reliability: chat templates from model files (issue 23, items 5 and 6).

A template is data from a downloaded file. Rendering one does bounded work and allocates
bounded memory, and every failure -- a budget exceeded, a sandbox refusal, an overflow, a
template that is not a string -- is one line naming the file. Each hostile template runs in
its own interpreter under a CPU-time and an address-space limit, so a regression shows up as
a failed test rather than a hung or swapping machine.
"""
from __future__ import annotations

import json
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
