# arena-pref: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SNAKEMAKE := $(BIN)/snakemake
JOBS   ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast bench real-data lint format report clean gpu-check gpu-wheels

setup: $(BIN)/.installed

$(BIN)/.installed: envs/requirements.txt envs/requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r envs/requirements.lock -r envs/requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# the submission, the plots and tables, and the report that shows them (results/report.html)
demo: setup
	$(SNAKEMAKE) -j$(JOBS)
	$(SNAKEMAKE) --report results/report.html

report: demo

# the unit tests on both cores (one torch thread each), then the workflow runs, presets and SLURM
# one at a time (each runs two jobs at once itself)
test: test-fast
	$(BIN)/python -m pytest tests -ra -m slow --durations=15

# the unit tests alone (no workflow runs, presets or SLURM): about a minute on 2 cores
test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -ra -m "not slow" -n 2 --durations=15

# speed benchmarks (JSON): prediction methods side by side, our training step vs the baseline's
bench: setup
	mkdir -p results/bench
	$(BIN)/python -m arena_pref.tools.bench inference --out results/bench/inference.json
	$(BIN)/python -m arena_pref.tools.bench training --out results/bench/training.json
	$(BIN)/python -m arena_pref.tools.bench compile --out results/bench/compile.json
	$(BIN)/python -m arena_pref.tools.bench features --out results/bench/features.json

# the wheels a lent GPU device lacks (it has no network; docs/gpu.md): run here, then carry gpu-wheels/
gpu-wheels: setup
	$(BIN)/python -m arena_pref.tools.gpu_check wheels gpu-wheels

# the prepared GPU check (docs/gpu.md): on the device the image's python3 runs it with the carried
# wheels (here .venv's python, GPU_CHECK_ARGS=--cpu for the CPU mode the tests run); writes
# $(GPU_CHECK_OUT)/<date>_<gpu>.json after each part, within the budget
GPU_CHECK_BUDGET ?= 480
GPU_CHECK_OUT ?= docs/gpu-runs
GPU_CHECK_ARGS ?=
gpu-check:
	@if [ -x $(BIN)/python ]; then py=$(BIN)/python; else py=python3; \
		if [ -d gpu-wheels ]; then $$py -m pip install -q --no-index --no-deps --no-compile --upgrade \
			--target .gpu-site gpu-wheels/*.whl || exit 1; fi; fi; \
	PYTHONPATH=$(CURDIR)/.gpu-site:$(CURDIR)/workflow PYTHONUNBUFFERED=1 $$py -m arena_pref.tools.gpu_check run \
		--budget-s $(GPU_CHECK_BUDGET) --out-dir $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

# the default config on a labelled real data set (Kaggle format plus test_labels.csv), scored on
# its test labels beside the class prior and a length logistic regression (docs/results.md, "Real human
# judgments"): make real-data DATA=path/to/dir
real-data: setup
	@test -n "$(DATA)" || { echo "make real-data: name the data directory, e.g. DATA=../shared/data/hh-harmless"; exit 2; }
	$(BIN)/python -m arena_pref.tools.realdata --data $(DATA) --workdir results/real/$(notdir $(DATA)) \
		--out results/real/$(notdir $(DATA)).json --jobs $(JOBS)

lint: setup
	$(SNAKEMAKE) --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/snakefmt Snakefile workflow/rules
	$(BIN)/ruff format .

clean:
	rm -rf results .snakemake
