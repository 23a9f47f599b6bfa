#!/usr/bin/env bash
# `layersweep info`: a complete file (exit 0, datasets listed with their shapes), a partial
# one left by an injected write failure (exit 1, the missing layers named), the --plot
# picture (well-formed SVG with a bar per layer and phase), and its refusals (the file
# itself as --plot, an existing plot without --force, a missing or non-layersweep file:
# exit 2 with one error line).
# env: LS_BIN, LS_FIXTURES, LS_TEST_TMP
set -u
ls=${LS_BIN:?set LS_BIN}
fx=${LS_FIXTURES:?set LS_FIXTURES}
tmp=$(mktemp -d "${LS_TEST_TMP:-/tmp}/info.XXXXXX")
fails=0 passes=0
pass() { passes=$((passes + 1)); echo "PASS $1"; }
fail() { fails=$((fails + 1)); echo "FAIL $1: $2"; }
run=(run --model "$fx/gpt2_conv1d" --data "$fx/prompts.jsonl" --hooks all --pool mean --progress off
     --checkpoint-every off)

"$ls" "${run[@]}" --out "$tmp/ok.h5" 2>/dev/null
"$ls" info "$tmp/ok.h5" >"$tmp/ok.txt" 2>&1; rc=$?
if [ $rc = 0 ] && grep -q "^status:   complete" "$tmp/ok.txt" && grep -q "3 selected, 3 complete" "$tmp/ok.txt" &&
   grep -qE "^  /residual_post +float32 +\[3, 8, 64\]" "$tmp/ok.txt" &&
   grep -qE "^  /final_norm +float32 +\[8, 64\]" "$tmp/ok.txt" && grep -q "GPT2LMHeadModel" "$tmp/ok.txt"; then
  pass "complete file: exit 0, status, layers, shapes, model"
else
  fail "complete" "rc=$rc $(head -n 8 "$tmp/ok.txt" | tr '\n' '|')"
fi

LS_FAULT_WRITE_LAYER=1 "$ls" "${run[@]}" --out "$tmp/part.h5" 2>/dev/null
"$ls" info "$tmp/part.h5" >"$tmp/part.txt" 2>&1; rc=$?
if [ $rc = 1 ] && grep -q "^status:   partial" "$tmp/part.txt" && grep -q "3 selected, 1 complete (missing: 1 2)" "$tmp/part.txt"; then
  pass "partial file: exit 1, the missing layers named"
else
  fail "partial" "rc=$rc $(grep -E 'status|layers' "$tmp/part.txt" | tr '\n' '|')"
fi

"$ls" info "$tmp/ok.h5" --plot "$tmp/p.svg" >/dev/null 2>&1; rc=$?
bars=$(grep -c "<title>layer " "$tmp/p.svg" 2>/dev/null)
if [ $rc = 0 ] && python3 -c "import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])" "$tmp/p.svg" 2>/dev/null &&
   [ "${bars:-0}" -ge 3 ] && grep -q "<title>layer 2 forward" "$tmp/p.svg"; then
  pass "--plot: well-formed SVG, $bars bars"
else
  fail "plot" "rc=$rc bars=${bars:-0}"
fi

one_error() { # name, expected rc, needle, cmd...
  local name=$1 want=$2 needle=$3; shift 3
  "$@" >"$tmp/e.out" 2>"$tmp/e.err"; local rc=$?
  if [ $rc = "$want" ] && [ "$(wc -l <"$tmp/e.err")" = 1 ] && grep -q "layersweep: error: .*$needle" "$tmp/e.err"; then
    pass "$name"
  else
    fail "$name" "rc=$rc stderr: $(tr '\n' '|' <"$tmp/e.err")"
  fi
}
sum=$(md5sum <"$tmp/ok.h5")
one_error "--plot onto the file itself is refused" 2 "ok.h5" "$ls" info "$tmp/ok.h5" --plot "$tmp/ok.h5" --force
[ "$(md5sum <"$tmp/ok.h5")" = "$sum" ] || fail "plot onto input" "the file changed"
one_error "an existing plot needs --force" 2 "--force" "$ls" info "$tmp/ok.h5" --plot "$tmp/p.svg"
one_error "a missing file" 2 "nope.h5" "$ls" info "$tmp/nope.h5"
one_error "a file that is not HDF5" 2 "not an HDF5 file" "$ls" info "$fx/gpt2_conv1d/model.safetensors"
h5copy -i "$tmp/ok.h5" -o "$tmp/other.h5" -s /samples -d /samples   # HDF5, but not ours
one_error "an HDF5 file that is not a layersweep output" 2 "not a layersweep output" "$ls" info "$tmp/other.h5"
one_error "no file given" 2 "needs the output file" "$ls" info

echo "info tests: $passes passed, $fails failed"
rm -rf "$tmp"
[ "$fails" = 0 ]
