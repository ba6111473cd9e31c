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

.PHONY: test demo install clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[testing,demo]'
	touch $@

$(SMTP_SINK):
	mkdir -p .deps/debs
	cd .deps/debs && rm -f postfix_*.deb && \
	  { apt-get download postfix 2>/dev/null || { apt-get update -qq && apt-get download postfix; }; }
	dpkg -x .deps/debs/postfix_*.deb $(POSTFIX_ROOT)
	touch $@

test: install $(SMTP_SINK)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m demo_app.run

# Benchmarks (bench/run.py --help), ~15 min; writes bench/RESULTS.md.
# BENCH_ARGS=--quick for a smoke run of every section.
BENCH_ARGS ?=
.PHONY: bench
bench: install $(SMTP_SINK)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .deps var build *.egg-info .pytest_cache
