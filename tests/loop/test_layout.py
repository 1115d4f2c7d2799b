"""`activeit_jax.layout` is the one owner of the run directory's names: the library spells none
of them elsewhere, and its paths compose as the loop and the report expect."""
from __future__ import annotations

import ast
import os
import re

from activeit_jax import layout

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "activeit_jax")
# The owner itself, and the old module names' aliases (no names of the run directory there).
# resources.py names the repository's own folders (`data/sample`), not a run directory's.
EXEMPT = {os.path.join(PACKAGE, "layout.py"), os.path.join(PACKAGE, "core", "moved_modules.py"),
          os.path.join(PACKAGE, "core", "resources.py")}
# The command line's flag help may name the files a command reads or writes, for its users; its
# code may not.
HELP_TEXT_ALLOWED = os.path.join(PACKAGE, "commands")


def _leaf_names() -> tuple[set[str], set[str]]:
    """(file names, directory names) that `layout` defines."""
    names = {value for key, value in vars(layout).items()
             if key.isupper() and isinstance(value, str)}
    names |= set(layout.REPORT_FILES)
    files = {n for n in names if "." in n or n.isupper()}  # DONE has no extension
    return files, names - files


# Templates of the names `layout`'s functions compose ("{}" for a placeholder).
COMPOSED = re.compile(r"^(seed_|iter_|eval_|metrics_|judge_vs_|epoch_|host)\{\}")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _template(node: ast.JoinedStr) -> str:
    return "".join(part.value if isinstance(part, ast.Constant) else "{}"
                   for part in node.values)


def _is_path_join(node: ast.AST) -> bool:
    func = getattr(node, "func", None)
    return (isinstance(node, ast.Call) and isinstance(func, ast.Attribute)
            and func.attr == "join" and ast.unparse(func.value) in ("os.path", "path"))


def spelled_names(source: str, in_text: bool = True) -> list[tuple[int, str]]:
    """(line, text) of every run-directory name spelled in `source` outside docstrings: a
    file name as a string, a directory name joined onto a path, a composed name
    (`f"seed_{s}"`), and with `in_text` a file name inside a longer string (a message)."""
    files, dirs = _leaf_names()
    alternatives = "|".join(map(re.escape, sorted(files)))
    file_re = re.compile(r"(?<![\w.])(" + alternatives + r")(?!\w|\.\w)")
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    # Joined onto a path: not the first argument ("data/sample/..." is not the run's data/).
    joined = {id(arg) for node in ast.walk(tree) if _is_path_join(node)
              for arg in node.args[1:]}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            if COMPOSED.match(_template(node)):
                found.append((node.lineno, _template(node)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            if (node.value in files or (node.value in dirs and id(node) in joined)
                    or (in_text and file_re.search(node.value))):
                found.append((node.lineno, node.value))
    return sorted(found)


def test_the_scan_finds_what_it_must():
    source = '''"""A module docstring may name scores.jsonl and DONE."""
import os
A = "scores.jsonl"
B = os.path.join(run, "train", name)
C = f"seed_{seed}"
D = f"{out} has no splits.json"
E = "train"  # a stage name, not joined into a path
F = f"seed {seed}"
G = os.path.join("data", "sample")  # the repository's data/, not a run's
H = "the metrics.json.bak file"
'''
    assert [line for line, _ in spelled_names(source)] == [3, 4, 5, 6]
    assert [line for line, _ in spelled_names(source, in_text=False)] == [3, 4, 5]


def test_no_run_directory_name_is_spelled_outside_layout():
    offenders = []
    for root, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            path = os.path.join(root, name)
            if not name.endswith(".py") or path in EXEMPT:
                continue
            with open(path, encoding="utf-8") as handle:
                source = handle.read()
            in_text = not path.startswith(HELP_TEXT_ALLOWED + os.sep)
            offenders += [f"{os.path.relpath(path, PACKAGE)}:{line}: {text!r}"
                          for line, text in spelled_names(source, in_text)]
    assert not offenders, "use activeit_jax.layout instead:\n" + "\n".join(offenders)


def test_composed_paths():
    run = os.path.join("runs", "x")
    assert layout.iteration_dir(run, 3, None, 0) == os.path.join(run, "seed_3", "iter_0")
    assert layout.iteration_dir(run, 3, "random", 2) == os.path.join(run, "seed_3", "random",
                                                                     "iter_2")
    assert layout.data_dir(run, 1) == os.path.join(run, "seed_1", "data")
    assert layout.parse_seed_name("seed_12") == 12 and layout.parse_seed_name("seed_x") is None
    assert layout.parse_iteration_name("iter_4") == 4
    assert layout.parse_iteration_name(layout.iteration_name(7)) == 7
    assert layout.parse_iteration_name("iter_4.tmp") is None
    it = layout.iteration_dir(run, 0, "random", 1)
    assert layout.eval_dir(it, "test") == os.path.join(it, "eval_test")
    assert layout.metrics_file(it, "val") == os.path.join(it, "metrics_val.json")
    for judge in (None, "gpt-4", "gpt-3.5-turbo"):
        for at in (None, 3):
            path = layout.judge_file(it, "random", judge, at)
            assert os.path.dirname(path) == it
            assert layout.parse_judge_file(os.path.basename(path)) == ("random", judge)
            assert layout.judge_reference_iteration(os.path.basename(path)) == at
    assert os.path.basename(layout.judge_file(it, "random")) == "judge_vs_random.jsonl"
    assert os.path.basename(layout.judge_file(it, "random", "gpt-4.1", 12)) == \
        "judge_vs_random@iter_12.gpt-4.1.jsonl"
    assert layout.parse_judge_file("per_task_metrics.jsonl") is None
    assert layout.shard_name(1, 4) == "host1-of-4"
