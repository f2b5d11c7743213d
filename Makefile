# airflow-provider-candela: developer and CI entry points.
#
#   make venv       .venv (Airflow 3.3 + the provider, editable, with the dev extra)
#   make test       lint + format check + mypy --strict + pytest on Airflow 3.3 + pytest on Airflow 2.11, then the
#                   version-sensitive tests on the latest Airflow 3.1 and the newest Airflow 3.4 pre-release
#   make demo       every example DAG run with `airflow dags test` against the local Candela emulator
#   make lint       ruff check + ruff format --check
#   make typecheck  mypy --strict on the package
#   make clean      remove every virtual environment, cache and build output these targets create
#
# Needs only $(PYTHON) (3.11+, with its venv module) and make. Everything is installed with uv into the
# project's own venvs, never into $(PYTHON): uv is the one on PATH, or else a copy of its own in .venv-tools/
# (a venv of $(PYTHON) whose pip installs uv; works on an externally managed system Python). A venv is rebuilt
# only when pyproject.toml or the pins below change (a stamp file inside the venv is keyed on both).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

PYTHON ?= python3
# The uv *binary*: the one on PATH, else .venv-tools/bin/uv (made by the `uv` target). Never `python -m uv`:
# started that way, `uv pip install` installs into the Python that launched it instead of the VIRTUAL_ENV.
TOOLS_VENV := .venv-tools
TOOLS_UV := $(CURDIR)/$(TOOLS_VENV)/bin/uv
ifndef UV
UV := $(or $(shell command -v uv 2>/dev/null),$(TOOLS_UV))
endif
export UV
# uv must never download a Python of its own: use the machine's python3.
export UV_PYTHON_DOWNLOADS := never
export UV_NO_PROGRESS := 1

VENV := .venv
VENV_AF2 := .venv-af2
VENV_AF31 := .venv-af31
VENV_AF34 := .venv-af34

# common-compat >= 1.22: the first release whose `airflow.providers.common.compat.sdk` exports every name the
# provider imports (`mask_secret` arrived in 1.22, `conf` in 1.12; 1.7.x has no `sdk` module at all).
COMPAT_REQ := "apache-airflow-providers-common-compat>=1.22"

# Airflow 3.3 (latest 3.3.x): the main development and test environment.
AF3_REQS := "apache-airflow==3.3.*" $(COMPAT_REQ)

# Airflow 2.11 (latest 2.11.x), second environment for the operator, hook and example-DAG tests.
AF2_REQS := "apache-airflow==2.11.*" $(COMPAT_REQ)

# Airflow 3.1 (latest 3.1.x): the oldest Airflow of the review and the Candela page; the review defers to the
# standard provider's HITLTrigger there (3.3 waits in `awaiting_input` instead).
AF31_REQS := "apache-airflow==3.1.*" $(COMPAT_REQ)

# Airflow 3.4: the newest pre-release, pinned exactly (uv takes its pre-release dependencies from the pin). Move the
# pin to 3.4.0 when it is released.
AF34_REQS := "apache-airflow==3.4.0b2" $(COMPAT_REQ)

PYTEST_AF2_DIRS := tests/operators tests/batch tests/decorators tests/sensors tests/triggers tests/e2e tests/hooks tests/compat tests/managed_agent tests/reliability/test_cleanup.py

# The version-sensitive tests on 3.1 and 3.4: the review, the Candela page (API and browser), the connection form
# (what the UI is given), the batch's task state, the triggers, the example DAGs, one hook per task,
# fail-fast, the compat layer (tests/compat: plugin entries, provider-info schema, run_dags). On 3.1 the review
# waits deferred on the HITLTrigger, which `dags test` cannot serve: tests/review and the review's browser test
# are 3.3+, and tests/compat/test_review_deferred.py runs it on a real scheduler and triggerer instead. The
# connection form's browser test is written for 3.3's UI (tests/hooks/test_hook_form.py checks what the UI of 3.1
# and 3.4 is given): 3.1's renders no extra field as a password input and its `connections list` prints the extras
# in a URI; 3.4.0b2's dialog picks the type and lays out the sections differently.
PYTEST_AF31_TESTS := tests/compat tests/ui/test_candela_page_api.py tests/hooks/test_hook_form.py \
	tests/batch/test_batch_resume.py tests/batch/test_batch.py::test_a_retry_sends_only_what_did_not_succeed \
	tests/triggers tests/e2e/test_example_dags.py tests/operators/test_one_hook_per_task.py \
	tests/operators/test_fail_fast.py tests/ui/test_candela_page.py
PYTEST_AF34_TESTS := tests/review tests/compat tests/ui/test_candela_page_api.py tests/hooks/test_hook_form.py \
	tests/batch/test_batch_resume.py tests/batch/test_batch_in_loop.py \
	tests/batch/test_batch.py::test_a_retry_sends_only_what_did_not_succeed tests/triggers \
	tests/e2e/test_example_dags.py tests/operators/test_one_hook_per_task.py tests/operators/test_fail_fast.py \
	tests/ui/test_candela_page.py tests/ui/test_review_ui.py

STAMP_KEY := $(shell (cat pyproject.toml; echo 'uv-bin compileall $(AF3_REQS) | $(AF2_REQS)') | sha256sum | cut -c1-16)
VENV_STAMP := $(VENV)/.installed-$(STAMP_KEY)
VENV_AF2_STAMP := $(VENV_AF2)/.installed-$(STAMP_KEY)
# Each further venv is keyed on pyproject.toml and its own pins, so that moving one pin rebuilds that venv alone.
venv_key = $(shell (cat pyproject.toml; echo 'uv-bin compileall $(1)') | sha256sum | cut -c1-16)
VENV_AF31_STAMP := $(VENV_AF31)/.installed-$(call venv_key,$(AF31_REQS))
VENV_AF34_STAMP := $(VENV_AF34)/.installed-$(call venv_key,$(AF34_REQS))

# Byte-compile site-packages once: every `airflow` process and every task imports hundreds of modules, and
# without .pyc files (PYTHONDONTWRITEBYTECODE=1 is common in CI) each start compiles them again (seconds each).
# compileall exits 1 on the odd unparsable test file inside a dependency; that is not an install failure.
define compile_venv
	@$(1)/bin/python -m compileall -q -j 0 $(1)/lib >/dev/null 2>&1 || true
endef

define section
	@printf '\n\033[1m==> %s\033[0m\n' "$(1)"
endef

.PHONY: venv venv-af2 venv-af31 venv-af34 uv test test-py3 test-af2 test-af31 test-af34 lint typecheck demo bench clean

uv: $(if $(filter $(TOOLS_UV),$(UV)),$(TOOLS_UV))
	@echo "uv: $$("$(UV)" --version) ($(UV))"

# uv is not on PATH: a venv of $(PYTHON) for it alone. Debian ships the venv module separately (python3-venv):
# as root it is installed with apt-get; otherwise the message says what to install.
$(TOOLS_UV):
	$(call section,uv: not on PATH; installing it into $(TOOLS_VENV)/ (nothing is installed into $(PYTHON)))
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
		{ echo "make: $(PYTHON) is not Python 3.11+ ($$($(PYTHON) --version 2>&1)); name one: make PYTHON=python3.12"; exit 1; }
	@rm -rf $(TOOLS_VENV); \
	if ! out=$$($(PYTHON) -m venv $(TOOLS_VENV) 2>&1); then \
		rm -rf $(TOOLS_VENV); \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "$$(command -v $(PYTHON))" = /usr/bin/python3 ]; then \
			echo "$(PYTHON) has no working venv module: apt-get install python3-venv"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
			$(PYTHON) -m venv $(TOOLS_VENV); \
		else \
			printf '%s\n' "$$out" | tail -5; \
			echo "make: '$(PYTHON) -m venv' failed. Install the venv module (Debian/Ubuntu: sudo apt-get install python3-venv) or put uv on PATH."; \
			exit 1; \
		fi; \
	fi
	$(TOOLS_VENV)/bin/python -m pip install -q --disable-pip-version-check "uv>=0.5"

venv: $(VENV_STAMP)

$(VENV_STAMP): | uv
	$(call section,venv: $(VENV) with Airflow 3.3 and the provider (editable with the dev extra))
	@test -x $(VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(VENV)
	@rm -f $(VENV)/.installed-*
	$(UV) pip install -q --python $(VENV)/bin/python -e ".[dev]" $(AF3_REQS)
	$(call compile_venv,$(VENV))
	@touch $@

venv-af2: $(VENV_AF2_STAMP)

$(VENV_AF2_STAMP): | uv
	$(call section,venv: $(VENV_AF2) with Airflow 2.11 and the provider (editable with the dev extra))
	@test -x $(VENV_AF2)/bin/python || $(UV) venv -q --python $(PYTHON) $(VENV_AF2)
	@rm -f $(VENV_AF2)/.installed-*
	$(UV) pip install -q --python $(VENV_AF2)/bin/python -e ".[dev]" $(AF2_REQS)
	$(call compile_venv,$(VENV_AF2))
	@touch $@

venv-af31: $(VENV_AF31_STAMP)
venv-af34: $(VENV_AF34_STAMP)

# A venv of the provider (editable, dev extra) on one Airflow: $(1) the venv, $(2) its pins, $(3) the section title.
define install_venv
	$(call section,venv: $(1) with $(3) and the provider (editable with the dev extra))
	@test -x $(1)/bin/python || $(UV) venv -q --python $(PYTHON) $(1)
	@rm -f $(1)/.installed-*
	$(UV) pip install -q --python $(1)/bin/python -e ".[dev]" $(2)
	$(call compile_venv,$(1))
	@touch $@
endef

$(VENV_AF31_STAMP): | uv
	$(call install_venv,$(VENV_AF31),$(AF31_REQS),Airflow 3.1)

$(VENV_AF34_STAMP): | uv
	$(call install_venv,$(VENV_AF34),$(AF34_REQS),Airflow 3.4 (pre-release))

lint: venv
	$(call section,ruff check)
	$(VENV)/bin/ruff check .
	$(call section,ruff format --check)
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(call section,mypy --strict airflow_provider_candela/)
	$(VENV)/bin/mypy airflow_provider_candela

# pytest on one Airflow: $(1) the venv, $(2) the tests, $(3) the name of its timings file in $(TIMES). Test files
# run side by side in $(PYTEST_WORKERS) processes (pytest-xdist; a file's tests stay in one process, in order, so a
# module's fixtures start once): most tests wait on processes and sockets (Airflow's, the emulator's, Chromium),
# so four processes keep 2 cores busy. The longest files start first (tests/conftest.py _LONGEST_FIRST, kept by
# --no-loadscope-reorder). Each process has its own Airflow home, emulator and temporary folder (tests/conftest.py).
# The junit XML feeds the summary at the end of `make test` (tests/timings.py).
PYTEST_WORKERS ?= 4
TIMES := .out/test-times
airflow_version = $$($(1)/bin/python -c 'import importlib.metadata as m; print(m.version("apache-airflow"))')
define run_pytest
	@mkdir -p $(TIMES)
	$(1)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10 \
		--junitxml=$(TIMES)/$(3).xml -o junit_suite_name="Airflow $(call airflow_version,$(1))" $(2)
endef

test-py3: venv
	$(call section,pytest on Airflow $(call airflow_version,$(VENV)))
	$(call run_pytest,$(VENV),tests,1-py3)

test-af2: venv-af2
	$(call section,pytest on Airflow $(call airflow_version,$(VENV_AF2)) ($(PYTEST_AF2_DIRS)))
	$(call run_pytest,$(VENV_AF2),$(PYTEST_AF2_DIRS),2-af2)

test-af31: venv-af31
	$(call section,pytest on Airflow $(call airflow_version,$(VENV_AF31)) (version-sensitive tests))
	$(call run_pytest,$(VENV_AF31),$(PYTEST_AF31_TESTS),3-af31)

test-af34: venv-af34
	$(call section,pytest on Airflow $(call airflow_version,$(VENV_AF34)) (version-sensitive tests))
	$(call run_pytest,$(VENV_AF34),$(PYTEST_AF34_TESTS),4-af34)

test: system-deps lint typecheck test-py3 test-af2 test-af31 test-af34
	$(call section,make test: all green; the time of each Airflow version and its slowest tests)
	@$(VENV)/bin/python tests/timings.py $(TIMES)/1-py3.xml $(TIMES)/2-af2.xml $(TIMES)/3-af31.xml $(TIMES)/4-af34.xml

# KEEP=1 keeps the temporary Airflow home and its logs (the run prints where). The calling agent of
# candela_managed_agent runs on pydantic-ai's offline test model (it calls every tool once), so the demo needs no LLM.
DEMO_LLM_CONN := {"conn_type": "pydanticai", "extra": {"model": "test"}}
demo: venv
	$(call section,demo: example_dags/ run against the Candela emulator)
	AIRFLOW_CONN_PYDANTICAI_DEFAULT='$(DEMO_LLM_CONN)' \
		$(VENV)/bin/python -m airflow_provider_candela.testing.run_dags $(if $(KEEP),--keep) example_dags

# ---------------------------------------------------------------------------------------------------------------
# bench: every figure in one run, described in bench/run.py.
# bench/.venv holds the provider (editable, emulator extra) on Airflow 3.3 plus the two peer providers the DAG-parse
# figure compares against, pinned so that runs stay comparable; the project venv is left untouched.  The official
# SDK (urllib3<2) gets its own venv from bench/sdk_env.py (.venv-sdk when the contract tests made it, else
# bench/.venv-sdk).
BENCH_VENV := bench/.venv
BENCH_REQS := $(AF3_REQS) "apache-airflow-providers-http==6.3.0" "apache-airflow-providers-databricks==7.23.0"
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell (cat pyproject.toml; echo '$(BENCH_REQS)') | sha256sum | cut -c1-16)

$(BENCH_STAMP): | uv
	$(call section,bench venv: $(BENCH_VENV) with the provider and the http + databricks providers)
	@test -x $(BENCH_VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(BENCH_VENV)
	@rm -f $(BENCH_VENV)/.installed-*
	VIRTUAL_ENV=$(BENCH_VENV) $(UV) pip install -q -e ".[emulator]" $(BENCH_REQS)
	$(call compile_venv,$(BENCH_VENV))
	@touch $@

bench: venv $(BENCH_STAMP)
	$(call section,bench: figures 1-8 (table below; JSON in bench/results.json))
	$(BENCH_VENV)/bin/python -m bench
# ---------------------------------------------------------------------------------------------------------------

clean:
	rm -rf $(VENV) $(VENV_AF2) $(VENV_AF31) $(VENV_AF34) $(TOOLS_VENV) .venv-sdk .venv-deploy $(BENCH_VENV) bench/.venv-sdk
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache tests/ui/output
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf docs/.venv docs/_build

# ---- ui-test ------------------------------------------------------------------------------------------------
# The browser tests alone (make test, and so .ci/run, runs them too): the Candela connection form, the Candela
# page and a review on Required Actions in the real Airflow 3.3 UI: `airflow api-server` (SQLite, temp home) + the
# emulator + headless Debian Chromium driven by Playwright's Python package (no browser download; chromium and
# chromium-driver come from `make system-deps`). Screenshots land in
# tests/ui/output/ (gitignored). About 1-2 minutes.
.PHONY: ui-test
ui-test: system-deps venv
	$(call section,ui-test: the Candela connection form, the Candela page and a review in the Airflow UI (headless Chromium))
	@$(VENV)/bin/python -c 'import playwright.sync_api' 2>/dev/null || VIRTUAL_ENV=$(VENV) $(UV) pip install -q "playwright>=1.45"
	$(VENV)/bin/python -m pytest tests/ui -m ui -q

# ---- system-deps ----------------------------------------------------------------------------------------------
# The Debian packages the suites use, installed before any of them starts (no test installs anything): chromium and
# chromium-driver (the browser tests of make test), postgresql and redis-server (make deployment-test; their services
# are not started: the test runs its own servers on free loopback ports, so service starts are forbidden during the
# install). As root (or with password-less sudo) apt-get installs what is missing; otherwise one line says what to
# install, and the target fails.
SYSTEM_PACKAGES := chromium chromium-driver postgresql redis-server
.PHONY: system-deps
system-deps:
	@missing=""; \
	{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || missing="chromium chromium-driver"; \
	{ compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && id postgres >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	missing=$$(echo $$missing); \
	if [ -z "$$missing" ]; then echo "system-deps: $(SYSTEM_PACKAGES) present"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
	if [ "$$sudo" = none ] || ! command -v apt-get >/dev/null; then \
		echo "system-deps: missing $$missing; install as root: apt-get install -y --no-install-recommends $$missing"; exit 1; fi; \
	printf '\n\033[1m==> %s\033[0m\n' "system-deps: apt-get install $$missing"; \
	policy=/usr/sbin/policy-rc.d; made=0; \
	if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' | $$sudo tee $$policy >/dev/null && $$sudo chmod 755 $$policy && made=1; fi; \
	status=0; \
	$$sudo apt-get -o DPkg::Lock::Timeout=180 update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=180 install -y -qq \
			--no-install-recommends $$missing >/dev/null || status=$$?; \
	[ $$made = 0 ] || $$sudo rm -f $$policy; \
	[ $$status = 0 ] || { echo "system-deps: apt-get install $$missing failed ($$status)"; exit $$status; }

# ------------------------------------------------------------------------------------------------------------
# deployment-test (everything it runs lives in tests/deployment/).
# The example DAGs on a real Airflow 3.3 deployment, from nothing: postgresql and redis-server come from
# `make system-deps`, .venv-deploy gets Airflow 3.3 + the Celery and Postgres providers + the provider, then
# api-server, scheduler, dag-processor, triggerer and two Celery workers run as separate processes (PostgreSQL
# metadata DB and result backend, Redis broker, the Candela emulator), with the deferral, triggerer-restart and
# worker-kill scenarios. Takes about 2-4 minutes; leaves no process or port behind.
.PHONY: deployment-test
deployment-test: system-deps uv
	$(call section,deployment-test: the example DAGs on Airflow 3.3 with CeleryExecutor and PostgreSQL and Redis)
	PYTHON="$(PYTHON)" bash tests/deployment/run.sh

# ---- docs -----------------------------------------------------------------------------------------------------
# The documentation site: docs/*.md and docs/*.rst -> docs/_build/html (open docs/_build/html/index.html).
# docs/.venv holds Sphinx, its theme and MyST (the `docs` extra) beside Airflow 3.3 and the provider (editable,
# with the emulator and common-ai extras, so that the API reference imports every module); keyed like the other
# venvs. The build is warnings-as-errors and nitpicky (-W -n), from a fresh environment (-E) so that a warning is
# never hidden by an earlier build; docs/_ext/candela_docs.py fails it on a public name without a docstring or
# whose :param: lines differ from its signature, and on an internal link or anchor that leads nowhere. Nothing is
# fetched from the internet (no intersphinx, no linkcheck builder). make test builds it too (tests/ui/test_docs_site.py).
DOCS_VENV := docs/.venv
DOCS_STAMP := $(DOCS_VENV)/.installed-$(shell (cat pyproject.toml; echo 'docs $(AF3_REQS)') | sha256sum | cut -c1-16)

$(DOCS_STAMP): | uv
	$(call section,docs venv: $(DOCS_VENV) with Sphinx and the provider on Airflow 3.3)
	@test -x $(DOCS_VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(DOCS_VENV)
	@rm -f $(DOCS_VENV)/.installed-*
	$(UV) pip install -q --python $(DOCS_VENV)/bin/python -e ".[docs,emulator,common-ai]" $(AF3_REQS)
	@touch $@

.PHONY: docs
docs: $(DOCS_STAMP)
	$(call section,docs: sphinx-build -W -n into docs/_build/html)
	@home=$$(mktemp -d); trap 'rm -rf "$$home"' EXIT; \
	AIRFLOW_HOME="$$home" AIRFLOW__CORE__LOAD_EXAMPLES=False \
		$(DOCS_VENV)/bin/sphinx-build -E -W -n --keep-going -q -b html docs docs/_build/html
	@echo "docs: file://$(CURDIR)/docs/_build/html/index.html"
