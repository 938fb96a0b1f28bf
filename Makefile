# Two entry points, each installing what it needs into .venv first:
#   make run    the service + Gradio demo on the embedded model (prints both URLs)
#   make test   the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0: a CPU machine here takes the local CPU wheel; elsewhere PyPI's (CUDA) build.
TORCH ?= torch==2.13.0

.PHONY: install run test bench clean train-shapes distill-shapes

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
