# Two entry points, each installing what it needs into .venv first:
#   make run    the service + Gradio demo on the embedded model (prints both URLs)
#   make test   the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0: a CPU machine here takes the local CPU wheel; elsewhere PyPI's (CUDA) build.
TORCH ?= torch==2.13.0

.PHONY: install run test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[serve,demo,dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/omnidit up

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/dit_step.py

clean:
	rm -rf $(VENV) .pytest_cache out
