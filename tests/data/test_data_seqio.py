"""Vocabulary and SeqIO: the bundled vocab, training determinism, tokenised datasets."""
import filecmp
import os

import gin
import pytest
import seqio

from activeit_jax.data import niv2, prompts, seqio_tasks, vocab
from activeit_jax.data.errors import VocabularyError

SEQ_LEN = {"inputs": 1024, "targets": 128}


@pytest.fixture(scope="module")
def sample_vocab(sample_data):
    return vocab.get_vocabulary(sample_data / "vocab" / "sample_spm.model")


def test_sample_vocabulary(sample_vocab):
    assert sample_vocab.vocab_size == 1100  # 1000 pieces + 100 sentinels
    assert (sample_vocab.pad_id, sample_vocab.eos_id, sample_vocab.unk_id) == (0, 1, 2)
    text = "Definition: x.\n\n Positive Example 1 -\nInput: 7.\n Output: é ☃\n\nOutput: "
    assert sample_vocab.decode(sample_vocab.encode(text)) == text  # verbatim round trip


def test_vocabulary_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(VocabularyError, match=f"{missing}: SentencePiece model not found"):
        vocab.get_vocabulary(missing)
    with pytest.raises(VocabularyError, match="a directory"):
        vocab.get_vocabulary(tmp_path)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(VocabularyError, match=f"{garbage}: not a valid SentencePiece model"):
        vocab.get_vocabulary(garbage)


def test_train_sentencepiece_is_deterministic(tmp_path, sample_data):
    tasks = niv2.read_niv2_split(sample_data / "niv2", "test")
    texts = [t.definition for t in tasks] + [i.input for t in tasks for i in t.instances]
    a = vocab.train_sentencepiece(texts, tmp_path / "a" / "spm", vocab_size=400)
    b = vocab.train_sentencepiece(texts, tmp_path / "b" / "spm", vocab_size=400)
    assert open(a, "rb").read() == open(b, "rb").read()
    assert sorted(os.listdir(tmp_path / "a")) == ["spm.model", "spm.vocab"]  # no temp left
    v = vocab.get_vocabulary(a, extra_ids=0)
    assert v.vocab_size == 400 and v.tokenizer.bos_id() == -1


def test_bundled_sample_is_reproducible(tmp_path, shared_data, sample_data):
    import subprocess
    import sys
    subprocess.run([sys.executable, str(sample_data / "make_sample.py"),
                    f"--shared={shared_data}", f"--out={tmp_path}"], check=True,
                   capture_output=True)
    for sub in ("niv2/tasks", "niv2/splits/default", "self_instruct", "vocab"):
        left, right = sample_data / sub, tmp_path / sub
        names = sorted(os.listdir(left))
        assert names == sorted(os.listdir(right)), sub
        match, mismatch, errors = filecmp.cmpfiles(left, right, names, shallow=False)
        assert mismatch == [] and errors == [], (sub, mismatch, errors)


def test_niv2_seqio_task_decodes_back_to_the_prompt(sample_data, sample_vocab):
    tasks = [niv2.load_niv2_task(sample_data / "niv2" / "tasks" / f"{name}.json")
             for name in ("task092_check_prime_classification", "task1289_trec_classification")]
    tasks = [niv2.select_instances(t, 3, 0, False) for t in tasks]
    seqio_tasks.register_niv2_task("test_data_niv2_two", tasks, sample_vocab)
    task = seqio_tasks.register_niv2_task("test_data_niv2_two", tasks, sample_vocab)  # again: ok
    examples = list(task.get_dataset(SEQ_LEN, split="train", shuffle=False).as_numpy_iterator())
    assert len(examples) == 6
    fits = prompts.make_fits(sample_vocab, 1024)
    for example, (t, inst) in zip(examples, [(t, i) for t in tasks for i in t.instances]):
        prompt = prompts.render_tk_instruct(prompts.tk_instruct_parts(t, inst), fits)
        assert example["inputs_pretokenized"].decode() == prompt
        assert example["targets_pretokenized"].decode() == inst.outputs[0]
        assert example["task_name"].decode() == t.name
        assert example["instance_id"].decode() == inst.id
        assert [r.decode() for r in example["references"]] == list(inst.outputs)
        inputs, targets = example["inputs"].tolist(), example["targets"].tolist()
        assert inputs[-1] == 1 and targets[-1] == 1  # EOS
        assert sample_vocab.decode(inputs[:-1]) == prompt
        assert sample_vocab.decode(targets[:-1]) == inst.outputs[0]
    assert examples[0]["inputs_pretokenized"].decode().startswith(
        "Definition: In this task, you need to output 'Yes'")


def test_long_sources_drop_examples_then_trim_keeping_eos(sample_data, sample_vocab):
    task = niv2.load_niv2_task(
        sample_data / "niv2" / "tasks" / "task092_check_prime_classification.json")
    seq = seqio_tasks.register_niv2_task("test_data_niv2_short", [task], sample_vocab,
                                         max_instances_per_task=2, max_source_length=64)
    example = next(seq.get_dataset({"inputs": 64, "targets": 8}, split="train",
                                   shuffle=False).as_numpy_iterator())
    assert "Positive Example" not in example["inputs_pretokenized"].decode()
    assert len(example["inputs"]) == 64 and example["inputs"][-1] == 1
    assert seqio_tasks.num_examples("test_data_niv2_short") == 2


def test_self_instruct_task_and_mixture(sample_data, sample_vocab):
    from activeit_jax.data import self_instruct
    tasks = self_instruct.load_self_instruct(sample_data / "self_instruct" / "alpaca_sample.json",
                                             max_items=4)
    names = seqio_tasks.register_per_task(tasks, sample_vocab, prefix="test_data_si_")
    assert names["alpaca_sample_00000"] == "test_data_si_alpaca_sample_00000"
    mixture = seqio_tasks.make_mixture("test_data_si_mix", list(names.values()))
    seqio_tasks.make_mixture("test_data_si_mix", list(names.values()))  # replace: no error
    assert seqio.get_mixture_or_task("test_data_si_mix") is not mixture
    examples = list(seqio_tasks.get_dataset("test_data_si_mix", {"inputs": 512, "targets": 128},
                                            seed=0).take(8).as_numpy_iterator())
    seen = {e["task_name"].decode() for e in examples}
    assert seen <= {t.name for t in tasks} and len(seen) >= 2
    by_name = {t.name: t for t in tasks}
    for e in examples:
        t = by_name[e["task_name"].decode()]
        prompt = prompts.alpaca_prompt(t.definition, t.instances[0].input)
        assert e["inputs_pretokenized"].decode() == prompt
        assert e["inputs"][-1] != 1  # decoder-only prompt: no EOS between prompt and response
        assert sample_vocab.decode(e["inputs"].tolist()) == prompt
    with pytest.raises(ValueError, match="not registered"):
        seqio_tasks.make_mixture("test_data_bad_mix", ["no_such_task"])


def test_gin_data_config_and_sample_registration(sample_data):
    from activeit_jax import tasks as tasks_module
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(
            [os.path.join(tasks_module.REPO_ROOT, "configs", "pools", "sample.gin")], [])
        from activeit_jax.data import configurables
        assert configurables.get_vocabulary().vocab_size == 1100  # path bound by the file
        assert gin.query_parameter("%MAX_SOURCE_LENGTH") == 1024
        assert gin.query_parameter("%MAX_TARGET_LENGTH") == 128
    finally:
        gin.clear_config()
    registered = seqio.TaskRegistry.names()
    assert set(tasks_module.SAMPLE_TASK_NAMES) <= set(registered)
    assert seqio_tasks.num_examples("activeit_sample_niv2_test") == sum(
        len(t.instances) for t in niv2.read_niv2_split(sample_data / "niv2", "test"))
