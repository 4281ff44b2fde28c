# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

.PHONY: install demo test test-slow
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m distill hydra.run.dir=runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow
