#!/usr/bin/env bash
# `make deployment-test`: the example DAGs on a real Airflow 3.3 deployment, from nothing.
#
# 1. Debian packages: postgresql and redis-server must be there (`make system-deps` installs them before this
#    runs; the test starts its own servers on free loopback ports, not the packages' services).
# 2. .venv-deploy: Airflow 3.3 + the Celery and Postgres providers + psycopg2 + this provider (editable,
#    with the emulator extra). Rebuilt only when pyproject.toml or the pins below change.
# 3. tests/deployment/run_deployment.py: starts PostgreSQL, Redis, the Candela emulator, the API server,
#    scheduler, DAG processor, triggerer and two Celery workers, runs the scenarios, stops everything.
#
# PostgreSQL runs as the `postgres` user the package creates. Extra arguments go to run_deployment.py (e.g.
# --keep to keep the run directory with every log).
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
missing=$(have_pg || printf 'postgresql '; have_redis || printf 'redis-server')
[ -z "$missing" ] || { echo "deployment-test: ${missing% } missing: run \`make system-deps\` as root"; exit 1; }

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
