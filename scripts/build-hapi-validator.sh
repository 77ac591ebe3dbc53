#!/usr/bin/env bash
# Build the HAPI FHIR validator CLI (tools/hapi-validator) into $1 (default .tools/hapi-validator):
# $1/lib/*.jar is its classpath (java -cp "$1/lib/*" fhirdmp.Main ...). Maven Central only; the
# Makefile runs this only when the pom or the source changed. Used by tools/gen_profiles.py
# (snapshots) and tests/test_profiles.py (the profile/server agreement test).
set -euo pipefail
OUT="$(mkdir -p "${1:-.tools/hapi-validator}" && cd "${1:-.tools/hapi-validator}" && pwd)"
SRC="$(cd "$(dirname "$0")/../tools/hapi-validator" && pwd)"
command -v java >/dev/null || { echo "java (17 or later) is required to build the HAPI FHIR validator" >&2; exit 1; }
command -v mvn >/dev/null || { echo "mvn is required to build the HAPI FHIR validator" >&2; exit 1; }
rm -rf "$OUT/build" "$OUT/lib"
mvn -B -q -f "$SRC/pom.xml" -Dhapi.build.dir="$OUT/build" package
mv "$OUT/build/lib" "$OUT/lib"
rm -rf "$OUT/build"
