# The two set-up commands: `make test` and `make demo`.  Everything they need is
# installed here (a virtualenv in .venv), never by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Postfix's smtp-sink, from Debian's postfix package, unpacked locally: it needs
# no MTA service and nothing installed system-wide.
POSTFIX_ROOT := .deps/postfix
SMTP_SINK := $(POSTFIX_ROOT)/usr/sbin/smtp-sink

.PHONY: test demo install browser clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[testing,demo,sql,ops,docs]'
	touch $@

$(SMTP_SINK):
	mkdir -p .deps/debs
	cd .deps/debs && rm -f postfix_*.deb && \
	  { apt-get download postfix 2>/dev/null || { apt-get update -qq && apt-get download postfix; }; }
	dpkg -x .deps/debs/postfix_*.deb $(POSTFIX_ROOT)
	touch $@

# A private Postfix relay for tests/test_postfix.py, from the same unpacked package: the
# test starts it itself (as root) on a free loopback port with its own configuration and
# queue; no system MTA is installed or started.  It runs as existing unprivileged accounts
# (mail/nogroup/nobody on Debian); only where there is none is a system user created.
POSTFIX_MASTER := $(POSTFIX_ROOT)/usr/lib/postfix/sbin/master
.PHONY: postfix
postfix: $(SMTP_SINK)
	@test -x $(POSTFIX_MASTER) || { echo "$(POSTFIX_MASTER) is missing: rm -rf $(POSTFIX_ROOT) and run make again"; exit 1; }
	@getent passwd postfix >/dev/null || getent passwd mail >/dev/null || \
	  { echo "Creating the system user postfix for the Postfix relay test"; \
	    $(if $(filter 0,$(shell id -u)),,sudo) useradd --system --user-group --no-create-home \
	      --home-dir /nonexistent --shell /usr/sbin/nologin postfix; }

# Debian's chromium and chromedriver for tests/test_browser.py, installed with apt
# only when one of them is missing (apt-get update first when the lists are stale).
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; else \
	  echo "Installing $(BROWSER_PACKAGES) for the browser test"; \
	  $(APT_GET) install -y -qq --no-install-recommends $(BROWSER_PACKAGES) || \
	  { $(APT_GET) update -qq && \
	    $(APT_GET) install -y -qq --no-install-recommends $(BROWSER_PACKAGES); }; \
	fi

# Debian's PostgreSQL server binaries for the SQL outbox tests (tests/pg_support.py),
# installed with apt only when initdb/pg_ctl/postgres are missing from
# /usr/lib/postgresql/*/bin (where Debian puts them; nothing on PATH is trusted).  The
# tests never use a system cluster: they initdb a private one in a temp dir, run it as an
# unprivileged user on a free loopback port and stop it.  Debian's package, though,
# creates a `main` cluster and starts it (and enables it at boot): a server on port 5432
# nobody asked for.  So the install runs under a policy-rc.d that denies service starts
# (removed again afterwards, even on failure), then stops any cluster that runs anyway and,
# on a systemd host, disables the unit: nothing is left running after `make`.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
PG_PACKAGES := postgresql
PG_LIB_DIR ?= /usr/lib/postgresql
.PHONY: postgresql
postgresql:
	@for bin in $(PG_LIB_DIR)/*/bin; do \
	  test -x $$bin/initdb && test -x $$bin/pg_ctl && test -x $$bin/postgres && exit 0; \
	done; \
	echo "Installing $(PG_PACKAGES) (binaries for the tests' private clusters; no service left running)"; \
	policy=/usr/sbin/policy-rc.d; \
	if [ ! -e $$policy ]; then \
	  trap '$(SUDO) rm -f '$$policy EXIT; \
	  printf '#!/bin/sh\n# make postgresql: no service starts during the install\nexit 101\n' | \
	    $(SUDO) tee $$policy >/dev/null && $(SUDO) chmod 755 $$policy; \
	fi; \
	$(APT_GET) install -y -qq --no-install-recommends $(PG_PACKAGES) || \
	  { $(APT_GET) update -qq && \
	    $(APT_GET) install -y -qq --no-install-recommends $(PG_PACKAGES); } || exit 1; \
	pg_lsclusters -h 2>/dev/null | while read version cluster port status rest; do \
	  case $$status in online*) \
	    echo "Stopping the system cluster $$version/$$cluster the package started"; \
	    $(SUDO) pg_ctlcluster $$version $$cluster stop;; esac; \
	done; \
	if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now --quiet postgresql || true; fi

# Real PyPI projects that use pyramid_mailer, for tests/test_migration_*.py: a venv of
# their own (their pins clash with the demo's), pyramid_txmail editable from here, and
# their pinned sdists (the tests unpack, switch and run those).  About a minute.
MIGRATION_VENV := .venv-migration
MIGRATION_SDISTS := kinto-emailer==4.0.0 pluserable==0.10.0
.PHONY: migration
migration: $(MIGRATION_VENV)/.installed

$(MIGRATION_VENV)/.installed: tests/migration_requirements.txt setup.cfg pyproject.toml
	rm -rf $(MIGRATION_VENV)
	$(PYTHON) -m venv $(MIGRATION_VENV)
	$(MIGRATION_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  -r tests/migration_requirements.txt -e .
	$(MIGRATION_VENV)/bin/python -m pip download --quiet --disable-pip-version-check \
	  --no-deps --no-binary :all: -d $(MIGRATION_VENV)/sdists $(MIGRATION_SDISTS)
	touch $@

# Wheels of everything an empty virtualenv needs to build pyramid_txmail (build-system
# requires) and to run it (its dependencies), for tests/test_packaging.py: it builds the
# sdist and the wheel and installs them with --no-index from here, so the test itself
# reaches no package index.  Filled again when pyproject.toml changes.  About 10 s.
WHEELHOUSE := .deps/wheelhouse
.PHONY: wheelhouse
wheelhouse: $(WHEELHOUSE)/.filled

$(WHEELHOUSE)/.filled: pyproject.toml tests/wheelhouse_requirements.py $(VENV)/.installed
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PY) tests/wheelhouse_requirements.py > $(WHEELHOUSE)/requirements.txt
	$(PY) -m pip wheel --quiet --disable-pip-version-check --wheel-dir $(WHEELHOUSE) \
	  -r $(WHEELHOUSE)/requirements.txt
	touch $@

# With bytecode caching even where the environment turns it off
# (PYTHONDONTWRITEBYTECODE): otherwise every txmail-qp/txmail-queue the tests start
# compiles pyramid_txmail from source again, and pytest rewrites every test module.
test: install $(SMTP_SINK) postfix browser migration postgresql ab wheelhouse graphviz
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m demo_app.run

# $(call apt_when_missing,COMMAND,PACKAGES,WHAT FOR): Debian's PACKAGES installed with apt
# only when COMMAND is missing (apt-get update first when the lists are stale).
define apt_when_missing
@if command -v $(1) >/dev/null; then :; else \
  echo "Installing $(2) $(3)"; \
  $(APT_GET) install -y -qq --no-install-recommends $(2) || \
  { $(APT_GET) update -qq && \
    $(APT_GET) install -y -qq --no-install-recommends $(2); }; \
fi
endef

# The documentation: `make docs` builds docs/ into docs/_build/html with warnings as
# errors (tests/test_docs_build.py runs the same build in `make test`).  Its pictures need
# graphviz's `dot` (Debian's graphviz), installed with apt only when it is missing; where
# there is no apt-get it stops and says to install graphviz with the system's package manager.
GRAPHVIZ_PACKAGES := graphviz
.PHONY: graphviz docs
graphviz:
	@command -v dot >/dev/null || command -v apt-get >/dev/null || { \
	  echo "make docs: install graphviz (the \`dot\` command) with your package manager" \
	       "(apt-get/dnf/zypper/apk install graphviz, brew install graphviz): its diagrams need it" >&2; \
	  exit 1; }
	$(call apt_when_missing,dot,$(GRAPHVIZ_PACKAGES),(dot) for the documentation's diagrams)

docs: install graphviz
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "The documentation: docs/_build/html/index.html"

# ApacheBench (`ab`, Debian's apache2-utils) drives the benchmark's `concurrent` section
# (bench/sec_concurrent.py: a Pyramid view under waitress, `ab -c 8`); installed with apt
# only when `ab` is missing (apt-get update first when the lists are stale).
AB_PACKAGES := apache2-utils
.PHONY: ab
ab:
	$(call apt_when_missing,ab,$(AB_PACKAGES),(ab) for the benchmark's concurrent section)

# py-spy (from PyPI, into the venv) samples the concurrent section's app when a target
# is missed (`--gil`: where the interpreter lock is held), for RESULTS.md's "why".
PY_SPY := $(VENV)/bin/py-spy
$(PY_SPY): $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check py-spy
	touch $@

# Benchmarks (bench/run.py --help), ~20 min; writes bench/RESULTS.md and its plots
# (bench/*.svg, drawn by bench/plots.py, which the docs' benchmarks page shows).
# BENCH_ARGS=--quick for a smoke run of every section.
BENCH_ARGS ?=
.PHONY: bench
bench: install $(SMTP_SINK) postgresql ab $(PY_SPY)
	$(PY) bench/run.py $(BENCH_ARGS)

# The long versions of the reliability suite (tests marked `reliability`; `make test`
# runs the quick ones); writes docs/RELIABILITY.md.  About 8 minutes on 2 cores.
# A gate: property tests are derandomized (TXMAIL_HYPOTHESIS=gate, tests/reliability.py)
# and every case found so far is pinned as an explicit example, so the same commit
# gives the same result on every clone.  PYTHONHASHSEED=0: set order is fixed too.
RELIABILITY_DIR := test-artifacts/reliability
.PHONY: reliability
reliability: install $(SMTP_SINK) postfix postgresql
	rm -rf $(RELIABILITY_DIR) && mkdir -p $(RELIABILITY_DIR)
	TXMAIL_RELIABILITY=long TXMAIL_RELIABILITY_OUT=$(CURDIR)/$(RELIABILITY_DIR)/counts.jsonl \
	  TXMAIL_HYPOTHESIS=gate PYTHONHASHSEED=0 \
	  env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -m reliability -o timeout=1800 -p no:cacheprovider \
	    --junitxml=$(RELIABILITY_DIR)/junit.xml $(PYTEST_ARGS); status=$$?; \
	  $(PY) tests/reliability_report.py $(RELIABILITY_DIR) docs/RELIABILITY.md && exit $$status

# Looking for new cases: the property tests (marked `property`) with random seeds, one
# test per run, round after round for EXPLORE_MINUTES; writes test-artifacts/explore/
# FINDINGS.md (each falsifying example, its seed and how to reproduce it) and exits 1
# when something failed.  Not a gate: pin each finding (tests/badinput_pinned.py), see
# it fail, fix it; then `make reliability` keeps it fixed.
EXPLORE_MINUTES ?= 10
.PHONY: explore
explore: install $(SMTP_SINK) postfix
	$(PY) tests/explore.py --minutes $(EXPLORE_MINUTES) --out $(CURDIR)/test-artifacts/explore \
	  $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(MIGRATION_VENV) .deps var build *.egg-info .pytest_cache test-artifacts \
	  docs/_build
