#!/usr/bin/env bash
# GPU check, one script, under 8 minutes: MFU of scoring and training a T5-large-shaped and a
# LLaMA-shaped model (random weights), ours (JAX) and PyTorch on the same GPU.
#
#   bash benchmarks/device_check.sh            # on a machine with a GPU, jax[cuda] and torch
#   bash benchmarks/device_check.sh --dry_run  # every code path on CPU with tiny shapes
#
# Needs jax with CUDA, flax, transformers and torch with CUDA installed for $PYTHON (default:
# .venv/bin/python when present, else python3). Prints one MFU line per model and side; a
# failing section prints its error and the others still run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX would otherwise reserve 75% of the GPU, leaving PyTorch too little; it grows on demand.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || echo "no nvidia-smi"
"$PYTHON" -c "import jax, torch; print('jax', jax.__version__, jax.default_backend(), \
'| torch', torch.__version__, 'cuda', torch.cuda.is_available())"
start=$(date +%s)
timeout 460 "$PYTHON" benchmarks/device_check.py "$@"
echo "device_check done in $(( $(date +%s) - start ))s"
