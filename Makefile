# Two commands on a fresh clone: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint format slow clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Two pytest-xdist workers, one per core, each file's tests in one worker (its module
# fixtures built once); tests/conftest.py gives each worker one torch thread.
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n 2 --dist loadfile

demo: install
	$(BIN)/pathodet demo --out demo-output

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Long runs, kept out of `make test`.
slow: install
	$(BIN)/pytest -m slow

clean:
	rm -rf $(VENV) demo-output *.egg-info
