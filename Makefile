# The two set-up commands of the README. Each creates .venv on first use and installs
# what it needs: torch first (pinned, so pip takes the CPU wheel), then the project.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: quickstart test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $@

quickstart: $(VENV)/.installed
	$(VENV)/bin/genrec quickstart

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest
