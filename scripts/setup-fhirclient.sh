#!/usr/bin/env bash
# SMART's own JavaScript client (npm `fhirclient`), for the test that runs it in Chromium from
# another origin (tests/test_cors_fhirclient.py). Only its browser bundle is kept. Without npm the
# test skips with a reason.
set -euo pipefail
dest=${1:-.tools/fhirclient}
version=2.6.3
if [ -f "$dest/$version/fhir-client.js" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "warning: npm is not available; the fhirclient CORS test will be skipped" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack "fhirclient@$version" --silent >/dev/null && tar xzf "fhirclient-$version.tgz" package/build/fhir-client.js)
mkdir -p "$dest/$version"
cp "$work/package/build/fhir-client.js" "$dest/$version/fhir-client.js"
echo "fhirclient $version in $dest/$version"
