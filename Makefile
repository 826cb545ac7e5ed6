# Two commands for a newcomer: `make demo` and `make test`.
# Both create a local virtual environment (.venv) with the CPU build of PyTorch first.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

demo: $(VENV)/.installed
	$(VENV)/bin/maxca demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

.PHONY: install test demo lint
