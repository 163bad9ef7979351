# Two entry points (see README): `make demo` sets everything up and edits a portrait with the bundled
# model; `make test` sets everything up and runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PIP_FLAGS := -q -c constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[test,faces,onnx,lora]'
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps --target $(VENV)/typing/tensorrt-stubs tensorrt-stubs==10.13.0.35.1
	touch $@

.PHONY: setup demo test
setup: $(VENV)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pedit edit examples/toon.png --direction laughing --compare --overwrite

test: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -p no:cacheprovider
