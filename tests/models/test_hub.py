"""`convert` by Hugging Face Hub id, offline: a Hub cache laid out on disk the way
huggingface_hub writes it (models--org--name/{blobs,snapshots/<commit>,refs/<name>}), read with
HF_HUB_CACHE + HF_HUB_OFFLINE=1; revisions (branch, tag, commit), a local path winning over an
id, one-line errors, and which files a download asks for."""
from __future__ import annotations

import fnmatch
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

from activeit_jax.data import vocab as vocab_lib  # noqa: E402
from activeit_jax.models import checkpoints, gguf_convert, hf_convert, hub  # noqa: E402
from tests import gguf_testlib  # noqa: E402
from tests.models.test_convert_modern import _write_tokenizer  # noqa: E402
from tests.models.test_models_llama import make_hf_llama  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
REPO = "tiny-org/tiny-llama"
GGUF_REPO = "tiny-org/tiny-llama-GGUF"
COMMIT_A = "a" * 8 + "0123456789abcdef0123456789abcdef"  # 40 hex digits
COMMIT_B = "b" * 8 + "0123456789abcdef0123456789abcdef"


def lay_out_hub_cache(cache: pathlib.Path, repo_id: str, commits: dict[str, pathlib.Path],
                      refs: dict[str, str]) -> pathlib.Path:
    """Writes `repo_id` into a Hub cache as huggingface_hub does: each file once under
    blobs/<hash>, each commit's tree under snapshots/<commit> as relative symlinks to the
    blobs, and refs/<branch or tag> holding a commit hash (no newline).

    Args:
      cache: the HF_HUB_CACHE directory.
      repo_id: "org/name".
      commits: {commit hash: local directory whose files make that commit's tree}.
      refs: {ref name: commit hash}.

    Returns:
      The repository's folder in the cache.
    """
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    for commit, source in commits.items():
        for path in sorted(source.rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
            if not blob.exists():
                blob.write_bytes(data)
            link = folder / "snapshots" / commit / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    for name, commit in refs.items():
        ref = folder / "refs" / name
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    return folder


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two versions of a tiny LLaMA repository (different weights), with a tokenizer and a
    pickled-weights decoy that a conversion must never need."""
    dirs = {}
    for commit, seed in ((COMMIT_A, 0), (COMMIT_B, 1)):
        path = tmp_path_factory.mktemp(f"repo_{seed}")
        make_hf_llama(seed=seed).save_pretrained(path)
        _write_tokenizer(path, 300, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                     "bos_token": None, "add_bos_token": False})
        (path / "README.md").write_text("# tiny llama\n")
        dirs[commit] = path
    return dirs


@pytest.fixture
def hub_cache(tmp_path, model_dirs, monkeypatch):
    """A Hub cache with REPO (main -> B, tag v1.0 -> A), read offline in this process."""
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, REPO, model_dirs, {"main": COMMIT_B, "v1.0": COMMIT_A})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _assert_same_params(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _differs(a, b) -> bool:
    return any(not np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_hub_references_parse():
    assert hub.parse_hub_id("org/name") == hub.HubRef("org/name")
    assert hub.parse_hub_id("HuggingFaceTB/SmolLM2-135M@v1.0") == \
        hub.HubRef("HuggingFaceTB/SmolLM2-135M", "v1.0")
    assert hub.parse_hub_id(f"o/n@{COMMIT_A}").revision == COMMIT_A
    for bad in ("name", "org/name/extra", "org//name", "org/--name", "org/name@", "-org/name",
                "org/name:file.gguf", "org/na me"):
        assert hub.parse_hub_id(bad) is None, bad
    ref = hub.parse_hub_file("TheBloke/TinyLlama-1.1B-GGUF@main:tinyllama.Q4_K_M.gguf")
    assert ref == hub.HubRef("TheBloke/TinyLlama-1.1B-GGUF", "main", "tinyllama.Q4_K_M.gguf")
    assert str(ref) == "TheBloke/TinyLlama-1.1B-GGUF@main:tinyllama.Q4_K_M.gguf"
    assert hub.parse_hub_file("o/n:sub/dir/f.gguf").filename == "sub/dir/f.gguf"
    for bad in ("o/n", "o/n:f.bin", "o/n:../f.gguf", "f.gguf"):
        assert hub.parse_hub_file(bad) is None, bad


def test_revisions_resolve_from_the_offline_cache(hub_cache, model_dirs):
    main = hf_convert.import_hf_model(hub.resolve_hf_dir(REPO))
    _assert_same_params(main.params, hf_convert.import_hf_model(model_dirs[COMMIT_B]).params)
    old = hf_convert.import_hf_model(model_dirs[COMMIT_A])
    for revision in ("v1.0", COMMIT_A):
        directory = hub.resolve_hf_dir(f"{REPO}@{revision}")
        assert pathlib.Path(directory) == hub_cache / "models--tiny-org--tiny-llama" / \
            "snapshots" / COMMIT_A
        _assert_same_params(hf_convert.import_hf_model(directory).params, old.params)
    assert _differs(main.params, old.params)  # the revision really chose other weights
    assert main.vocabulary is not None and main.vocabulary.vocab_size == 300


def test_a_local_path_wins_over_a_hub_id(hub_cache, model_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(model_dirs[COMMIT_A], tmp_path / REPO)  # ./tiny-org/tiny-llama
    assert hub.resolve_hf_dir(REPO) == REPO
    local = hf_convert.import_hf_model(hub.resolve_hf_dir(REPO))
    _assert_same_params(local.params, hf_convert.import_hf_model(model_dirs[COMMIT_A]).params)


def test_hub_errors_are_one_line(hub_cache, tmp_path):
    cases = {
        "no_such_dir": "directory no_such_dir does not exist, and it is not a Hub id",
        str(tmp_path / "missing"): "does not exist, and it is not a Hub id",
        "tiny-org/not-cached": "not in the Hugging Face cache and HF_HUB_OFFLINE is set",
        f"{REPO}@no-such-tag": "not in the Hugging Face cache and HF_HUB_OFFLINE is set",
    }
    for source, message in cases.items():
        with pytest.raises(hf_convert.ConversionError, match=message) as info:
            hub.resolve_hf_dir(source)
        assert "\n" not in str(info.value) and source in str(info.value)
    for source, message in {"model.gguf": "GGUF file not found, and not a Hugging Face Hub "
                                          "file",
                            f"{REPO}": "GGUF file not found",
                            f"{REPO}:missing.gguf": "not in the Hugging Face cache"}.items():
        with pytest.raises(hf_convert.ConversionError, match=message) as info:
            hub.resolve_gguf_file(source)
        assert "\n" not in str(info.value)


def test_gguf_from_a_hub_repository(hub_cache, tmp_path, sample_data):
    repo = tmp_path / "gguf_repo"
    repo.mkdir()
    gguf_testlib.write_tiny_llama_gguf(repo / "tiny.Q8_0.gguf", gguf_testlib.sample_bpe(
        sample_data))
    lay_out_hub_cache(hub_cache, GGUF_REPO, {COMMIT_A: repo}, {"main": COMMIT_A})
    path = hub.resolve_gguf_file(f"{GGUF_REPO}:tiny.Q8_0.gguf")
    assert path == str(hub_cache / "models--tiny-org--tiny-llama-GGUF" / "snapshots" /
                       COMMIT_A / "tiny.Q8_0.gguf")
    assert hub.resolve_gguf_file(f"{GGUF_REPO}@{COMMIT_A}:tiny.Q8_0.gguf") == path
    from_hub = gguf_convert.import_gguf(path)
    _assert_same_params(from_hub.params,
                        gguf_convert.import_gguf(repo / "tiny.Q8_0.gguf").params)


def test_downloads_ask_only_for_what_a_conversion_reads(tmp_path, monkeypatch):
    """Online path, with huggingface_hub's download replaced by a recorder over a fake repo
    listing: the patterns select config, safetensors weights and tokenizer files, nothing
    pickled or duplicated; Flax weights only for a repository without safetensors."""
    files = ["config.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors", "model.safetensors.index.json",
             "consolidated.safetensors", "pytorch_model.bin", "flax_model.msgpack",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "chat_template.jinja", "tokenizer.model", "README.md", "original/params.json"]
    calls = []

    def fake_snapshot(repo_id, *, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, kwargs))
        chosen = [f for f in files if any(fnmatch.fnmatch(f, p) for p in allow_patterns)]
        target = tmp_path / f"snap{len(calls)}"
        for name in chosen:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_text("x")
        if len(calls) == 2:  # the second call fills the same snapshot
            for name in os.listdir(tmp_path / "snap1"):
                shutil.copy(tmp_path / "snap1" / name, target / name)
        return str(target)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    directory = pathlib.Path(hub.resolve_hf_dir("org/model@refs/pr/1"))
    assert sorted(os.listdir(directory)) == sorted(
        ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
         "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "chat_template.jinja"])
    assert calls == [("org/model", "refs/pr/1", {})]  # token, cache: huggingface_hub's own

    files[:] = ["config.json", "flax_model.msgpack", "pytorch_model.bin", "tokenizer.json"]
    calls.clear()
    for leftover in tmp_path.glob("snap*"):
        shutil.rmtree(leftover)
    directory = pathlib.Path(hub.resolve_hf_dir("org/flax-only"))
    assert len(calls) == 2
    assert sorted(os.listdir(directory)) == ["config.json", "flax_model.msgpack",
                                             "tokenizer.json"]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **env}
    full.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "activeit_jax.main", "convert", *args],
                          cwd=REPO_ROOT, env=full, capture_output=True, text=True, timeout=300)


def test_convert_cli_by_hub_id_offline(tmp_path, model_dirs):
    """The real command, its environment set as a user would: HF_HUB_CACHE + HF_HUB_OFFLINE."""
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, REPO, model_dirs, {"main": COMMIT_B, "v1.0": COMMIT_A})
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    for source, commit in ((REPO, COMMIT_B), (f"{REPO}@v1.0", COMMIT_A)):
        ckpt = tmp_path / f"ckpt_{commit[0]}"
        result = _cli(f"--from_hf={source}", f"--to={ckpt}", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"converted {source} (llama" in result.stdout
        model, params = checkpoints.load_model(ckpt)
        expected = hf_convert.import_hf_model(model_dirs[commit])
        assert model.config == expected.model.config
        _assert_same_params(params, expected.params)
        assert vocab_lib.vocabulary_from_checkpoint(ckpt) == expected.vocabulary
    result = _cli("--from_hf=tiny-org/absent", f"--to={tmp_path / 'x'}", env=env)
    errors = [line for line in result.stderr.splitlines() if "activeit-jax convert" in line]
    assert result.returncode == 1 and errors == [
        "activeit-jax convert: error: tiny-org/absent: not in the Hugging Face cache and "
        "HF_HUB_OFFLINE is set (unset it, or fetch it once with network access)"]
    assert not (tmp_path / "x").exists()
