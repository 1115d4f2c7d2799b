"""`pip install .` into a fresh virtual environment, without extras, runs the commands.

A new user's path: a copy of the checkout (its tracked files, as a clone has them) installed
with plain `pip install` into an empty venv, then `convert --from_hf` of a tiny Hugging Face
directory, `score` with a chat prompt format, and `train` on the bundled sample, each from a
working directory outside the checkout (configs and the sample come from the installed
package). No traceback, no foreign log lines, and no TensorFlow, seqio or PyTorch installed.

Speed: `-c requirements.lock` pins what pip resolves to the lock's versions, whose wheels the
`make venv` of the same run has just put in pip's cache, so the install downloads nothing
new (about a minute on 2 cores); the constraint adds no package that setup.py does not ask for.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.install.terminal import foreign_lines

pytestmark = pytest.mark.e2e

TASKS = ("task1146_country_capital", "task1332_check_leap_year")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def copy_checkout(dest: pathlib.Path) -> None:
    """The files a clone of this checkout holds (tracked and not ignored), into `dest`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"],
                            cwd=REPO_ROOT, capture_output=True, check=False)
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            source = REPO_ROOT / name
            if source.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name)
        return
    shutil.copytree(REPO_ROOT, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".jax_cache"))


def user_env(venv: pathlib.Path) -> dict[str, str]:
    """A user's shell with the venv activated: nothing of the test session's paths."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "XLA_FLAGS", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="", XDG_CACHE_HOME=str(venv.parent / "cache"))
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, site-packages) after `pip install -c requirements.lock <copy of the checkout>`."""
    root = tmp_path_factory.mktemp("fresh")
    source, venv = root / "src", root / "venv"
    copy_checkout(source)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", "-c", str(source / "requirements.lock"), str(source)],
        capture_output=True, text=True, timeout=1500, env=user_env(venv), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    site = next((venv / "lib").glob("python3*/site-packages"))
    return venv, site


def run(venv: pathlib.Path, cwd: pathlib.Path, *args: str) -> str:
    """Runs `activeit-jax ARGS` in the venv; returns its stdout + stderr (asserting success,
    no traceback and no foreign log line)."""
    done = subprocess.run([str(venv / "bin" / "activeit-jax"), *args], cwd=cwd,
                          env=user_env(venv), capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-4000:]
    assert foreign_lines(output) == [], foreign_lines(output)
    return output


def test_the_install_is_lean_and_self_contained(installed):
    venv, site = installed
    missing = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.util as u; print([m for m in ('tensorflow', 'seqio', 'torch', "
         "'transformers', 'pytest') if u.find_spec(m)])"],
        capture_output=True, text=True, env=user_env(venv), check=True)
    assert missing.stdout.strip() == "[]"
    assert not (site / "tasks").exists()  # no top-level `tasks` package
    package = site / "activeit_jax"
    for shipped in ("tasks/__init__.py", "configs/experiments/niv2_t5_large.gin",
                    "configs/runs/finetune_tiny.gin", "data/sample/vocab/sample_spm.model",
                    f"data/sample/niv2/tasks/{TASKS[0]}.json", "core/logs.py"):
        assert (package / shipped).is_file(), shipped


def test_convert_score_with_a_chat_format_and_train(installed, tmp_path):
    from tests.models.test_convert_modern import _write_tokenizer
    from tests.models.test_models_llama import make_hf_llama
    venv, site = installed
    hf_dir = tmp_path / "hf"
    make_hf_llama().save_pretrained(hf_dir)
    _write_tokenizer(hf_dir, 300, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                   "bos_token": None, "add_bos_token": False,
                                   "chat_template": CHAT_TEMPLATE})
    work = tmp_path / "work"  # outside the checkout: resources come from the package
    work.mkdir()
    (work / "tasks.txt").write_text("\n".join(TASKS) + "\n")

    run(venv, work, "convert", f"--from_hf={hf_dir}", "--to=ckpt")
    assert json.loads((work / "ckpt" / "tokenizer_meta.json").read_text())["chat_template"]

    niv2 = site / "activeit_jax" / "data" / "sample" / "niv2"
    run(venv, work, "score", "--checkpoint=ckpt", f"--niv2_dir={niv2}", "--tasks=tasks.txt",
        "--out=scores", "--prompt_format=tk_instruct_chat", "--num_instances=2",
        "--num_perturbations=2", "--max_source_length=256", "--max_target_length=16",
        "--save_prompts", "--progress=false")
    scored = [json.loads(line) for line in (work / "scores" / "scores.jsonl").open()]
    assert sorted(r["task"] for r in scored) == sorted(TASKS)
    sources = [json.loads(line)["source"] for line in (work / "scores" / "prompts.jsonl").open()]
    assert sources and all(s.startswith("<|im_start|>user\n") for s in sources)  # jinja2

    output = run(venv, work, "train", "--gin_file=runs/finetune_tiny.gin",
                 "--tasks=tasks.txt", "--val_tasks=tasks.txt", "--out=train",
                 "--gin.TrainConfig.num_epochs=1", "--gin.TrainConfig.max_instances_per_task=8")
    assert "training on 16 examples from 2 tasks" in output  # our own line, shown
    assert (work / "train" / "best" / "config.json").is_file()
    assert list((work / "train" / "tensorboard").glob("events.out.tfevents.*"))
