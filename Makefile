# msfm entry points. Everything runs in .venv (Debian's python3 + QGIS bindings); `make setup` builds it.
#   make setup     apt packages (if missing), .venv, pinned requirements, msfm (editable); a no-op when up to date
#   make demo      end-to-end demo on the bundled scene (demo/) with the bundled model; outputs in out/demo/
#   make test      the default tier: every test not marked slow (markers: pyproject.toml); PYTEST_ARGS="-k foo -x"
#                  passes options through. Without ../shared the tests that need it skip and the spine still runs
#                  on tests/data (tests/engine/test_spine.py)
#   make test-all  all tests, slow ones included (what CI runs: .ci/run)
#   make bench     throughput benchmark
#   make package   installable plugin zip dist/msfm-<version>.zip (what ships: pb_tool.cfg); see scripts/package_plugin.py

SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

# Headless Qt is mandatory for anything that touches QGIS (without it: silent exit 134).
export QT_QPA_PLATFORM ?= offscreen

# Tests use a throw-away QGIS profile so nothing lands in the user's ~/.local/share/QGIS.
define run_pytest
	@cfg=$$(mktemp -d -t msfm-qgis-XXXXXX); \
	QGIS_CUSTOM_CONFIG_PATH=$$cfg $(PY) -m pytest -q $(1) $(PYTEST_ARGS); rc=$$?; \
	rm -rf "$$cfg"; exit $$rc
endef

.PHONY: setup demo test test-all bench package

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/msfm demo

test: setup
	$(call run_pytest,)

test-all: setup
	$(call run_pytest,-m "")

bench: setup
	$(PY) bench/throughput.py

package: setup
	$(PY) scripts/package_plugin.py --out dist
