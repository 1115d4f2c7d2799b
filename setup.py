"""activeit-jax: Active Instruction Tuning on JAX/Flax (TPU and GPU native)."""
from setuptools import find_packages, setup

setup(
    name="activeit-jax",
    version="0.1.0",
    description="Active Instruction Tuning (prompt uncertainty task selection) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["activeit_jax", "activeit_jax.*", "tasks"]),
    package_data={"activeit_jax": ["py.typed"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "seqio>=0.0.20",
        "tensorflow>=2.21",
        "tensorflow-text>=2.21",
        "tensorflow-datasets>=4.9.10",
        "gin-config>=0.5",
        "numpy",
        "rouge-score",
        "sentencepiece",
        "tokenizers",  # Hugging Face tokenizer.json vocabularies (byte-level BPE)
        "gguf",  # llama.cpp GGUF import (activeit-jax convert --from_gguf)
        "matplotlib",
        "tqdm",
        "absl-py",
    ],
    extras_require={
        # Reference-equivalence tests compare our Flax models with the PyTorch originals.
        # accelerate: transformers needs it to load a GGUF file (the SmolLM2 reference).
        "test": ["pytest", "torch>=2.13", "transformers>=5,<6", "safetensors", "accelerate"],
        "cuda12": ["jax[cuda12]"],
        # The jax of requirements.lock with its TPU runtime (libtpu), as the launchers install
        # it on a TPU VM (`launch/common.py`: pip install -e '.[tpu]'); `activeit-jax compile`
        # needs it to compile for TPU topologies on any machine.
        "tpu": ["jax[tpu]==0.10.2"],
    },
    entry_points={"console_scripts": ["activeit-jax=activeit_jax.main:run_main"]},
)
