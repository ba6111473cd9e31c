# The two set-up commands: `make test` and `make demo`.  Everything they need is
# installed here (a virtualenv in .venv), never by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo install clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[testing,demo]'
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m demo_app.run

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache
