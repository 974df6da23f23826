# `make run`  : install into .venv if needed, then run the demo search.
# `make test` : install into .venv if needed, then lint and run every test (slow ones included).
# `make check`: lint and the fast tests only (no Ray search, no wheel build): the edit loop.
# `make bench`: run the performance benchmarks (see benchmarks/README.md).
# `make docs` : regenerate the experiment-file reference, then build the site into site/.
# `make gpu-check`: on a machine with an NVIDIA GPU, the CUDA tests and bench_gpu, one summary.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hpsearch-installed

.PHONY: install run test check lint browser bench docs clean gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.2"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]" --config-settings editable_mode=compat
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/hpsearch demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The browser test (tests/analysis/test_browser.py) opens the report in headless Chromium. As
# root, install Debian's chromium where no browser is found (about 10 s and 124 MB on a fresh
# machine); where that cannot be done, say so in one line: the test then skips, saying why.
BROWSERS := chromium chromium-browser google-chrome google-chrome-stable
browser:
	@[ -n "$$CHROMIUM" ] && exit 0; \
	for b in $(BROWSERS); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: no Chromium, and installing it needs root and apt-get: the browser test will skip"; \
	  exit 0; \
	fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	|| { apt-get update -qq >/dev/null 2>&1 \
	     && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
	|| echo "make: apt-get install chromium failed: the browser test will skip"

test: $(STAMP) lint browser
	$(PY) -m pytest

check: $(STAMP) lint
	$(PY) -m pytest -m "not slow" -q

# Every benchmark (bench_replay's headline among them), then bench_replay's full comparison
# (13 strategies x 2 tables x 1, 4, 16 workers, 50 seeds: about 9 min on 2 cores).
bench: $(STAMP)
	$(PY) -m benchmarks
	$(PY) -m benchmarks bench_replay -- --full

# The experiment-file page is generated from the schema and the dimension table; the build is
# strict (a broken link or anchor fails it), as in tests/test_docs.py.
docs: $(STAMP)
	$(PY) -m hpsearch.search.experiment.reference docs/reference/experiment-file.md
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# The summary (gpu-check.md) and logs go to $OUT, else benchmarks/results; exit 2 without a CUDA
# device. Where no package registry is reachable, `make gpu-check GPU_CHECK_DEPS= PY=python3`
# skips the install and uses a Python that already has the project's packages.
GPU_CHECK_DEPS ?= $(STAMP)
gpu-check: $(GPU_CHECK_DEPS)
	PYTHONUNBUFFERED=1 $(PY) -m benchmarks.gpu_check --out "$${OUT:-benchmarks/results}"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build site *.egg-info
