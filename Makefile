# arena-pref: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SNAKEMAKE := $(BIN)/snakemake
JOBS   ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast bench real-data lint format report clean

setup: $(BIN)/.installed

$(BIN)/.installed: envs/requirements.txt envs/requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r envs/requirements.lock -r envs/requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

demo: setup
	$(SNAKEMAKE) -j$(JOBS) results/submission.csv

report: setup
	$(SNAKEMAKE) -j$(JOBS)
	$(SNAKEMAKE) --report results/report.html

test: setup
	$(BIN)/python -m pytest tests -ra

# the unit tests alone (no workflow runs, presets or SLURM): a few minutes on 2 cores
test-fast: setup
	$(BIN)/python -m pytest tests -ra -m "not slow"

# speed benchmarks (JSON): prediction methods side by side, our training step vs the baseline's
bench: setup
	mkdir -p results/bench
	$(BIN)/python -m arena_pref.bench inference --out results/bench/inference.json
	$(BIN)/python -m arena_pref.bench training --out results/bench/training.json
	$(BIN)/python -m arena_pref.bench compile --out results/bench/compile.json
	$(BIN)/python -m arena_pref.bench features --out results/bench/features.json

# the default config on a labelled real data set (Kaggle format plus test_labels.csv), scored on
# its test labels beside the class prior and a length logistic regression (README, "Real human
# judgments"): make real-data DATA=path/to/dir
real-data: setup
	@test -n "$(DATA)" || { echo "make real-data: name the data directory, e.g. DATA=../shared/data/hh-harmless"; exit 2; }
	$(BIN)/python -m arena_pref.realdata --data $(DATA) --workdir results/real/$(notdir $(DATA)) \
		--out results/real/$(notdir $(DATA)).json --jobs $(JOBS)

lint: setup
	$(SNAKEMAKE) --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

format: setup
	$(BIN)/snakefmt Snakefile workflow/rules

clean:
	rm -rf results .snakemake
