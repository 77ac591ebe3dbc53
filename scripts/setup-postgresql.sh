#!/usr/bin/env bash
# Debian's PostgreSQL server binaries for the embedded engine (FerretDB's PostgreSQL backend). The
# server runs its own private cluster under the data directory (fhir_server/engine/postgres.py);
# the package's system cluster is not used. Without it the embedded engine cannot start, so this
# fails loudly unless FHIR_EMBEDDED_BACKEND=sqlite is chosen.
set -uo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian's postgresql for the embedded engine…"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
    && exit 0
fi
if [ "${FHIR_EMBEDDED_BACKEND:-postgresql}" = "sqlite" ]; then
  echo "warning: PostgreSQL is not installed; the embedded engine uses SQLite (FHIR_EMBEDDED_BACKEND=sqlite)" >&2
  exit 0
fi
echo "error: PostgreSQL is required for the embedded engine: apt-get install postgresql (as root), or set FHIR_EMBEDDED_BACKEND=sqlite" >&2
exit 1
