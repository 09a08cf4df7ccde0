# The two commands of the README, and what they are made of.
# Everything runs from .venv, made from the first Python 3.11+ found.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# One stamp per extra of pyproject.toml: a .venv made for the demo gets the rest of the
# developer stack at the first make test.
INSTALLED := $(VENV)/.installed-dev
DEMO_INSTALLED := $(VENV)/.installed-demo
export GATEKEEPER_TEST_POSTGRES ?= postgresql://postgres@127.0.0.1:5432/test
# The browser tests drive Debian's Chromium; Playwright never downloads one.
export GATEKEEPER_CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install lock lint format test test-fast demo clean chromium docs fuzz bench soak stress-ng

install: $(INSTALLED)

# Quietly: a pip config may name package folders that hold only some packages (file://
# indexes), and pip then warns once per other package: those lines go, pip's other output
# and its exit status stay. setuptools' note on editable installs (a package folder in the
# working directory comes first, which is the point here) is silenced too.
PIP := PYTHONWARNINGS=ignore:::setuptools.command.editable_wheel $(BIN)/python -m pip \
  install --quiet --disable-pip-version-check
PIP_NOISE := ^WARNING: Location 'file://[^']*' is ignored: it is neither a file nor a directory\.$$
define pip_install
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@{ { $(PIP) --upgrade pip && $(PIP) -c constraints.txt -e '.[$(1)]'; echo $$? >&3; } 2>&1 \
	  | { grep -v "$(PIP_NOISE)" || true; } >&2; } 3>&1 | { read status; exit $$status; }
endef

# Everything: the runtime, Synapse, the test and lint tools ([dev] holds [demo]).
$(INSTALLED): pyproject.toml constraints.txt
	@echo "Installing Gatekeeper, Synapse and the developer tools into $(VENV) (first run: a few minutes)…"
	$(call pip_install,dev)
	@touch $(INSTALLED) $(DEMO_INSTALLED)

# Only what make demo runs: Gatekeeper and Synapse.
$(DEMO_INSTALLED): pyproject.toml constraints.txt
	@echo "Installing Gatekeeper and Synapse into $(VENV) (first run: about a minute)…"
	$(call pip_install,demo)
	@touch $(DEMO_INSTALLED)

# Refresh constraints.txt after changing pyproject.toml's dependencies, then run make test.
lock: install
	$(BIN)/python -m pip install --quiet --upgrade -e '.[dev]'
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } > constraints.tmp
	mv constraints.tmp constraints.txt

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

chromium:
	@test -x $(GATEKEEPER_CHROMIUM) || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

test: lint chromium
	$(BIN)/pytest

# The tests that need neither Synapse nor a browser (still SQLite and PostgreSQL).
test-fast: install
	$(BIN)/pytest -m "not synapse and not chromium"

# tests/test_fuzz.py with many more examples per operation than the suite's quick run.
fuzz: install
	GATEKEEPER_FUZZ_EXAMPLES=$${GATEKEEPER_FUZZ_EXAMPLES:-300} $(BIN)/pytest --timeout 3600 tests/test_fuzz.py

# Flakiness, run by hand: the fault drills and multi-process tests SOAK_RUNS times (default
# 20) in one session, then each test's pass count. HOG=1 keeps one core busy meanwhile.
SOAK_RUNS ?= 20
soak: install $(if $(HOG),stress-ng)
	$(BIN)/python -m harness.soak --runs $(SOAK_RUNS) $(if $(HOG),--hog) $(SOAK_ARGS)

stress-ng:
	@command -v stress-ng >/dev/null || { \
	  echo "Installing Debian's stress-ng for the CPU hog"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq stress-ng; }

# Timings, run by hand: a real Synapse and PostgreSQL-backed Gatekeeper under load; prints
# a table and writes bench/results/<date>-<database>.json. BENCH_ARGS="--sqlite", "--quick", "signup" ...
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

demo: $(DEMO_INSTALLED)
	$(BIN)/python -m harness.demo $(if $(ENCRYPTED),--encrypted) $(if $(AFTER_APPROVAL),--after-approval)

# The references in docs/ are generated from the code; tests/test_docs.py checks they are current.
docs: install
	$(BIN)/python docs/generate.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache *.egg-info
