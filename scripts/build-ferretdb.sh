#!/usr/bin/env bash
# Build FerretDB v1 from the Go module proxy into $1 (default .tools/bin).
# `go install …@v1.24.2` yields a binary that panics at start (the module zip lacks the
# generated build/version/version.txt), so we copy the module source, write that file,
# and build it as its own main module, with one small source patch (below).
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

# Source patch (kept in this file so that the Makefile, which rebuilds the binary when this script
# changes, also rebuilds it when the patch changes). Applied with --fuzz=0: if the upstream text
# differs (a version bump), the build stops here instead of silently building an unpatched binary.
# FERRETDB_NO_PATCHES=1 builds the unpatched upstream source (only to reproduce old measurements).
#
# sqlite-id-index: FerretDB's SQLite backend creates the unique _id index on
# `_ferretdb_sjson->"_id"` (metadata/registry.go, indexesCreate) but compares pushed-down _id
# filters on `_ferretdb_sjson->'$._id'` (metadata.IDColumn, used by Query, UpdateAll, DeleteAll
# and Explain in collection.go). Same value ('_id' on the right of -> is shorthand for '$._id'),
# but SQLite uses an expression index only for the identical expression, so every find, update
# and delete by _id scanned the whole table (EXPLAIN QUERY PLAN: SCAN). Changing the lookup, not
# the index, keeps existing SQLite files valid and indexed. See docs/benchmarks.md.
#
# sqlite-id-pushdown: the SQLite backend pushed the _id equality down to SQL only when the filter
# is exactly {_id: v} (collection.go, Query and Explain), so the server's version-guarded writes
# ({_id: v, _v: {$lt: n}}, Repository._apply) decoded every document of the collection in Go. Top-level
# filter keys are ANDed and the handler re-applies the whole filter to whatever Query returns
# (backends.Collection contract: "Filter may be ... safely applied partially"; limits are not pushed
# down with a filter), so selecting by the _id index first returns the same documents.
#
# pg-gin-index: on the PostgreSQL backend every pushed-down filter is `_jsonb->'f' @> value`
# (query.go, filterEqual), which a btree index on `(_jsonb->'f')` cannot serve, so every search
# scanned (docs/benchmarks.md, search benchmark). Non-unique indexes whose fields do not start
# with "_" — the FHIR server's search index fields, which may hold arrays — are created as GIN
# `jsonb_path_ops` indexes instead, which serve exactly that containment operator for scalars and
# array elements alike; storage fields (`_id`, `_lu`, …) keep btree (sorting, ranges).
#
# pg-id-equality: the PostgreSQL backend pushed `{_id: v}` down as `_jsonb->$1 @> $2`, which the
# unique btree index on `(_jsonb->'_id')` cannot serve: every read by id scanned the table. For
# string and ObjectID ids it is now `_jsonb->'_id' = $1`, the index's own expression (equal
# results: an _id is never an array, and containment of a scalar is equality).
#
# pg-logical-pushdown: the PostgreSQL backend pushed nothing down for top-level `$or`/`$and` nor
# for `$in`, so the server's patient-compartment filter ({$or: [{subject: p}, {author: p}]}),
# `_id` lists and `_revinclude`/chained lookups ({field: {$in: [...]}}) scanned the table. `$in` is
# now the OR of the per-value equalities (`_id` by its primary-key expression; at most 1000 values),
# and `$or`/`$and` the OR/AND of their branches' pushed-down conditions (`$or` pushes nothing if a
# branch pushes nothing). Each pushed-down condition selects a superset of the matches and the
# handler re-applies the whole filter, as for the existing pushdown.
PATCHES="none"
if [ "${FERRETDB_NO_PATCHES:-0}" = 1 ]; then
  echo "warning: FERRETDB_NO_PATCHES=1: building FerretDB ${VERSION} without its source patch" >&2
else
  command -v patch >/dev/null || { echo "patch is required to build FerretDB (apt-get install patch)" >&2; exit 1; }
  patch -d "$WORK" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch -r - <<'PATCH' || { echo "FerretDB ${VERSION}: patch sqlite-id-index does not apply; update it in $0" >&2; exit 1; }
--- a/internal/backends/sqlite/metadata/metadata.go
+++ b/internal/backends/sqlite/metadata/metadata.go
@@ -27,7 +27,10 @@
 	DefaultColumn = backends.ReservedPrefix + "sjson"
 
 	// IDColumn is a SQLite path expression for _id field.
-	IDColumn = DefaultColumn + "->'$._id'"
+	//
+	// Patched (FHIR server, scripts/build-ferretdb.sh): written exactly as the _id index
+	// expression (registry.go, indexesCreate), or SQLite does not use that index.
+	IDColumn = DefaultColumn + "->'_id'"
 
 	// RecordIDColumn is a name for RecordID column to store capped collection record id.
 	RecordIDColumn = backends.ReservedPrefix + "record_id"
PATCH
  grep -qF "IDColumn = DefaultColumn + \"->'_id'\"" "$WORK/internal/backends/sqlite/metadata/metadata.go" \
    || { echo "FerretDB ${VERSION}: patch sqlite-id-index not in effect" >&2; exit 1; }
  patch -d "$WORK" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch -r - <<'PATCH' || { echo "FerretDB ${VERSION}: patch sqlite-id-pushdown does not apply; update it in $0" >&2; exit 1; }
--- a/internal/backends/sqlite/collection.go
+++ b/internal/backends/sqlite/collection.go
@@ -72,8 +72,7 @@
 
 	// that logic should exist in one place
 	// TODO https://github.com/FerretDB/FerretDB/issues/3235
-	if params.Filter.Len() == 1 {
-		v, _ := params.Filter.Get("_id")
+	if v := filterID(params.Filter); v != nil {
 		switch v.(type) {
 		case string, types.ObjectID:
 			whereClause = fmt.Sprintf(` WHERE %s = ?`, metadata.IDColumn)
@@ -275,8 +274,7 @@
 
 	// that logic should exist in one place
 	// TODO https://github.com/FerretDB/FerretDB/issues/3235
-	if params.Filter.Len() == 1 {
-		v, _ := params.Filter.Get("_id")
+	if v := filterID(params.Filter); v != nil {
 		switch v.(type) {
 		case string, types.ObjectID:
 			filterPushdown = true
@@ -535,3 +533,23 @@
 var (
 	_ backends.Collection = (*collection)(nil)
 )
+
+// filterID returns the value of the filter's top-level _id key, or nil.
+//
+// Patched (FHIR server, scripts/build-ferretdb.sh): upstream pushed _id down only for the filter
+// {_id: v}. Top-level keys are ANDed and the handler applies the whole filter to the rows returned,
+// so {_id: v, other: ...} can select by _id too. Filters with duplicate keys are left alone
+// (Get panics on them).
+func filterID(filter *types.Document) any {
+	if filter.Len() == 0 {
+		return nil
+	}
+
+	if _, dup := filter.FindDuplicateKey(); dup {
+		return nil
+	}
+
+	v, _ := filter.Get("_id")
+
+	return v
+}
PATCH
  [ "$(grep -cF 'if v := filterID(params.Filter); v != nil {' "$WORK/internal/backends/sqlite/collection.go")" = 2 ] \
    || { echo "FerretDB ${VERSION}: patch sqlite-id-pushdown not in effect" >&2; exit 1; }
  patch -d "$WORK" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch -r - <<'PATCH' || { echo "FerretDB ${VERSION}: patch pg-gin-index does not apply; update it in $0" >&2; exit 1; }
--- a/internal/backends/postgresql/metadata/registry.go
+++ b/internal/backends/postgresql/metadata/registry.go
@@ -817,7 +817,21 @@
 			q += "UNIQUE "
 		}
 
-		q += "INDEX %s ON %s (%s)"
+		// Patched (FHIR server, scripts/build-ferretdb.sh): indexes on fields not starting with "_"
+		// (the FHIR server's search index fields, often arrays) become GIN jsonb_path_ops indexes,
+		// which serve the `_jsonb->'f' @> value` filters FerretDB pushes down; btree cannot.
+		gin := !index.Unique
+		for _, key := range index.Key {
+			if strings.HasPrefix(key.Field, "_") {
+				gin = false
+			}
+		}
+
+		if gin {
+			q += "INDEX %s ON %s USING gin (%s)"
+		} else {
+			q += "INDEX %s ON %s (%s)"
+		}
 
 		columns := make([]string, len(index.Key))
 
@@ -832,7 +846,9 @@
 			}
 
 			columns[i] = fmt.Sprintf("((%s->%s))", DefaultColumn, strings.Join(transformedParts, " -> "))
-			if key.Descending {
+			if gin {
+				columns[i] += " jsonb_path_ops"
+			} else if key.Descending {
 				columns[i] += " DESC"
 			}
 		}
PATCH
  grep -qF 'q += "INDEX %s ON %s USING gin (%s)"' "$WORK/internal/backends/postgresql/metadata/registry.go" \
    || { echo "FerretDB ${VERSION}: patch pg-gin-index not in effect" >&2; exit 1; }
  patch -d "$WORK" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch -r - <<'PATCH' || { echo "FerretDB ${VERSION}: patch pg-id-equality does not apply; update it in $0" >&2; exit 1; }
--- a/internal/backends/postgresql/query.go
+++ b/internal/backends/postgresql/query.go
@@ -137,6 +137,19 @@
 			panic("Invalid error type: PathError expected")
 		}
 
+		// Patched (FHIR server, scripts/build-ferretdb.sh): `_id` equality written as the unique
+		// index's own expression and operator, so reads and guarded writes by id use the index
+		// (`->$1 @> $2` can use neither the btree nor, with the key as a parameter, any index).
+		if rootKey == "_id" {
+			switch rootVal.(type) {
+			case string, types.ObjectID:
+				filters = append(filters, fmt.Sprintf(`%s->'_id' = %s`, metadata.DefaultColumn, p.Next()))
+				args = append(args, string(must.NotFail(sjson.MarshalSingleValue(rootVal))))
+
+				continue
+			}
+		}
+
 		switch v := rootVal.(type) {
 		case *types.Document:
 			iter := v.Iterator()
PATCH
  grep -qF "filters = append(filters, fmt.Sprintf(\`%s->'_id' = %s\`" "$WORK/internal/backends/postgresql/query.go" \
    || { echo "FerretDB ${VERSION}: patch pg-id-equality not in effect" >&2; exit 1; }
  patch -d "$WORK" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch -r - <<'PATCH' || { echo "FerretDB ${VERSION}: patch pg-logical-pushdown does not apply; update it in $0" >&2; exit 1; }
--- a/internal/backends/postgresql/query.go
+++ b/internal/backends/postgresql/query.go
@@ -114,6 +114,15 @@
 		//
 		// all of the other top-level operators such as `$or` do not support pushdown yet
 		if strings.HasPrefix(rootKey, "$") {
+			// Patched (FHIR server, scripts/build-ferretdb.sh): `$or` and `$and` of pushable
+			// branches are pushed down, so that their conditions can use indexes.
+			if f, a, err := filterLogical(p, rootKey, rootVal); err != nil {
+				return "", nil, lazyerrors.Error(err)
+			} else if f != "" {
+				filters = append(filters, f)
+				args = append(args, a...)
+			}
+
 			continue
 		}
 
@@ -167,6 +176,13 @@
 				}
 
 				switch k {
+				case "$in":
+					// Patched (FHIR server, scripts/build-ferretdb.sh): see filterIn.
+					if f, a := filterIn(p, rootKey, key, v, keyOperator); f != "" {
+						filters = append(filters, f)
+						args = append(args, a...)
+					}
+
 				case "$eq":
 					if f, a := filterEqual(p, key, v, keyOperator); f != "" {
 						filters = append(filters, f)
@@ -342,3 +358,119 @@
 
 	return
 }
+
+// maxInPushdown bounds the number of `$in` values pushed down as one SQL condition.
+const maxInPushdown = 1000
+
+// filterLogical returns a SQL condition selecting a superset of the documents matching a top-level
+// `$or` or `$and` (patched in by the FHIR server, scripts/build-ferretdb.sh).
+//
+// Each branch is pushed down as a whole filter would be (with dotted keys removed, as the handler
+// does for the root unless nested pushdown is enabled). A branch that pushes nothing down selects
+// everything, so an `$or` with such a branch pushes nothing down, and an `$and` skips it.
+// The handler applies the whole filter to what the query returns, so a superset is correct.
+func filterLogical(p *metadata.Placeholder, op string, v any) (string, []any, error) {
+	if op != "$or" && op != "$and" {
+		return "", nil, nil
+	}
+
+	branches, ok := v.(*types.Array)
+	if !ok || branches.Len() == 0 {
+		return "", nil, nil
+	}
+
+	saved := *p
+
+	var parts []string
+	var args []any
+
+	for i := 0; i < branches.Len(); i++ {
+		b, ok := must.NotFail(branches.Get(i)).(*types.Document)
+		if !ok {
+			*p = saved
+			return "", nil, nil
+		}
+
+		b = b.DeepCopy()
+		for _, k := range b.Keys() {
+			if strings.ContainsRune(k, '.') {
+				b.Remove(k)
+			}
+		}
+
+		where, a, err := prepareWhereClause(p, b)
+		if err != nil {
+			return "", nil, lazyerrors.Error(err)
+		}
+
+		if where == "" {
+			if op == "$or" {
+				*p = saved
+				return "", nil, nil
+			}
+
+			continue
+		}
+
+		parts = append(parts, "("+strings.TrimPrefix(where, " WHERE ")+")")
+		args = append(args, a...)
+	}
+
+	if len(parts) == 0 {
+		*p = saved
+		return "", nil, nil
+	}
+
+	sep := " AND "
+	if op == "$or" {
+		sep = " OR "
+	}
+
+	return "(" + strings.Join(parts, sep) + ")", args, nil
+}
+
+// filterIn returns a SQL condition selecting the documents where the value under k equals (or, for
+// an array, contains) one of the values of the `$in` array v: the equality conditions of the
+// values, ORed (patched in by the FHIR server, scripts/build-ferretdb.sh), so that each can use
+// the field's index. `_id` uses the primary key's expression, as in the `_id` equality patch.
+// Nothing is pushed down for more than maxInPushdown values or any value equality cannot push down.
+func filterIn(p *metadata.Placeholder, rootKey string, k any, v any, operator string) (string, []any) {
+	values, ok := v.(*types.Array)
+	if !ok || values.Len() > maxInPushdown {
+		return "", nil
+	}
+
+	if values.Len() == 0 {
+		return "FALSE", nil
+	}
+
+	saved := *p
+
+	var parts []string
+	var args []any
+
+	for i := 0; i < values.Len(); i++ {
+		value := must.NotFail(values.Get(i))
+
+		if rootKey == "_id" {
+			switch value.(type) {
+			case string, types.ObjectID:
+				parts = append(parts, fmt.Sprintf(`%s->'_id' = %s`, metadata.DefaultColumn, p.Next()))
+				args = append(args, string(must.NotFail(sjson.MarshalSingleValue(value))))
+
+				continue
+			}
+		}
+
+		f, a := filterEqual(p, k, value, operator)
+		if f == "" {
+			*p = saved
+			return "", nil
+		}
+
+		parts = append(parts, f)
+		args = append(args, a...)
+	}
+
+	return "(" + strings.Join(parts, " OR ") + ")", args
+}
PATCH
  grep -qF 'func filterLogical(' "$WORK/internal/backends/postgresql/query.go" \
    || { echo "FerretDB ${VERSION}: patch pg-logical-pushdown not in effect" >&2; exit 1; }
  PATCHES="sqlite-id-index,sqlite-id-pushdown,pg-gin-index,pg-id-equality,pg-logical-pushdown"
fi

echo "$VERSION" > "$WORK/build/version/version.txt"
# `ferretdb --version` prints this as "package:", so a binary says whether it is patched.
echo "go-module+patches:${PATCHES}" > "$WORK/build/version/package.txt"
(cd "$WORK" && CGO_ENABLED=0 go build -trimpath -o "$OUT_DIR/ferretdb.tmp" ./cmd/ferretdb)
mv "$OUT_DIR/ferretdb.tmp" "$OUT_DIR/ferretdb"
"$OUT_DIR/ferretdb" --version >/dev/null
echo "built $OUT_DIR/ferretdb ($VERSION, patches: $PATCHES)"
