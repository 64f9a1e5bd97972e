# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
# The torch/torchvision pair that installs (from local wheels) on our x86_64 build machines;
# timm needs torchvision, and other torch builds cannot load the index's torchvision.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv browser qemu demo test test-slow lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e ".[test,all]" $(TORCH_PINS)
	touch $@

venv: $(BIN)/.installed

# The report test renders the HTML page in Debian's headless Chromium (skipped without it).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get install -y -qq chromium \
		|| { apt-get update -qq && apt-get install -y -qq chromium; }; } >/dev/null 2>&1; } \
		|| echo "note: chromium not installed (apt-get install chromium); the HTML render test will skip"

# `edgevt bundle --verify-aarch64` and its tests run bundles under qemu-aarch64 (Debian's qemu-user).
qemu:
	@command -v qemu-aarch64 >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get install -y -qq qemu-user \
		|| { apt-get update -qq && apt-get install -y -qq qemu-user; }; } >/dev/null 2>&1; } \
		|| echo "note: qemu-user not installed (apt-get install qemu-user); the aarch64 tests will skip"

LITE0 := runs/demo-efficientnet_lite0
LEVIT := runs/demo-levit_128s-random-init

demo: venv
	$(BIN)/edgevt export efficientnet_lite0 --pretrained --target onnx -o $(LITE0) \
		--int8 --calib $(DATA)/imagenet-sample1000 --eval-data $(DATA)/imagenet-val1000
	$(BIN)/edgevt export levit_128s --target onnx -o $(LEVIT) \
		--int8 --calib $(DATA)/imagenet-sample1000 --eval-data $(DATA)/imagenet-val1000 --limit 200
	$(BIN)/edgevt bench $(LITE0)/model.onnx $(LITE0)/model_int8.onnx --threads 1 2
	$(BIN)/edgevt bench $(LEVIT)/model.onnx $(LEVIT)/model_int8.onnx --threads 1 2
	$(BIN)/edgevt bundle $(LITE0) --device raspberry-pi-5 -o runs/demo-bundle-pi5 --force
	$(BIN)/python runs/demo-bundle-pi5/run_bundle.py --threads 2 --seconds 2
	$(BIN)/edgevt report $(LITE0) $(LEVIT) -o reports/demo \
		--device-results $$(ls -t runs/demo-bundle-pi5/results/*.json | head -1)
	$(BIN)/edgevt eval $(LITE0)/model_int8.onnx --data $(DATA)/imagenet-val1000 --json

# Two pytest workers, one test file each at a time (its module fixtures built once): the
# 2-core build machine runs the default suite in about 6 minutes instead of 8.
test: venv browser qemu
	$(BIN)/ruff check edgevt tests benchmarks
	$(BIN)/pytest -q -n 2 --dist loadfile

test-slow: venv qemu
	$(BIN)/pytest -q -m slow

clean:
	rm -rf runs .pytest_cache
