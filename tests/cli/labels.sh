#!/usr/bin/env bash
# tests/cli/labels.sh BUILD_DIR (CTest: unit.labels): every registered CTest test has a
# label, so that `ctest -L <stage>` selects whole stages. Fails naming the tests without.
set -u
dir=${1:?usage: labels.sh BUILD_DIR}
json=$(cd "$dir" && ctest --show-only=json-v1) || { echo "FAIL: ctest --show-only failed"; exit 1; }
echo "$json" | python3 -c '
import json, sys
tests = json.load(sys.stdin)["tests"]
def labels(t):
    for p in t.get("properties", []):
        if p["name"] == "LABELS":
            return p["value"]
    return []
bad = [t["name"] for t in tests if not labels(t)]
if len(tests) < 10:
    print("FAIL: only %d tests registered (cannot tell)" % len(tests)); sys.exit(1)
if bad:
    print("FAIL: tests without a label: " + ", ".join(bad)); sys.exit(1)
print("PASS: all %d tests have labels" % len(tests))
'
