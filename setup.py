"""activeit-jax: Active Instruction Tuning on JAX/Flax (TPU and GPU native).

`pip install .` gives everything the commands import (no extras needed). Extras:
  seqio    seqio + TensorFlow, for the seqio tasks of `activeit_jax.tasks` (t5x-style use);
           the commands themselves never import TensorFlow.
  test     what the test suite adds: the PyTorch references, seqio, pytest, libtpu.
  tpu      jax with its TPU runtime (libtpu), as the launchers install it on a TPU VM.
  cuda12   jax with CUDA 12.

Pinned versions: requirements.lock (runtime) and requirements-test.lock (tests); `make lock`
regenerates both. tests/test_packaging.py checks that every module the package imports is
listed here.
"""
from setuptools import find_namespace_packages, setup

# Every third-party module `activeit_jax` imports, by distribution name.
INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "ml_dtypes",  # bfloat16 / float8 arrays in checkpoint conversion
    "msgpack",  # Flax msgpack weights (convert --from_hf of a Flax-only Hub repo)
    "gin-config>=0.5",
    "absl-py",
    "numpy",
    "rouge-score",
    "sentencepiece",
    "tokenizers",  # Hugging Face tokenizer.json vocabularies (byte-level BPE)
    "jinja2>=3.1",  # chat templates (the `_chat` prompt formats), sandboxed
    "safetensors",  # convert --from_hf / --to_hf
    "huggingface_hub",  # convert --from_hf=org/name (Hub ids)
    "gguf",  # llama.cpp GGUF import (activeit-jax convert --from_gguf)
    "matplotlib",
    "scipy",  # t quantiles of the reports' confidence intervals (jax requires it too)
    "tqdm",
]

SEQIO = ["seqio>=0.0.20", "tensorflow>=2.21", "tensorflow-text>=2.21",
         "tensorflow-datasets>=4.9.10"]

EXTRAS_REQUIRE = {
    "seqio": SEQIO,
    # The test suite: reference-equivalence tests compare our Flax models with the PyTorch
    # originals (accelerate: transformers needs it to load a GGUF file); the seqio tasks;
    # libtpu: tests compile for small TPU topologies on the CPU.
    "test": ["pytest", "torch>=2.13", "transformers>=5,<6", "accelerate", "libtpu", *SEQIO],
    "cuda12": ["jax[cuda12]"],
    # The jax of requirements.lock with its TPU runtime (libtpu), as the launchers install it
    # on a TPU VM (`launch/common.py`); `activeit-jax compile` needs it to compile for TPU
    # topologies on any machine.
    "tpu": ["jax[tpu]==0.10.2"],
}

# The repository keeps `tasks/` (seqio registrations), `configs/` (gin files) and
# `data/sample/` at its top; they install inside the package, so no top-level `tasks` module
# is installed and an installed wheel finds its configs (`activeit_jax.core.resources`).
PACKAGE_DIR = {
    "activeit_jax.tasks": "tasks",
    "activeit_jax.configs": "configs",
    "activeit_jax.data.sample": "data/sample",
}

setup(
    name="activeit-jax",
    version="0.1.0",
    description="Active Instruction Tuning (prompt uncertainty task selection) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Namespace packages too: activeit_jax/core, loop, training ... have no __init__.py.
    packages=[*find_namespace_packages(include=["activeit_jax", "activeit_jax.*"],
                                       exclude=["*.__pycache__"]), *PACKAGE_DIR],
    package_dir=PACKAGE_DIR,
    package_data={"activeit_jax": ["py.typed"],
                  "activeit_jax.configs": ["**/*.gin"],
                  "activeit_jax.data.sample": ["**/*.json", "**/*.jsonl", "**/*.txt",
                                               "**/*.model", "**/*.vocab", "*.md", "**/LICENSE",
                                               "**/DATA_LICENSE"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["activeit-jax=activeit_jax.main:run_main"]},
)
