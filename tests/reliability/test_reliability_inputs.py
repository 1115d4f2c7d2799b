"""Reliability: hostile inputs. Task names that are paths, hostile checkpoint files, damaged
record files. Each reader must refuse with one error naming the file (and line / field)."""
from __future__ import annotations

import json
import shutil
import struct

import jax
import pytest

from activeit_jax.data import errors, niv2, prepared
from activeit_jax.models import EncoderDecoderModel, T5Config, checkpoints, hf_convert
from activeit_jax.training import inputs as train_data

TASK = "task063_first_i_elements"
TINY = T5Config(vocab_size=64, d_model=8, num_heads=2, d_kv=4, d_ff=16,
                num_encoder_layers=1, num_decoder_layers=1)


@pytest.fixture
def niv2_dir(tmp_path, sample_data):
    """An NIV2 root with one task, and a valid task file just outside it (the bait)."""
    root = tmp_path / "niv2"
    (root / "tasks").mkdir(parents=True)
    (root / "splits" / "default").mkdir(parents=True)
    shutil.copy(sample_data / "niv2" / "tasks" / f"{TASK}.json", root / "tasks")
    shutil.copy(sample_data / "niv2" / "tasks" / f"{TASK}.json", tmp_path / "secret.json")
    return root


@pytest.mark.parametrize("name", ["../secret", "../../etc/passwd", "/abs/x", "a/b", "a\\b",
                                  "..", ""])
def test_check_task_name_refuses_paths(name):
    with pytest.raises(errors.TaskNameError, match="refused"):
        niv2.check_task_name(name, "list.txt", "line 2")
    with pytest.raises(errors.TaskNameError):
        niv2.task_file_path("/data/niv2", name)


def test_split_file_naming_a_path_is_refused_with_its_line(niv2_dir):
    split = niv2_dir / "splits" / "default" / "train_tasks.txt"
    split.write_text(f"{TASK}\n../secret\n")
    with pytest.raises(errors.TaskNameError) as info:
        niv2.read_split_names(niv2_dir, "train")
    assert str(split) in str(info.value) and "line 2" in str(info.value)
    assert "'../secret'" in str(info.value)
    with pytest.raises(errors.TaskNameError):
        prepared.prepare_niv2(niv2_dir)


@pytest.mark.parametrize("bad", ["../secret", "/abs/x"])
def test_tasks_file_naming_a_path_is_refused(niv2_dir, tmp_path, bad):
    listing = tmp_path / "train.txt"
    listing.write_text(f"{TASK}\n{bad}\n")
    with pytest.raises(errors.TaskNameError, match="line 2") as info:
        train_data.read_tasks(str(listing), str(niv2_dir))
    assert str(listing) in str(info.value)
    (tmp_path / "sel.json").write_text(json.dumps({"tasks": [TASK, bad]}))
    with pytest.raises(errors.TaskNameError, match=r"tasks\[1\]"):
        train_data.read_tasks(str(tmp_path / "sel.json"), str(niv2_dir))


# ------------------------------------------------------------------------ hostile checkpoints


def _safetensors(path, header: dict, data: bytes = b"", header_len: int | None = None):
    raw = json.dumps(header).encode()
    length = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", length) + raw + data)


def _hf_dir(tmp_path, config: str = '{"model_type": "t5"}'):
    directory = tmp_path / "hf"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(config)
    return directory


def test_safetensors_header_length_is_bounded(tmp_path):
    hf = _hf_dir(tmp_path)
    _safetensors(hf / "model.safetensors", {}, header_len=2 ** 40)
    with pytest.raises(hf_convert.ConversionError, match="header length") as info:
        hf_convert.SafetensorsReader(hf)  # not a MemoryError
    assert str(hf / "model.safetensors") in str(info.value)


def test_truncated_safetensors_names_the_file(tmp_path):
    hf = _hf_dir(tmp_path)
    header = {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}
    _safetensors(hf / "model.safetensors", header, data=b"\0" * 20)  # 44 bytes short
    with pytest.raises(hf_convert.ConversionError, match="truncated") as info:
        hf_convert.SafetensorsReader(hf)
    assert str(hf / "model.safetensors") in str(info.value) and "'w'" in str(info.value)
    (hf / "model.safetensors").write_bytes(b"\x05\0")
    with pytest.raises(hf_convert.ConversionError, match="truncated"):
        hf_convert.SafetensorsReader(hf)
    _safetensors(hf / "model.safetensors", {"w": "garbage"})
    with pytest.raises(hf_convert.ConversionError, match="malformed header entry"):
        hf_convert.SafetensorsReader(hf)


def test_garbled_hf_config_and_index_name_the_file(tmp_path):
    hf = _hf_dir(tmp_path, '{"model_type": "t5",\n  "d_model": }')
    with pytest.raises(hf_convert.ConversionError, match="line 2") as info:
        hf_convert.import_hf(hf)
    assert str(hf / "config.json") in str(info.value)
    (hf / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(hf_convert.ConversionError, match="index.json: line 1"):
        hf_convert.SafetensorsReader(hf)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model = EncoderDecoderModel(TINY)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoints.save_model(path, model, model.init_params(jax.random.key(0)))
    return path


def test_garbled_checkpoint_config_names_file_and_line(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    (bad / "config.json").write_text('{"format": "activeit-jax",\n "model_kind": ')
    with pytest.raises(checkpoints.CheckpointError, match="line 2") as info:
        checkpoints.read_model(bad)
    assert str(bad / "config.json") in str(info.value)


def _params_files(directory):
    return sorted(p for p in (directory / "params").rglob("*")
                  if p.is_file() and p.parent.name == "d")


# The reads a failed restore abandoned report to the closed event loop after the test, to
# pytest's hook rather than the one `checkpoints.quiet_abandoned_reads` installs (the CLI
# tests check that a user sees none of it).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_params_file_is_a_checkpoint_error(tiny_checkpoint, tmp_path, damage):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    for data_file in _params_files(bad):
        if damage == "truncate":
            data_file.write_bytes(data_file.read_bytes()[:10])
        else:
            data_file.unlink()
    with pytest.raises(checkpoints.CheckpointError, match="cannot read the params.*damaged") \
            as info:
        checkpoints.load_model(bad)
    assert str(bad / "params") in str(info.value) and "TensorStore" not in str(info.value)


def test_checkpoint_of_another_shape_names_the_parameter(tiny_checkpoint, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    spec = json.loads((other / "config.json").read_text())
    spec["config"]["d_ff"] = 32
    (other / "config.json").write_text(json.dumps(spec))
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"mlp\.wi_0\.kernel is stored with shape \(8, 16\), the config "
                             r"implies \(8, 32\)"):
        checkpoints.load_model(other)


# ------------------------------------------------------------------------ record files


def test_jsonl_reader_names_the_torn_line(tmp_path):
    from activeit_jax.core import records
    path = tmp_path / "pool.jsonl"
    path.write_text('{"name": "a"}\n{"name": "b", "lab\n{"name": "c"}\n')
    with pytest.raises(errors.RecordError, match="line 2"):
        list(records.iter_jsonl(path))
    from activeit_jax.core import io_utils
    with pytest.raises(errors.RecordError, match="line 2"):
        io_utils.read_jsonl(path)  # a journal torn in the middle is damage, not a kill


def test_score_records_refuse_duplicates_and_bad_fields(tmp_path):
    from activeit_jax.core import records
    path = tmp_path / "scores.jsonl"
    path.write_text('{"task": "a", "prompt_uncertainty": 0.1}\n'
                    '{"task": "a", "prompt_uncertainty": 0.2}\n')
    with pytest.raises(errors.RecordError, match="line 2.*scored twice.*line 1"):
        records.read_score_records(path)
    path.write_text('{"task": "a", "prompt_uncertainty": NaN}\n')
    with pytest.raises(errors.RecordError, match="prompt_uncertainty"):
        records.read_score_records(path)
    assert records.read_score_records(path, allow_nonfinite=True)[0]["task"] == "a"
    path.write_bytes(b'\xff{"task": "a"}\n')
    with pytest.raises(errors.DataError, match="not UTF-8"):
        records.read_score_records(path)
