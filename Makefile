# deception-saes: the two commands are `make book` and `make test`.
# Every target creates .venv from requirements.txt when it is missing or out of date.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/tinyllama.yaml
WORKERS ?= 1
ARGS ?=
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test lab bench grid lint notebooks

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

## make book: the whole study on the embedded model organism, offline -> data/runs/default/
book: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m lib.grid --config configs/organism.yaml --workers 2

## make grid CONFIG=configs/tinyllama.yaml WORKERS=2: the study for any config (GPU machine)
grid: $(STAMP)
	$(PY) -m lib.grid --config $(CONFIG) --workers $(WORKERS) $(ARGS)

## make test: the pytest suite; the book on the organism (resumed if `make book` ran); then
## nbval re-executes every notebook against that run and checks its stored key numbers
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests --ignore=tests/benchmarks -q -p no:cacheprovider
	HF_HUB_OFFLINE=1 $(PY) -m lib.grid --config configs/organism.yaml --workers 2
	HF_HUB_OFFLINE=1 $(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg \
		-p no:cacheprovider notebooks -q

## make notebooks: re-execute notebooks/ in place on the organism run (refreshes stored outputs)
notebooks: $(STAMP)
	cd notebooks && for nb in 0*.ipynb; do \
		HF_HUB_OFFLINE=1 ../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace $$nb || exit 1; done

## make bench: speed goals (printed, never asserted)
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/benchmarks -q -s -p no:cacheprovider

## make lab: JupyterLab at the repository root (notebooks/, data/runs/, figures/); as root too
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) $$([ "$$(id -u)" = 0 ] && echo --allow-root)

## make lint: formatting and lint of lib and tests (CI runs it before make test)
lint: $(STAMP)
	$(VENV)/bin/ruff format --check lib tests
	$(VENV)/bin/ruff check lib tests
