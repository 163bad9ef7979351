# Two entry points (see README): `make demo` sets everything up and edits a portrait with the bundled
# model; `make test` sets everything up and runs the test suite. Both create .venv on first use.
# `make docs` builds the documentation site into site/ with --strict (a broken link or reference fails).
PYTHON ?= python3
VENV := .venv
PIP_FLAGS := -q -c constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[test,faces,onnx,lora,datasets,app,docs]'
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps --target $(VENV)/typing/tensorrt-stubs tensorrt-stubs==10.13.0.35.1
	touch $@

.PHONY: setup browser demo test docs
setup: $(VENV)/.installed

# The web app's browser test drives Debian's chromium through chromedriver. Installed here when
# missing and we are root (CI is); otherwise, or when apt-get fails, that one test skips and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "chromium could not be installed: the app's browser test will skip"; \
	  else echo "chromium and chromium-driver are not installed (needs root): the app's browser test will skip"; fi; \
	fi

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pedit edit examples/toon.png --direction laughing --compare --overwrite

test: setup browser
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -p no:cacheprovider

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
