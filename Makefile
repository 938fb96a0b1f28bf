# Two entry points, each installing what it needs into .venv first:
#   make run    the service + Gradio demo on the embedded model (prints both URLs)
#   make test   the test suite
# Installs take the exact versions in requirements/lock.txt; pyproject.toml keeps the ranges
# a library user gets. `make lock` regenerates the lock, `make test-latest` runs the suite
# against the newest versions pyproject.toml allows (in .venv-latest), so drift is found on purpose.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIP_VERSION ?= 26.3
LOCK := requirements/lock.txt
EXTRAS := .[serve,demo,dev]
# torch 2.13.0: a CPU machine here takes the local CPU wheel; elsewhere PyPI's (CUDA) build.
TORCH ?= torch==2.13.0

.PHONY: install run test test-latest lock bench clean train-shapes distill-shapes

$(VENV)/.installed: pyproject.toml $(LOCK) Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q "pip==$(PIP_VERSION)"
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -r $(LOCK)
	$(PIP) install -q --no-deps -e "$(EXTRAS)"
	$(PIP) check
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/omnidit up

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The newest versions pyproject.toml allows, in a venv of their own; the lock is untouched.
test-latest:
	rm -rf .venv-latest && python3 -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q "$(TORCH)"
	.venv-latest/bin/python -m pip install -q --upgrade -e "$(EXTRAS)"
	.venv-latest/bin/python -m pip freeze --exclude-editable | grep -i -E '^(torch|diffusers|transformers|accelerate|ray|gradio)=='
	.venv-latest/bin/python -m pytest $(PYTEST_ARGS)

# Re-resolve the newest allowed versions in a fresh venv and write them to the lock;
# run `make test` on the result before committing it.
lock:
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q "pip==$(PIP_VERSION)"
	.venv-lock/bin/python -m pip install -q "$(TORCH)"
	.venv-lock/bin/python -m pip install -q -e "$(EXTRAS)"
	.venv-lock/bin/python requirements/freeze_lock.py $(LOCK)
	rm -rf .venv-lock

bench: install
	$(PY) benchmarks/dit_step.py

clean:
	rm -rf $(VENV) .venv-latest .venv-lock .pytest_cache out

# The embedded model's training, stage by stage; each stage resumes when run again.
train-shapes: install
	$(VENV)/bin/omnidit train vae --out runs/shapes/vae --minutes 60 --lr 1.5e-3 --clip-every 3
	$(VENV)/bin/omnidit train cache --vae runs/shapes/vae/vae --out runs/shapes/cache --images 24576 --videos 3072
	$(VENV)/bin/omnidit train dit --vae runs/shapes/vae/vae --cache runs/shapes/cache --out runs/shapes/dit --minutes 240 \
		--video-every 1 --video-shift 3
	$(VENV)/bin/omnidit train export --checkpoint runs/shapes/dit/checkpoint.pt --vae runs/shapes/vae/vae --out runs/shapes/export

distill-shapes: install
	$(VENV)/bin/omnidit distill --teacher shapes --method consistency --steps 4 --data online --workers 0 \
		--image-batch 16 --video-batch 2 --video-every 1 --minutes 90 --out runs/distill/shapes-turbo/model
