#!/usr/bin/env bash
# GPU check of the multimodal teachers, on a machine with a CUDA device:
#   bash bench/gpu_check.sh            (PYTHON=/path/to/python to pick the interpreter)
# Builds a tiny LLaVA (CLIP vision tower + Llama LM, random weights, from configs: no
# download), runs the vllm_engine tests and the vision-teacher tests, then small
# multimodal caching jobs on real JPEG frames: the tiny LLaVA through vllm_engine (frames
# as multi_modal_data) and through hf_local on cuda. Prints what it ran. Without a CUDA
# device it says so and exits 0; without vLLM it runs the hf_local part and says why.
# GPU_CHECK_DEVICE=cpu runs the same steps on CPU (the hf_local job on cpu; vLLM parts
# only where vLLM is importable): a dry run of this script. Not part of `make bench`
# (which runs bench/*.py only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: skipped: torch ($PY) sees no CUDA device; nothing to check here"
    exit 0
  fi
  "$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
else
  echo "gpu_check: dry run on $DEVICE (GPU_CHECK_DEVICE=$DEVICE)"
fi
if "$PY" -c 'import vllm' 2>/dev/null; then
  VLLM=1; "$PY" -c 'import vllm; print("gpu_check: vllm", vllm.__version__)'
else
  VLLM=0; echo "gpu_check: vLLM is not importable (pip install -c constraints.txt -e '.[vllm]'): vllm_engine parts skipped"
fi
t0=$(date +%s)
out=$(mktemp -d)
echo "== pytest tests/integration/test_vllm_engine.py tests/integration/test_vlm_teacher.py"
"$PY" -m pytest -q -p no:cacheprovider -rs tests/integration/test_vllm_engine.py \
  tests/integration/test_vlm_teacher.py
echo "== tiny LLaVA built in $out/vlm; frames dataset in $out/data"
"$PY" -m tests.support.tiny_vlm "$out/vlm"
"$PY" - "$out" <<'PYEOF'
import sys
from pathlib import Path

from tests.support.frames_data import frames_dataset
from workbench.config import dump_config

out = Path(sys.argv[1])
cfg = frames_dataset(out / "data", frame_counts=(3, 2, 1, 3, 2, 1, 3, 2, 1, 3, 2, 1))
dump_config(cfg, out / "data", "data.yaml")
print("wrote", out / "data" / "data.yaml")
PYEOF
run_job() {  # $1: teacher YAML name; the rest: its lines
  local name=$1; shift
  printf '%s\n' "$@" > "$out/$name.yaml"
  echo "== workbench cache run --teacher $name.yaml ($*)"
  local t1; t1=$(date +%s)
  for template in sentiment_polarity context_aware; do
    "$PY" -m workbench.cli cache run --teacher "$out/$name.yaml" --data "$out/data/data.yaml" \
      --template "$template" --cache "$out/cache-$name"
  done
  "$PY" -m workbench.cli cache status "$out/cache-$name"
  echo "== $name: $(( $(date +%s) - t1 )) s"
}
run_job "hf_local_$DEVICE" "backend: hf_local" "model: $out/vlm" "api: chat" "device: $DEVICE" "max_tokens: 8"
if [ "$VLLM" = 1 ]; then
  run_job vllm_engine "backend: vllm_engine" "model: $out/vlm" "api: chat" "device: $DEVICE" \
    "max_model_len: 1024" "gpu_memory_utilization: 0.3" "max_tokens: 8"
fi
echo "== gpu_check done in $(( $(date +%s) - t0 )) s (outputs in $out)"
