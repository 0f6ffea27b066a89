# The two set-up commands are `make demo` and `make test`; both install what is missing first.
VENV := .venv
KVMKIT := $(VENV)/bin/kvmkit

.PHONY: install demo test lint lab-down clean

install:
	@scripts/install.sh

demo: install
	@scripts/demo.sh

test: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests

lab-down: install
	$(KVMKIT) lab down --yes

clean: lab-down
	rm -rf $(VENV)
