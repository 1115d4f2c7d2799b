"""`activeit-jax convert`: Hugging Face (safetensors) <-> activeit-jax (orbax) checkpoints.

  activeit-jax convert --from_hf=HF_DIR --to=CKPT_DIR
      HF_DIR: config.json + model.safetensors (or a sharded model.safetensors.index.json) of a
      T5ForConditionalGeneration (T5 v1.1 / LM-adapted / original T5) or LlamaForCausalLM.
  activeit-jax convert --from=CKPT_DIR --to_hf=HF_DIR [--max_shard_size=5GB]
      Writes config.json + float32 safetensors, sharded with an index when large.

Exit status 0 on success, 1 on a conversion error (message on stderr), 2 on bad flags.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging

flags.DEFINE_string("from_hf", None, "Hugging Face model directory to import.")
flags.DEFINE_string("to", None, "activeit-jax checkpoint directory to write (with --from_hf).")
flags.DEFINE_string("from", None, "activeit-jax checkpoint directory to export.")
flags.DEFINE_string("to_hf", None, "Hugging Face directory to write (with --from).")
flags.DEFINE_string("max_shard_size", "5GB",
                    "Largest safetensors file written by --to_hf; bigger models are sharded.")

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from_hf, to, from_ckpt, to_hf = FLAGS.from_hf, FLAGS.to, FLAGS["from"].value, FLAGS.to_hf
    importing = bool(from_hf or to)
    exporting = bool(from_ckpt or to_hf)
    if importing == exporting or (importing and not (from_hf and to)) or (
            exporting and not (from_ckpt and to_hf)):
        raise app.UsageError("use either --from_hf=DIR --to=CKPT_DIR or "
                             "--from=CKPT_DIR --to_hf=DIR")

    if not FLAGS["verbosity"].present:
        # orbax logs every save/restore step at INFO; keep the console to our one-line result.
        logging.set_verbosity(logging.WARNING)

    # Imported here so that `--help` and flag errors stay fast.
    from activeit_jax import checkpoints
    from activeit_jax.models import hf_convert

    try:
        if importing:
            model = checkpoints.import_hf_to_checkpoint(from_hf, to)
            print(f"converted {from_hf} ({model.kind}, {model.num_params():,} parameters) "
                  f"-> {to}")
        else:
            files = checkpoints.export_checkpoint_to_hf(from_ckpt, to_hf, FLAGS.max_shard_size)
            print(f"exported {from_ckpt} -> {to_hf}: {', '.join(files)}")
    except (hf_convert.ConversionError, checkpoints.CheckpointError, ValueError) as err:
        print(f"activeit-jax convert: error: {err}", file=sys.stderr)
        sys.exit(1)
