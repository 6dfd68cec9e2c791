# openbits: `make run` shows a download through the daemon; `make test` runs every test.
# Both set themselves up on a fresh Debian machine (root): apt packages, virtualenv, pip packages.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# Debian's interpreter, not a pyenv one: tests run clients as other local users,
# who cannot execute an interpreter under /root.
PYTHON3 ?= /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: run test test-fast bench bench-politeness system-deps clean

$(STAMP): pyproject.toml | system-deps
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

system-deps:
	@sh scripts/system-deps.sh
	@sh scripts/install-pam.sh

run: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The quick part: everything not marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -m 'not slow' $(PYTEST_ARGS)

# Downloads, small files, API rate, 100k queued jobs (bench/RESULTS.md); then uploads and upload sessions;
# then ten users' clients with and without one hostile user (issue 16; root).
bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/upload.py
	$(PY) bench/hostile.py

# Issue 6: foreground kept, ping delay and background solo share on a shaped link, beside aria2c (root).
bench-politeness: $(STAMP)
	$(PY) bench/politeness.py

clean:
	rm -rf $(VENV) .pytest_cache
