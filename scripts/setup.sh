#!/usr/bin/env bash
# One idempotent setup step for a fresh machine: Python virtual environment with the pinned
# packages, the pinned JVM artifacts from Maven Central into .cache/jars, and (with --with-postgres)
# the PostgreSQL server the e2e tests use. Safe to re-run; each part is skipped when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WITH_POSTGRES=0
for arg in "$@"; do
  case "$arg" in
    --with-postgres|--with-e2e) WITH_POSTGRES=1 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*"; }

# --- Java ----------------------------------------------------------------------------------
if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  log "installing Java 17 and Maven from Debian packages"
  apt-get update -qq && apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null
fi

# --- Python --------------------------------------------------------------------------------
PY=${PYTHON:-python3}
stamp=.venv/.installed
fingerprint=$(cat setup.cfg pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$fingerprint" ]; then
  log "creating .venv and installing fitbit-stream[dev] with constraints.txt"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
  echo "$fingerprint" > "$stamp"
else
  log ".venv up to date"
fi

# --- JVM artifacts -------------------------------------------------------------------------
resolve() {  # resolve <pom dir> <output dir>
  local pom=jvm/$1/pom.xml out=.cache/jars/$1
  local want; want=$(sha256sum "$pom" | cut -c1-16)
  if [ -f "$out/.resolved" ] && [ "$(cat "$out/.resolved")" = "$want" ]; then
    log "jars for $1 up to date"; return
  fi
  log "resolving jars for $1 from Maven Central (pinned in $pom)"
  rm -rf "$out"
  mvn -B -q -f "$pom" dependency:copy-dependencies -DoutputDirectory="$ROOT/$out"
  echo "$want" > "$out/.resolved"
}
resolve spark
resolve kafka

# --- The driver JVM's class archive ------------------------------------------------------------
# A local session maps the classes a small training run loaded instead of loading them from the
# jars again: a cold start in about half the time. One per Java and jar set, about 200 MB; optional
# (a session without it only starts slower). A failed training is not retried until its
# .failed file is deleted.
if status=$(.venv/bin/python -m fitbit_stream.class_archive --check 2>&1); then
  log "$status"
else
  log "training the driver JVM's class archive (a small pipeline run, about a minute and a half)"
  log "$(.venv/bin/python -m fitbit_stream.class_archive 2>&1 | tail -n 1)"
fi

# --- PostgreSQL and Chromium (e2e tests only) ------------------------------------------------
if [ "$WITH_POSTGRES" = 1 ]; then
  # Debian's Chromium for the dashboard's browser test (Playwright drives it; its own browser
  # download is not reachable from here).
  if ! command -v chromium >/dev/null 2>&1; then
    log "installing Chromium from Debian packages"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    log "Chromium present"
  fi
  if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    log "installing PostgreSQL from Debian packages"
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  else
    log "PostgreSQL server binaries present"
  fi
fi
log "done"
