"""A checkpoint that carries its tokenizer needs no vocabulary anywhere: `train` (from its
initial checkpoint, and its best checkpoint stores it again), `evaluate`, `run`'s experiment;
and without one, one clear error."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import pytest

from activeit_jax.data import vocab as vocab_lib
from activeit_jax.data.errors import VocabularyError
from activeit_jax.models import EncoderDecoderModel, T5Config, checkpoints

REPO = pathlib.Path(__file__).resolve().parents[2]
# The shapes of configs/models/t5_tiny.gin (runs/finetune_tiny.gin checks them).
TINY = T5Config(vocab_size=1152, d_model=64, num_heads=4, d_kv=16, d_ff=128,
                num_encoder_layers=2, num_decoder_layers=2, feed_forward_proj="gated-gelu")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, vocab):
    """A tiny T5 checkpoint that stores the sample SentencePiece vocabulary."""
    model = EncoderDecoderModel(TINY)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoints.save_model(path, model, model.init_params(jax.random.key(0)), vocab)
    return path


def test_checkpoint_stores_and_returns_its_vocabulary(tiny_checkpoint, vocab):
    stored = vocab_lib.vocabulary_from_checkpoint(tiny_checkpoint)
    assert stored.vocab_size == vocab.vocab_size == 1100
    text = "Definition: Answer with yes or no.\n\nOutput: yes"
    assert stored.encode(text) == vocab.encode(text)
    assert (tiny_checkpoint / "spiece.model").read_bytes() == \
        pathlib.Path(vocab.sentencepiece_model_file).read_bytes()
    model, _ = checkpoints.load_model(tiny_checkpoint)  # the extra files do not disturb it
    assert model.config == TINY


def test_a_path_for_a_decoder_only_model_gets_no_t5_sentinels(tiny_checkpoint, sample_data):
    # The commands ask the model layer (`checkpoints.is_decoder_only_checkpoint`); the data
    # layer reads no model config.
    path = str(sample_data / "vocab" / "sample_spm.model")
    assert not checkpoints.is_decoder_only_checkpoint(tiny_checkpoint)
    assert vocab_lib.resolve_vocabulary(path, tiny_checkpoint).vocab_size == 1100
    assert vocab_lib.resolve_vocabulary(path, None, decoder_only=True).vocab_size == 1000


def test_run_experiment_takes_the_checkpoint_tokenizer(parse_experiment, tiny_checkpoint,
                                                       tmp_path, sample_data):
    import gin
    bindings = ['get_vocabulary.path = None',
                f'experiment.init_checkpoint = "{tiny_checkpoint}"']
    exp = parse_experiment("demo_tiny.gin", bindings)
    assert exp.vocabulary.vocab_size == 1100 and exp.init_checkpoint == str(tiny_checkpoint)
    gin.clear_config()
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(VocabularyError, match="no vocabulary: give get_vocabulary.path "
                                              f"\\(gin\\).*checkpoint {bare} stores no"):
        parse_experiment("demo_tiny.gin", ['get_vocabulary.path = None',
                                      f'experiment.init_checkpoint = "{bare}"'])
    gin.clear_config()
    with pytest.raises(VocabularyError, match="no checkpoint to take a tokenizer from"):
        parse_experiment("demo_tiny.gin", ['get_vocabulary.path = None'])


def _cli(*args: str) -> list[str]:
    script = pathlib.Path(sys.executable).parent / "activeit-jax"
    return [str(script), *args] if script.exists() else [sys.executable, "-m",
                                                          "activeit_jax.main", *args]


@pytest.mark.e2e
def test_train_and_evaluate_without_vocab(tiny_checkpoint, tmp_path):
    (tmp_path / "train.txt").write_text("task063_first_i_elements\n")
    out = tmp_path / "run"
    common = ["--verbosity=-1", "--gin.get_vocabulary.path=None"]
    done = subprocess.run(_cli("train", "--gin_file=runs/finetune_tiny.gin",
                               f"--tasks={tmp_path / 'train.txt'}", f"--out={out}",
                               f"--init_checkpoint={tiny_checkpoint}",
                               "--gin.TrainConfig.num_epochs=1",
                               "--gin.TrainConfig.max_instances_per_task=8", *common),
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    best = out / "best"
    assert vocab_lib.vocabulary_from_checkpoint(best).vocab_size == 1100
    # evaluate: neither --vocab nor a gin file; the best checkpoint's own vocabulary.
    done = subprocess.run(_cli("evaluate", f"--checkpoint={best}",
                               f"--niv2_dir={REPO / 'data' / 'sample' / 'niv2'}",
                               f"--tasks={tmp_path / 'train.txt'}", f"--out={tmp_path / 'ev'}",
                               "--max_instances_per_task=2", "--max_source_length=128",
                               "--max_target_length=8", "--verbosity=-1"),
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["num_tasks"] == 1
    # A checkpoint without a stored tokenizer and no vocabulary: one clear error.
    bare = tmp_path / "bare"
    model = EncoderDecoderModel(TINY)
    checkpoints.save_model(bare, model, model.init_params(jax.random.key(1)))
    done = subprocess.run(_cli("evaluate", f"--checkpoint={bare}",
                               f"--niv2_dir={REPO / 'data' / 'sample' / 'niv2'}",
                               f"--tasks={tmp_path / 'train.txt'}", f"--out={tmp_path / 'ev2'}",
                               "--verbosity=-1"),
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode != 0
    assert ("no vocabulary: give --vocab or a gin binding of train_job.vocabulary, or start "
            "from a checkpoint that stores its tokenizer") in done.stderr
