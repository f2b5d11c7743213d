#!/usr/bin/env bash
# `make deployment-test`: the example DAGs on a real Airflow 3.3 deployment, from nothing.
#
# 1. Debian packages: postgresql and redis-server (apt-get, only when missing; their services are not
#    started by the install: the test starts its own servers on free loopback ports).
# 2. .venv-deploy: Airflow 3.3 + the Celery and Postgres providers + psycopg2 + this provider (editable,
#    with the emulator extra). Rebuilt only when pyproject.toml or the pins below change.
# 3. tests/deployment/run_deployment.py: starts PostgreSQL, Redis, the Candela emulator, the API server,
#    scheduler, DAG processor, triggerer and two Celery workers, runs the scenarios, stops everything.
#
# Needs root (apt-get; PostgreSQL runs as the `postgres` user the package creates). Extra arguments go
# to run_deployment.py (e.g. --keep to keep the run directory with every log).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PYTHON="${PYTHON:-python3}"
VENV="${DEPLOY_VENV:-.venv-deploy}"
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
REQS=(
    "apache-airflow==3.3.*"
    "apache-airflow-providers-common-compat>=1.22"
    "apache-airflow-providers-celery>=3.12"
    "apache-airflow-providers-postgres>=6.2"
    "psycopg2-binary>=2.9"
    "statsd>=3.3"  # Airflow's StatsD metrics logger: the deployment sends its metrics to the test's listener
)

section() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# ---------------------------------------------------------------- 1. PostgreSQL and Redis (Debian)
have_pg() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && id postgres >/dev/null 2>&1; }
have_redis() { command -v redis-server >/dev/null 2>&1; }
if ! have_pg || ! have_redis; then
    section "apt-get install postgresql redis-server"
    if [ "$(id -u)" != 0 ]; then echo "deployment-test: needs root for apt-get (or preinstall postgresql, redis-server)"; exit 1; fi
    # The packages' maintainer scripts would start the system services (port 5432/6379); this test runs its
    # own servers, so forbid service starts during the install (the usual policy-rc.d), unless one exists.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql redis-server >/dev/null
    [ "$made_policy" = 1 ] && rm -f "$policy"
    trap - EXIT
fi
have_pg && have_redis || { echo "deployment-test: postgresql or redis-server still missing after apt-get"; exit 1; }

# ---------------------------------------------------------------- 2. the deployment venv
# uv as `make deployment-test` exports it (on PATH, or the Makefile's .venv-tools copy); never pip into $PYTHON.
UV="${UV:-$(command -v uv || true)}"
[ -n "$UV" ] || { echo "deployment-test: uv not found: run it as \`make deployment-test\` (which provides uv)"; exit 1; }
stamp="$VENV/.installed-$( (cat pyproject.toml; printf '%s\n' "${REQS[@]}") | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    section "venv: $VENV with Airflow 3.3, the Celery and Postgres providers and the provider (editable)"
    [ -x "$VENV/bin/python" ] || "$UV" venv -q --python "$PYTHON" "$VENV"
    rm -f "$VENV"/.installed-*
    "$UV" pip install -q --python "$VENV/bin/python" -e ".[emulator]" "${REQS[@]}"
    # Byte-compile once: every airflow process would otherwise compile its imports again.
    "$VENV/bin/python" -m compileall -q -j 0 "$VENV/lib" >/dev/null 2>&1 || true
    touch "$stamp"
fi

# ---------------------------------------------------------------- 3. the test
section "deployment test: $("$VENV/bin/python" -c 'import importlib.metadata as m; print("Airflow", m.version("apache-airflow"), "+ celery provider", m.version("apache-airflow-providers-celery"), "+ postgres provider", m.version("apache-airflow-providers-postgres"))')"
exec "$VENV/bin/python" -u tests/deployment/run_deployment.py "$@"
