# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

# --no-compile: Python compiles the modules it imports on first use instead of pip compiling every file of torch,
# transformers and the rest at install time. The demo needs no test extras.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-compile -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install --quiet --no-compile -e ".[test]"
	touch $@

.PHONY: install browser demo test test-slow
install: $(VENV)/.installed-test

# The browser test drives Debian's chromium (Playwright cannot download browsers here); installed once, as root or with sudo.
browser:
	@command -v chromium >/dev/null || { SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

demo: $(VENV)/.installed
	$(PY) -m distill hydra.run.dir=runs/demo

test: $(VENV)/.installed-test browser
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -m slow
