# Two entry points: `make run` (install, then generate an image with the shipped model) and
# `make test` (install, then run the test suite). Both are idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genloom-installed

.PHONY: install run run-flow test browser bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[editor,test]'
	$(PY) -m pip install -q --no-deps 'k-diffusion==0.1.1.post1'  # the samplers' reference (tests only)
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m genloom.cli run workflows/txt2img.json --output-dir output

run-flow: install  # the second shipped model: Flux.1-style split files, the custom sampler graph
	$(PY) -m genloom.cli run workflows/flux_txt2img.json --output-dir output

browser:
	bash tools/install_browser.sh

test: install browser
	$(PY) -m pytest -q

bench: install
	$(PY) bench/executor_overhead.py
	$(PY) bench/end_to_end.py
	$(PY) bench/server.py

clean:
	rm -rf $(VENV) output temp
