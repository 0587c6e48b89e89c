# Every target sets itself up: a fresh clone needs only python3 (>= 3.10) and make.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo rehearsal test test-fast lint mutation clean

install: $(STAMP)

# torch goes first and pinned: torch==2.13.0 takes the local CPU wheel; anything looser pulls CUDA.
# aisfx goes with --no-deps: its own pins are outdated and would downgrade torch.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps aisfx==0.1.2
	touch $(STAMP)

# The whole DAG of configs/demo.yaml (spresso pipeline run) on local Ray + SQLite MLflow, then .spr round trips.
# make demo INPUT="path/to/sfx ..." trains on your folders too; a second run reuses everything.
demo: install
	nice $(BIN)/python -m spresso.demo $(if $(INPUT),--input $(INPUT)) $(DEMO_ARGS)

# The paper's topology on this machine (configs/rehearsal.yaml): a local S3 server (moto), an MLflow server
# with basic auth whose artifacts go to the bucket, an autoscaling Ray cluster (Ray's fake multi-node
# provider, ray_cluster.yaml's node types from zero, token auth); the whole DAG via `ray job submit`, a
# worker node killed during stage 1, a second submission that reuses everything. ~15 min on 2 cores.
# REHEARSAL_ARGS=--reduced runs the CI variant (tests/test_rehearsal.py).
rehearsal: install
	$(BIN)/python -m spresso.rehearsal $(REHEARSAL_ARGS)

# --durations: every run's log names its slowest tests (the suite's target is well under 20 minutes).
test: install
	$(BIN)/python -m pytest tests --durations=25 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest tests -m "not slow" $(PYTEST_ARGS)

# The house rules alone (layers, cycles, lazy imports, private names, duplicates) and ruff's import hygiene.
lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check --select F,I spresso pipelines benchmarks tests
	$(BIN)/python -m pytest tests/test_architecture.py -q

# Mutation testing (not part of `make test`; about an hour on 2 cores): mutmut mutates the codec, rates,
# digest, Zarr cache, diffusion and quantizer modules ([tool.mutmut] in pyproject.toml), runs the fast
# tests that cover each mutated function, and prints the score per module (docs/testing.md).
# make mutation MUTATION_ARGS="--only 'spresso.codec.bitpack.*'" retests some mutants only.
mutation: install
	nice -n 19 $(BIN)/python benchmarks/mutation_score.py --run --survivors $(MUTATION_ARGS)

clean:
	rm -rf work/demo
