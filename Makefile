# Two commands on a fresh machine:
#   make demo   trains TiM4Rec on MovieLens-100K (fetched on first use) and prints a metrics table
#   make test   checks lint and formatting (ruff), then runs the test suite
# Both create .venv and install the package first (torch pinned by constraints.txt).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,serve,postgres,tune,export,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tim4rec train --model tim4rec --dataset ml-100k --output runs/demo --set time_budget=240 $$([ -f runs/demo/checkpoint.pt ] && echo --resume)

lint: $(STAMP)
	$(BIN)/ruff check src tests docs
	$(BIN)/ruff format --check src tests docs

test: lint
	$(BIN)/python -m pytest -q
