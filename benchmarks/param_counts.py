"""Parameter counts of the gin model configs, from shapes only (`jax.eval_shape`).

Nothing is allocated, so LLaMA-7B counts in a second on a laptop. Published counts are shown
beside ours as a check that the configs (and the layer shapes) match the real checkpoints.

  python benchmarks/param_counts.py [--configs t5_large llama_7b ...]
"""
from __future__ import annotations

import argparse
import os
import sys

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from activeit_jax.core import gin_utils  # noqa: E402
from activeit_jax.models import BaseModel, DecoderOnlyModel, EncoderDecoderModel  # noqa: E402

# Published totals: google/t5-*-lm-adapt model cards / the checkpoints' tensor sizes, and the
# LLaMA paper's 6.7B (exactly 6,738,415,616 in the released checkpoint).
PUBLISHED = {
    "t5_small": ("google/t5-small-lm-adapt", 76_961_152),
    "t5_base": ("google/t5-base-lm-adapt", 247_577_856),
    "t5_large": ("google/t5-large-lm-adapt", 783_150_080),
    "t5_xl": ("google/t5-xl-lm-adapt", 2_849_757_184),
    "llama_7b": ("LLaMA-7B", 6_738_415_616),
}


def model_from_gin(config_name: str) -> BaseModel:
    """The `MODEL` of `configs/models/<config_name>.gin`."""
    gin.clear_config()
    gin_utils.parse_gin([f"models/{config_name}.gin"], [])
    reference = gin.query_parameter("%MODEL")
    cls = EncoderDecoderModel if "EncoderDecoderModel" in str(reference) else DecoderOnlyModel
    model = gin.get_configurable(cls)()
    gin.clear_config()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["t5_large", "llama_7b"])
    args = parser.parse_args()
    print(f"load average {os.getloadavg()} ({os.cpu_count()} cores)", flush=True)
    print(f"{'config':<10} {'ours':>15} {'published':>15} {'diff':>8}  reference")
    for name in args.configs:
        count = model_from_gin(name).num_params()  # jax.eval_shape inside: no allocation
        source, published = PUBLISHED.get(name, ("-", None))
        diff = f"{(count - published) / published:+.2%}" if published else "-"
        published_text = f"{published:,}" if published else "-"
        print(f"{name:<10} {count:>15,} {published_text:>15} {diff:>8}  {source}")


if __name__ == "__main__":
    main()
