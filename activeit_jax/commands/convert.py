"""`activeit-jax convert`: Hugging Face (safetensors) or GGUF -> activeit-jax (orbax), and back.

  activeit-jax convert --from_hf=HF_DIR|ORG/NAME[@REVISION] --to=CKPT_DIR
      HF_DIR: config.json + model.safetensors (or a sharded model.safetensors.index.json; else
      Flax flax_model.msgpack) of a T5ForConditionalGeneration (T5 v1.1 / LM-adapted /
      original T5), LlamaForCausalLM or Qwen2ForCausalLM; its tokenizer.json +
      tokenizer_config.json, when present, are stored in CKPT_DIR (later commands then need
      no --vocab). ORG/NAME[@REVISION]: a Hugging Face Hub repository (branch, tag or commit),
      fetched into the Hub cache (config, weights, tokenizer files only), honouring HF_TOKEN,
      HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE. An existing local path always wins.
  activeit-jax convert --from_gguf=FILE.gguf|ORG/NAME[@REVISION]:FILE.gguf --to=CKPT_DIR
      A llama.cpp GGUF file of the "llama" (LLaMA, Mistral, SmolLM2, TinyLlama) or "qwen2"
      architecture, with a byte-level BPE ("gpt2") or SentencePiece ("llama") tokenizer,
      dequantized to float32; the tokenizer described in its metadata is stored in CKPT_DIR.
      A file in a Hub repository is fetched into the Hub cache as above.
  activeit-jax convert --from=CKPT_DIR --to_hf=HF_DIR [--max_shard_size=5GB]
      Writes config.json + float32 safetensors, sharded with an index when large.

CKPT_DIR appears only when complete (written to a temporary directory, then renamed); a
refused input writes nothing. CKPT_DIR must be new or an empty directory; an existing
activeit-jax checkpoint there is replaced only with --overwrite (and only its own files are
removed); anything else there (a file, a Hugging Face directory, `.`) is refused before any
input is read. HF_DIR may hold other files (a tokenizer); a model already there (config.json,
model*.safetensors) is replaced only with --overwrite. Exit status 0 on success, 1 on a
conversion error (one line on stderr naming the file), 2 on bad flags.
"""
from __future__ import annotations

import sys
import time

from absl import app, flags

flags.DEFINE_string("from_hf", None, "Hugging Face model directory, or Hub id "
                    "org/name[@revision], to import.")
flags.DEFINE_string("from_gguf", None, "llama.cpp GGUF file, or org/name[@revision]:FILE.gguf "
                    "on the Hugging Face Hub, to import.")
flags.DEFINE_string("to", None, "activeit-jax checkpoint directory to write (with --from_hf or "
                    "--from_gguf).")
flags.DEFINE_bool("overwrite", False, "Replace an existing activeit-jax checkpoint at --to "
                  "(anything else there is always refused), or the config.json and weight "
                  "files of a model at --to_hf.")
flags.DEFINE_string("from", None, "activeit-jax checkpoint directory to export.")
flags.DEFINE_string("to_hf", None, "Hugging Face directory to write (with --from).")
flags.DEFINE_string("max_shard_size", "5GB",
                    "Largest safetensors file written by --to_hf; bigger models are sharded.")

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from_hf, to, from_ckpt, to_hf = FLAGS.from_hf, FLAGS.to, FLAGS["from"].value, FLAGS.to_hf
    from_gguf = FLAGS.from_gguf
    importing = bool(from_hf or from_gguf or to)
    exporting = bool(from_ckpt or to_hf)
    if importing == exporting or (importing and (not to or bool(from_hf) == bool(from_gguf))) \
            or (exporting and not (from_ckpt and to_hf)):
        raise app.UsageError("use one of --from_hf=DIR --to=CKPT_DIR, "
                             "--from_gguf=FILE --to=CKPT_DIR, --from=CKPT_DIR --to_hf=DIR")

    if not FLAGS["verbosity"].present:
        # orbax logs every save/restore step at INFO; keep the console to our progress lines
        # and the one-line result.
        from activeit_jax.commands import common
        common.quiet_library_logs()

    # Imported here so that `--help` and flag errors stay fast.
    from activeit_jax.models import checkpoints, hf_convert, hub

    try:
        if importing:
            source = from_hf or from_gguf
            started = time.monotonic()
            model = (checkpoints.import_hf_to_checkpoint(hub.resolve_hf_dir(from_hf), to,
                                                         FLAGS.overwrite)
                     if from_hf else
                     checkpoints.import_gguf_to_checkpoint(hub.resolve_gguf_file(from_gguf), to,
                                                           FLAGS.overwrite))
            print(f"converted {source} ({model.describe()}) "
                  f"-> {to} in {time.monotonic() - started:.1f} s")
        else:
            files = checkpoints.export_checkpoint_to_hf(from_ckpt, to_hf, FLAGS.max_shard_size,
                                                        FLAGS.overwrite)
            print(f"exported {from_ckpt} -> {to_hf}: {', '.join(files)}")
    except (hf_convert.ConversionError, checkpoints.CheckpointError, ValueError) as err:
        print(f"activeit-jax convert: error: {err}", file=sys.stderr)
        sys.exit(1)
