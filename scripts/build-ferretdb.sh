#!/usr/bin/env bash
# Build FerretDB v1 from the Go module proxy into $1 (default .tools/bin).
# `go install …@v1.24.2` yields a binary that panics at start (the module zip lacks the
# generated build/version/version.txt), so we copy the module source, write that file,
# and build it as its own main module.
set -euo pipefail
VERSION="${FERRETDB_VERSION:-v1.24.2}"
OUT_DIR="$(mkdir -p "${1:-.tools/bin}" && cd "${1:-.tools/bin}" && pwd)"
command -v go >/dev/null || { echo "go is required to build FerretDB" >&2; exit 1; }
SRC="$(go mod download -json "github.com/FerretDB/FerretDB@${VERSION}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$SRC" ] || { echo "could not download FerretDB ${VERSION}" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'chmod -R u+w "$WORK"; rm -rf "$WORK"' EXIT
cp -r "$SRC/." "$WORK/"
chmod -R u+w "$WORK"
echo "$VERSION" > "$WORK/build/version/version.txt"
echo "go-module" > "$WORK/build/version/package.txt"
(cd "$WORK" && CGO_ENABLED=0 go build -trimpath -o "$OUT_DIR/ferretdb.tmp" ./cmd/ferretdb)
mv "$OUT_DIR/ferretdb.tmp" "$OUT_DIR/ferretdb"
"$OUT_DIR/ferretdb" --version >/dev/null
echo "built $OUT_DIR/ferretdb ($VERSION)"
