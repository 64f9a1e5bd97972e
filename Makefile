# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
# The torch/torchvision pair that installs (from local wheels) on our x86_64 build machines;
# timm needs torchvision, and other torch builds cannot load the index's torchvision.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test test-slow lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e ".[test]" $(TORCH_PINS)
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/edgevt export efficientnet_lite0 --pretrained --target onnx -o runs/demo-efficientnet_lite0 \
		--eval-data $(DATA)/imagenet-val1000
	$(BIN)/edgevt export levit_128s --target onnx -o runs/demo-levit_128s-random-init \
		--eval-data $(DATA)/imagenet-val1000 --limit 200
	$(BIN)/edgevt eval runs/demo-efficientnet_lite0/model.onnx --data $(DATA)/imagenet-val1000 --json

test: venv
	$(BIN)/ruff check edgevt tests benchmarks
	$(BIN)/pytest -q

test-slow: venv
	$(BIN)/pytest -q -m slow

clean:
	rm -rf runs .pytest_cache
