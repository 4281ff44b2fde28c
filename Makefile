# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

.PHONY: install browser demo test test-slow
install: $(VENV)/.installed

# The browser test drives Debian's chromium (Playwright cannot download browsers here); installed once, as root or with sudo.
browser:
	@command -v chromium >/dev/null || { SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

demo: $(VENV)/.installed
	$(PY) -m distill hydra.run.dir=runs/demo

test: $(VENV)/.installed browser
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow
