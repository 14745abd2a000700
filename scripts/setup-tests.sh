#!/usr/bin/env bash
# Idempotent setup of what the test suite needs beyond scripts/setup.sh (which it
# runs first): benchmark and check tools, bwa and samtools for the cost benchmark,
# setcap and Python for the shared-node tests, dpkg-dev for the package test,
# Chromium and a Python venv for the report tests, and (as root) a PostgreSQL server
# with a test-only role. Never run this on a machine you only want to trace on.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

LOG_NAME=setup-tests
# shellcheck source=scripts/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

# 1. Tools used by tests and benchmarks.
# r-base-core: a job that dies of an R error (tests/tests/it/failure_context.rs);
# tmux: drives `denet-agent top` in a terminal (tests/tests/it/top_tui.rs).
apt_install hyperfine bpftool strace bwa samtools libcap2-bin python3 passwd dpkg-dev time \
  r-base-core tmux
# The kernel matrix (cargo xtask kernel-test, docs/kernels.md): QEMU boots Debian's
# stock kernels; busybox, kmod (depmod) and the decompressors build their initramfs.
apt_install qemu-system-x86 busybox-static kmod xz-utils zstd
# 2. Report, notebook and Python package test tools: Debian's Chromium renders the HTML
#    report in a test; pandas, polars and matplotlib (in a venv under target/, never
#    the system Python) run the notebook example. The tests find them there.
apt_install chromium python3-venv
PYENV_DIR="${DENET_PYENV:-$(cd "$(dirname "$0")/.." && pwd)/target/pyenv}"
# maturin builds the Python wheel (`cargo xtask wheel`), pytest runs its tests.
PY_PACKAGES=(pandas polars matplotlib maturin pytest)
if [ ! -x "$PYENV_DIR/bin/python" ]; then
  log "creating Python venv $PYENV_DIR"
  /usr/bin/python3 -m venv "$PYENV_DIR"
fi
if ! "$PYENV_DIR/bin/python" -c 'import pandas, polars, matplotlib, pytest' 2>/dev/null \
  || [ ! -x "$PYENV_DIR/bin/maturin" ]; then
  log "pip install ${PY_PACKAGES[*]} into $PYENV_DIR"
  "$PYENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
# 3. PostgreSQL for the job-history tests (tests/tests/it/history_db.rs): Debian's
#    server, a cluster listening on 127.0.0.1:5432 (started on every run: nothing
#    keeps it running between sessions, there is no systemd), and a login role
#    denet/denet with CREATEDB (each test creates and drops its own database).
#    Only as root; otherwise the PostgreSQL tests skip (fail in CI).
if [ "$(id -u)" -eq 0 ]; then
  apt_install postgresql
  pg_psql() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@"; }
  # The newest installed cluster; create one if the package left none.
  pg_cluster=$(pg_lsclusters -h 2>/dev/null | sort -k1,1V | tail -n1 || true)
  if [ -z "$pg_cluster" ]; then
    pg_ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    log "creating PostgreSQL $pg_ver cluster main"
    pg_createcluster "$pg_ver" main --port 5432 >/dev/null
    pg_cluster=$(pg_lsclusters -h | sort -k1,1V | tail -n1)
  fi
  read -r pg_ver pg_name pg_port pg_status _ <<<"$pg_cluster"
  if [ "$pg_port" != 5432 ]; then
    log "PostgreSQL cluster $pg_ver/$pg_name is on port $pg_port, not 5432 (tests use DENET_TEST_PG_URL)"
  fi
  if [ "$pg_status" != online ]; then
    log "starting PostgreSQL cluster $pg_ver/$pg_name"
    pg_ctlcluster "$pg_ver" "$pg_name" start
  fi
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p "$pg_port" && break
    sleep 0.5
  done
  pg_isready -q -h 127.0.0.1 -p "$pg_port" || { log "PostgreSQL is not accepting connections on 127.0.0.1:$pg_port"; exit 1; }
  if [ "$(pg_psql -p "$pg_port" -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'denet'")" != 1 ]; then
    log "creating PostgreSQL role denet"
    pg_psql -p "$pg_port" -c "CREATE ROLE denet LOGIN CREATEDB PASSWORD 'denet'"
  else
    # Keep it usable even if someone changed it.
    pg_psql -p "$pg_port" -c "ALTER ROLE denet LOGIN CREATEDB PASSWORD 'denet'"
  fi
else
  log "not root: PostgreSQL is not set up; the PostgreSQL history tests will skip (set DENET_TEST_PG_URL to use a server of your own)"
fi
# 4. A real single-node Slurm for the workflow tests (tests/tests/it/slurm_jobs.rs):
#    Debian's slurm-wlm and munge on loopback (scripts/setup-slurm.sh), with the
#    project's TaskProlog installed as a node's administrator would
#    (docs/workflows.md). Only as root; otherwise the Slurm tests skip (fail in CI).
if [ "$(id -u)" -eq 0 ]; then
  install -D -m 0755 "$(dirname "$0")/../packaging/slurm-task-prolog" /etc/slurm/denet-task-prolog
  slurm_extra=$(mktemp)
  echo "TaskProlog=/etc/slurm/denet-task-prolog" >"$slurm_extra"
  DENET_SLURM_EXTRA_CONF="$slurm_extra" bash "$(dirname "$0")/setup-slurm.sh"
  rm -f "$slurm_extra"
else
  log "not root: Slurm is not set up; the Slurm tests will skip"
fi
log "ok"
