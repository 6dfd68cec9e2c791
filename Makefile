# openbits: `make run` shows a download through the daemon; `make test` runs every test.
# Both set themselves up on a fresh Debian machine (root): apt packages, virtualenv, pip packages.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
# Debian's interpreter, not a pyenv one: tests run clients as other local users,
# who cannot execute an interpreter under /root.
PYTHON3 ?= /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: run test test-fast test-load bench bench-politeness system-deps clean

# `make run` needs the package alone; `make test` adds the test tools (schemathesis, boto3, build, ...).
$(RUN_STAMP): pyproject.toml | system-deps
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $@

$(STAMP): $(RUN_STAMP)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

system-deps:
	@sh scripts/system-deps.sh
	@sh scripts/install-pam.sh

run: $(RUN_STAMP)
	$(PY) scripts/demo.py

# Every test but the `load` suite: four workers, a test file to each (the suite waits far more than it
# computes), then the `serial` tests alone (they measure a shared link). Exit 5 is "none selected".
test: $(STAMP)
	$(PY) -m pytest -n 4 --dist loadfile --no-loadscope-reorder -m 'not serial and not load' $(PYTEST_ARGS)
	$(PY) -m pytest -m 'serial and not load' $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The farm under 100 concurrent 8 MiB uploads (issue 19): under two minutes on 2 cores (81-98 s, load 3-6).
test-load: $(STAMP)
	$(PY) -m pytest -m load $(PYTEST_ARGS)

# The quick part, in one process: the state machine, scheduler, service, broker, layers and bandwidth
# controller; no daemon process, no real server (the `servers` marker, tests/conftest.py) and nothing slow.
test-fast: $(STAMP)
	$(PY) -m pytest -m 'not servers and not slow' $(PYTEST_ARGS)

# Downloads, checksums, small files, API rate, 100k queued jobs, on-demand reads (bench/RESULTS.md); then uploads
# and upload sessions; then ten users' clients with and without one hostile user (issue 16; root).
bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/upload.py
	$(PY) bench/hostile.py

# Issue 6: foreground kept, ping delay and background solo share on a shaped link, beside aria2c (root).
bench-politeness: $(STAMP)
	$(PY) bench/politeness.py

clean:
	rm -rf $(VENV) .pytest_cache build dist

# --- Install as a service (root): make install [PREFIX=/usr/local] [DESTDIR=staging dir]
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
LIBDIR     := $(PREFIX)/lib/openbits
APP        := $(LIBDIR)/venv
# The list of what install put in place, so uninstall removes exactly that.
MANIFEST   := $(LIBDIR)/installed-files
BUILD      := build/install
UNITS      := $(PREFIX)/lib/systemd

.PHONY: install uninstall man

# Manual pages from the code (argparse-manpage, click-man) in a build virtualenv of their own.
$(BUILD)/venv/.installed: pyproject.toml
	$(PYTHON3) -m venv $(BUILD)/venv
	$(BUILD)/venv/bin/pip install --quiet '.[man]'
	touch $@

# MAN_PYTHON: an interpreter that already has openbits and the [man] packages (the tests pass their own).
MAN_PYTHON ?=
MAN_DEPS   := $(if $(MAN_PYTHON),,$(BUILD)/venv/.installed)

man: $(MAN_DEPS)
	rm -rf $(BUILD)/man
	$(or $(MAN_PYTHON),$(BUILD)/venv/bin/python) packaging/man.py $(BUILD)/man

install: man
	sh packaging/install.sh "$(DESTDIR)" "$(PREFIX)" "$(SYSCONFDIR)" "$(PYTHON3)" "$(BUILD)/man"

uninstall:
	sh packaging/uninstall.sh "$(DESTDIR)" "$(PREFIX)"
