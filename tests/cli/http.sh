#!/usr/bin/env bash
# tests/cli/http.sh (CTest: cli.http): sweeps of a model served over HTTP by a real nginx
# (no mocks), started here on 127.0.0.1 at an unprivileged port with its own config and
# prefix in a scratch directory. The model (make-model, 3 shards, vocab 50000) is served
#   /plain/       as a plain directory
#   /org/tiny/resolve/main/<file>   the hub layout: 302 to http://localhost:PORT/cdn/<file>
#                 (another host name, as the hub redirects to its CDN; HF_ENDPOINT here)
#   /norange/     with max_ranges 0 (answers a Range request with 200 and the whole file)
#   /slow/, /chg/ rate-limited, for the faults in the middle of a sweep
#   /badrange/, /short/  the index answered with a wrong Content-Range / a short body
#   /nohead/      HEAD refused with 405 (size and ETag then come from a range GET)
# Checks: every dataset bit-identical to the local run (h5diff); body bytes served (the
# access log's $body_bytes_sent) well under the checkpoint size (the data uses 300 of
# 50000 vocabulary rows); a second run served from the range cache (zero body bytes);
# the token sent to the endpoint's host only and written nowhere; a hub id found in the
# local Hugging Face cache reads nothing from the network; a 404 and a server without
# ranges, a wrong Content-Range and a short body refused in one line naming the URL;
# nginx killed mid-sweep: the run fails with
# a partial file, nginx restarted, --resume completes bit-identical; a file changed on
# the server between runs: its cached ranges dropped, --resume refused; a change in the
# middle of a run refused.
# env: LS_BIN (layersweep), LS_TEST_TMP (scratch)
set -u
ls=${LS_BIN:?set LS_BIN}
command -v nginx >/dev/null 2>&1 || { echo "SKIPPED: nginx not installed (launch/install-deps)"; exit 77; }
command -v h5diff >/dev/null 2>&1 || { echo "FAIL: h5diff not found"; exit 1; }
T=$(mktemp -d "${LS_TEST_TMP:-/tmp}/http.XXXXXX")
export OMP_NUM_THREADS=1 LS_HTTP_BACKOFF_MS=100 LS_HTTP_TIMEOUT=10
unset HF_TOKEN HF_HOME HF_HUB_CACHE HF_ENDPOINT
export HOME=$T/home XDG_CACHE_HOME=$T/xdg # no run here touches the user's caches
mkdir -p "$HOME"
fails=0 passes=0
pass() { passes=$((passes + 1)); echo "PASS $1"; }
fail() { fails=$((fails + 1)); echo "FAIL $1: $2"; }
status_of() { h5dump -a /status "$1" 2>/dev/null | sed -n 's/.*(0): "\(.*\)".*/\1/p'; }
attr_of() { h5dump -a "/$2" "$1" 2>/dev/null | sed -n 's/.*(0): "\(.*\)".*/\1/p'; }
ERR_RE='^layersweep(\[rank [0-9]+\])?: error: '

# every dataset of the reference file (the profile's timings aside) equal in $2: h5diff of
# each; a dimension scale's REFERENCE_LIST attribute holds object addresses, which differ
# between files with other root attributes, so a scale's data is compared bit for bit
# (h5dump -b) instead
same_as() { # ref file -> 0 if equal
  local d n=0 out
  for d in $(h5ls -r "$1" | awk '$2 == "Dataset" {print $1}' | grep -v '^/profile/'); do
    n=$((n + 1))
    out=$(h5diff "$1" "$2" "$d" "$d" 2>&1) && continue
    if printf '%s\n' "$out" | grep -v 'differences found$' | grep -qv 'attribute: <REFERENCE_LIST of'; then
      echo "dataset $d differs"; return 1
    fi
    rm -f "$T/a.bin" "$T/b.bin"
    h5dump -d "$d" -b LE -o "$T/a.bin" "$1" >/dev/null 2>&1 && h5dump -d "$d" -b LE -o "$T/b.bin" "$2" >/dev/null 2>&1 &&
      cmp -s "$T/a.bin" "$T/b.bin" || { echo "dataset $d differs"; return 1; }
  done
  [ "$n" -ge 3 ] || { echo "only $n datasets compared"; return 1; }
}

# ---- the model, the data, the server --------------------------------------------------
$ls make-model --out "$T/m" --vocab 50000 --shards 3 --layers 8 --seed 11 >/dev/null 2>&1 &&
  $ls make-model --out "$T/m2" --vocab 50000 --shards 3 --layers 8 --seed 12 >/dev/null 2>&1 &&
  $ls make-data --out "$T/d.jsonl" --n 48 --min-len 4 --max-len 40 --vocab 300 >/dev/null 2>&1 ||
  { echo "FAIL setup: make-model / make-data"; exit 1; }
W=$T/www
for d in plain cdn norange slow chg chg2 badrange short nohead; do mkdir -p "$W/$d" && cp "$T/m"/* "$W/$d/"; done
model_bytes=$(cat "$T/m"/* | wc -c)
isz=$(stat -c %s "$T/m/model.safetensors.index.json")

PORT=
start_nginx() { # (re)start on $PORT (picked the first time)
  local try
  for try in 1 2 3 4 5 6 7 8; do
    [ -n "$PORT" ] || p=$((20000 + RANDOM % 20000))
    [ -z "$PORT" ] || [ "$try" -lt 4 ] || break
    local port=${PORT:-$p}
    mkdir -p "$T/ng/logs"
    cat >"$T/ng/nginx.conf" <<EOF
user root;
daemon off;
master_process off;
pid $T/ng/nginx.pid;
error_log $T/ng/logs/error.log;
events { worker_connections 128; }
http {
  log_format ls '\$host \$request_method \$uri \$status \$body_bytes_sent "\$http_range" "\$http_authorization"';
  access_log $T/ng/logs/access.log ls;
  client_body_temp_path $T/ng/body;
  proxy_temp_path $T/ng/proxy;
  fastcgi_temp_path $T/ng/fcgi;
  uwsgi_temp_path $T/ng/uwsgi;
  scgi_temp_path $T/ng/scgi;
  default_type application/octet-stream;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$port;
    root $W;
    location /norange/ { max_ranges 0; }
    location /nohead/ { if (\$request_method = HEAD) { return 405; } }
    location /slow/ { limit_rate 3m; }
    location /chg/ { limit_rate 3m; }
    location /chg2/ { limit_rate 3m; }
    # GETs of the index answered 206 with a Content-Range one byte off / a body of one byte
    location = /badrange/model.safetensors.index.json {
      if (\$request_method = GET) { add_header Content-Range "bytes 1-$isz/$isz"; return 206 "x"; }
    }
    location = /short/model.safetensors.index.json {
      if (\$request_method = GET) { add_header Content-Range "bytes 0-$((isz - 1))/$isz"; return 206 "x"; }
    }
    location ~ ^/org/tiny/resolve/main/(.*)\$ { return 302 http://localhost:$port/cdn/\$1; }
  }
}
EOF
    # one process in the foreground (no master, no daemon): its pid is the whole server
    nginx -p "$T/ng" -c "$T/ng/nginx.conf" 2>>"$T/ng/start.log" &
    NGINX_PID=$!
    for _ in $(seq 50); do
      kill -0 "$NGINX_PID" 2>/dev/null || break
      if curl -s -o /dev/null "http://127.0.0.1:$port/plain/config.json"; then PORT=$port; return 0; fi
      sleep 0.1
    done
    kill -9 "$NGINX_PID" 2>/dev/null; wait "$NGINX_PID" 2>/dev/null
    [ -z "$PORT" ] || sleep 1 # the same port again: let the old socket go
  done
  echo "FAIL setup: nginx did not start"; cat "$T/ng/start.log" "$T/ng/logs/error.log" 2>/dev/null; exit 1
}
NGINX_PID=
stop_nginx() { # kill -9 (a server dying, not a clean stop)
  [ -n "$NGINX_PID" ] || return 0
  kill -9 "$NGINX_PID" 2>/dev/null
  wait "$NGINX_PID" 2>/dev/null
  NGINX_PID=
}
trap 'stop_nginx' EXIT
start_nginx
U=http://127.0.0.1:$PORT
LOG=$T/ng/logs/access.log
served() { awk '{s += $5} END {print s + 0}' "$LOG"; } # body bytes since the log was cleared

args=(--data "$T/d.jsonl" --hooks residual_post,mlp_out,final_norm --pool mean --progress lines)
$ls run --model "$T/m" "${args[@]}" --out "$T/ref.h5" 2>"$T/ref.log" ||
  { echo "FAIL local reference run"; cat "$T/ref.log"; exit 1; }

# ---- a plain URL: bit-identical, few bytes, then the cache -----------------------------
: >"$LOG"
if $ls run --model "$U/plain" "${args[@]}" --out "$T/plain.h5" --http-cache "$T/cacheA" \
     --summary-json "$T/plain.json" 2>"$T/plain.log" && msg=$(same_as "$T/ref.h5" "$T/plain.h5"); then
  pass "plain URL: every dataset bit-identical to the local run"
else
  fail "plain URL" "${msg:-exit $?: $(grep error "$T/plain.log" | head -n 2)}"
fi
b=$(served)
if [ "$b" -gt 0 ] && [ "$b" -lt $((model_bytes / 4)) ]; then
  pass "plain URL: $b body bytes served for a $model_bytes-byte checkpoint"
else
  fail "plain URL bytes" "$b body bytes served, checkpoint $model_bytes bytes (want 0 < served < 1/4)"
fi
net=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["network_bytes"]))' "$T/plain.json" 2>/dev/null)
[ "$net" = "$b" ] && pass "profile network_bytes = bytes served ($net)" ||
  fail "profile network bytes" "summary says ${net:-nothing}, nginx served $b"
grep -q '^  network: ' "$T/plain.log" && pass "summary prints the network line" ||
  fail "summary network line" "no '  network:' line"
[ "$(attr_of "$T/plain.h5" model_source)" = http ] && [ "$(attr_of "$T/plain.h5" model_location)" = "$U/plain" ] &&
  pass "root attributes model_source=http, model_location=URL" ||
  fail "root attributes" "model_source=$(attr_of "$T/plain.h5" model_source) model_location=$(attr_of "$T/plain.h5" model_location)"

: >"$LOG"
$ls run --model "$U/plain" "${args[@]}" --out "$T/plain2.h5" --http-cache "$T/cacheA" 2>"$T/plain2.log"
rc=$?
b=$(served)
if [ $rc = 0 ] && [ "$b" = 0 ] && [ -s "$LOG" ] && msg=$(same_as "$T/ref.h5" "$T/plain2.h5"); then
  pass "second run from the range cache: 0 body bytes served ($(wc -l <"$LOG") HEAD checks), bit-identical"
else
  fail "cache hit" "exit $rc, $b body bytes served, ${msg:-}"
fi
# a server refusing HEAD (405): each file's size and ETag from a GET of its first byte
$ls run --model "$U/nohead" "${args[@]}" --out "$T/nohead.h5" --http-cache off 2>"$T/nohead.log"
rc=$?
[ $rc = 0 ] && msg=$(same_as "$T/ref.h5" "$T/nohead.h5") && pass "a server without HEAD (405): bit-identical" ||
  fail "no HEAD" "exit $rc ${msg:-} $(grep error "$T/nohead.log" | head -n 1)"
# without --http-cache the ranges go to $XDG_CACHE_HOME/layersweep/http
: >"$LOG"
$ls run --model "$U/plain" "${args[@]}" --out "$T/dflt.h5" >/dev/null 2>&1 &&
  [ -f "$XDG_CACHE_HOME/layersweep/http/$(ls "$XDG_CACHE_HOME/layersweep/http" | head -n 1)/meta" ] &&
  [ "$(served)" -gt 0 ] && pass "default cache directory \$XDG_CACHE_HOME/layersweep/http" ||
  fail "default cache dir" "nothing under $XDG_CACHE_HOME/layersweep/http"
# two ranks: rank 0 alone reads over HTTP and broadcasts; the same file
if command -v mpirun >/dev/null 2>&1; then
  : >"$LOG"
  mpirun --oversubscribe --allow-run-as-root -np 2 $ls run --model "$U/plain" "${args[@]}" \
    --out "$T/np2.h5" --http-cache off 2>"$T/np2.log"
  rc=$?
  b=$(served)
  [ $rc = 0 ] && [ "$b" -lt $((model_bytes / 4)) ] && msg=$(same_as "$T/ref.h5" "$T/np2.h5") &&
    pass "mpirun -np 2 over the URL: bit-identical, $b body bytes served" ||
    fail "mpirun -np 2" "exit $rc, $b bytes ${msg:-} $(grep error "$T/np2.log" | head -n 1)"
fi
# a bound smaller than the model keeps the cache under it
: >"$LOG"
$ls run --model "$U/plain" "${args[@]}" --out "$T/small.h5" --http-cache "$T/cacheS" --http-cache-max 3M \
  2>"$T/small.log" && kb=$(du -sk "$T/cacheS" | cut -f1) && [ "$kb" -le 3200 ] &&
  msg=$(same_as "$T/ref.h5" "$T/small.h5") && pass "--http-cache-max 3M: cache ${kb} KiB on disk" ||
  fail "--http-cache-max" "exit/size: ${kb:-?} KiB ${msg:-} $(grep error "$T/small.log" | head -n 1)"

# ---- the hub layout: redirect to another host, the token rule -------------------------
: >"$LOG"
TOKEN=hf_testtoken_$RANDOM$RANDOM
HF_ENDPOINT=$U HF_TOKEN=$TOKEN HF_HUB_CACHE=$T/emptyhub $ls run --model org/tiny "${args[@]}" \
  --out "$T/hub.h5" --http-cache off 2>"$T/hub.log"
rc=$?
if [ $rc = 0 ] && msg=$(same_as "$T/ref.h5" "$T/hub.h5"); then
  pass "hub id over HF_ENDPOINT (302 to the CDN host): bit-identical"
else
  fail "hub id" "exit $rc ${msg:-} $(grep error "$T/hub.log" | head -n 2)"
fi
n_ep=$(awk -v h=127.0.0.1 '$1 == h' "$LOG" | wc -l)
n_ep_tok=$(awk -v h=127.0.0.1 '$1 == h' "$LOG" | grep -c "Bearer $TOKEN")
n_cdn=$(awk '$1 == "localhost"' "$LOG" | wc -l)
n_cdn_tok=$(awk '$1 == "localhost"' "$LOG" | grep -c Bearer)
if [ "$n_ep" -gt 0 ] && [ "$n_ep_tok" = "$n_ep" ] && [ "$n_cdn" -gt 0 ] && [ "$n_cdn_tok" = 0 ]; then
  pass "token sent on all $n_ep requests to the endpoint, on none of the $n_cdn to the redirect host"
else
  fail "token rule" "endpoint $n_ep_tok/$n_ep with the token, redirect host $n_cdn_tok/$n_cdn"
fi
if grep -qa "$TOKEN" "$T/hub.h5" "$T/hub.log"; then fail "token written" "the token is in the output or the log"
else pass "the token is in neither the output file nor the log"; fi
[ "$(attr_of "$T/hub.h5" model_hub_id)" = org/tiny ] && [ "$(attr_of "$T/hub.h5" model_source)" = hub ] &&
  pass "root attributes model_hub_id=org/tiny, model_source=hub" || fail "hub attributes" "$(attr_of "$T/hub.h5" model_hub_id)"
# the token file the HF tools write, when HF_TOKEN is not set
mkdir -p "$T/hfhome" && printf '%s\n' "$TOKEN" >"$T/hfhome/token"
: >"$LOG"
HF_ENDPOINT=$U HF_HOME=$T/hfhome $ls run --model org/tiny "${args[@]}" --out "$T/hub2.h5" \
  --http-cache off >/dev/null 2>&1
[ "$(grep -c "Bearer $TOKEN" "$LOG")" -gt 0 ] && [ "$(awk '$1 == "localhost"' "$LOG" | grep -c Bearer)" = 0 ] &&
  pass "token from \$HF_HOME/token, endpoint host only" || fail "token file" "$(grep -c Bearer "$LOG") requests with a token"

# the local Hugging Face cache: refs/main -> snapshots/<commit> (symlinks into blobs)
R=$T/hfhub/models--org--tiny
rev=0123456789abcdef0123456789abcdef01234567
mkdir -p "$R/blobs" "$R/snapshots/$rev" "$R/refs"
printf '%s' "$rev" >"$R/refs/main"
for f in "$T/m"/*; do
  h=$(sha256sum "$f" | cut -d' ' -f1); cp "$f" "$R/blobs/$h"; ln -s "../../blobs/$h" "$R/snapshots/$rev/$(basename "$f")"
done
: >"$LOG"
HF_ENDPOINT=$U HF_HUB_CACHE=$T/hfhub $ls run --model org/tiny "${args[@]}" --out "$T/hubc.h5" 2>"$T/hubc.log"
rc=$?
if [ $rc = 0 ] && [ ! -s "$LOG" ] && msg=$(same_as "$T/ref.h5" "$T/hubc.h5") && grep -q "local Hugging Face cache" "$T/hubc.log"; then
  pass "hub id found in the local HF cache: no request to the server, bit-identical"
else
  fail "local HF cache" "exit $rc, $(wc -l <"$LOG") requests ${msg:-}"
fi
# a local directory of the same spelling wins over the hub id
mkdir -p "$T/cwd/org" && cp -r "$T/m" "$T/cwd/org/tiny"
: >"$LOG"
(cd "$T/cwd" && HF_ENDPOINT=$U $ls run --model org/tiny "${args[@]}" --out "$T/cwdrun.h5" >/dev/null 2>&1)
[ $? = 0 ] && [ ! -s "$LOG" ] && [ "$(attr_of "$T/cwdrun.h5" model_source)" = local ] &&
  pass "a local directory org/tiny takes precedence over the hub id" || fail "local precedence" "$(wc -l <"$LOG") requests"

# ---- refusals: one error line, naming the URL, never the token ---------------------------
one_error() { # name log want...
  local name=$1 log=$2; shift 2
  local n line w
  n=$(grep -cE "$ERR_RE" "$log")
  line=$(grep -E "$ERR_RE" "$log" | head -n 1)
  [ "$n" = 1 ] || { fail "$name" "$n error lines: $(head -c 600 "$log")"; return; }
  for w in "$@"; do printf '%s' "$line" | grep -qF -- "$w" || { fail "$name" "error line lacks \"$w\": $line"; return; }; done
  if printf '%s' "$line" | grep -qF "$TOKEN"; then fail "$name" "the error line holds the token"; return; fi
  pass "$name: $line"
}
HF_TOKEN=$TOKEN $ls run --model "$U/nothere" "${args[@]}" --out "$T/nf.h5" 2>"$T/nf.log"
one_error "404" "$T/nf.log" "$U/nothere/config.json" 404
HF_ENDPOINT=$U HF_TOKEN=$TOKEN HF_HUB_CACHE=$T/emptyhub $ls run --model org/missing@v2 "${args[@]}" \
  --out "$T/nf2.h5" 2>"$T/nf2.log"
one_error "404 of a hub id" "$T/nf2.log" "$U/org/missing/resolve/v2/config.json" 404
$ls run --model "$U/norange" "${args[@]}" --out "$T/nr.h5" 2>"$T/nr.log"
one_error "no range support" "$T/nr.log" "$U/norange/" "does not honour range requests"
$ls run --model "$U/badrange" "${args[@]}" --out "$T/br.h5" 2>"$T/br.log"
one_error "wrong Content-Range" "$T/br.log" "$U/badrange/model.safetensors.index.json" "wrong Content-Range"
LS_HTTP_RETRIES=1 $ls run --model "$U/short" "${args[@]}" --out "$T/sh.h5" 2>"$T/sh.log"
# the byte received is kept; the retry asks for the rest and gets byte 0 again: refused
grep -q "warning: $U/short/model.safetensors.index.json: short read: 1 of $isz bytes of the range; retry 1 of 1" "$T/sh.log" &&
  pass "short body: retried, said in one line" || fail "short body retry" "$(head -c 400 "$T/sh.log")"
one_error "short body" "$T/sh.log" "$U/short/model.safetensors.index.json" "wrong Content-Range"
LS_HTTP_RETRIES=2 $ls run --model "http://127.0.0.1:1/m" "${args[@]}" --out "$T/cr.h5" 2>"$T/cr.log"
one_error "connection refused (after retries)" "$T/cr.log" "http://127.0.0.1:1/m/config.json" "gave up after 2 retries"
[ "$(grep -c 'retry [12] of 2' "$T/cr.log")" = 2 ] && pass "each retry said in one line" ||
  fail "retry lines" "$(grep -c retry "$T/cr.log") retry lines"

# ---- the server dies in the middle of a sweep: partial file, --resume once it is back -------
wait_layer() { # log layer: until "layer L/" appears (or 60 s)
  for _ in $(seq 1200); do grep -q "^layer $2/" "$1" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
ck=(--checkpoint-every 1 --http-cache off)
LS_HTTP_RETRIES=1 $ls run --model "$U/slow" "${args[@]}" "${ck[@]}" --out "$T/fault.h5" 2>"$T/fault.log" &
job=$!
wait_layer "$T/fault.log" 2 && stop_nginx
wait $job
rc=$?
st=$(status_of "$T/fault.h5")
if [ $rc != 0 ] && [ "$st" = partial ] && grep -qE "$ERR_RE.*$U/slow/" "$T/fault.log"; then
  pass "nginx killed after layer 2: exit $rc, file partial, the error names the URL"
else
  fail "server dies" "exit $rc, status '$st': $(grep error "$T/fault.log" | head -n 2)"
fi
start_nginx
$ls run --model "$U/slow" "${args[@]}" "${ck[@]}" --out "$T/fault.h5" --resume 2>"$T/resume.log"
rc=$?
if [ $rc = 0 ] && grep -q "resuming" "$T/resume.log" && [ "$(status_of "$T/fault.h5")" = complete ] &&
   msg=$(same_as "$T/ref.h5" "$T/fault.h5"); then
  pass "nginx restarted: --resume completes, bit-identical"
else
  fail "resume after the server came back" "exit $rc ${msg:-} $(grep -E 'error|resum' "$T/resume.log" | head -n 2)"
fi

# ---- a file changed on the server between runs ---------------------------------------------
$ls run --model "$U/chg" "${args[@]}" --checkpoint-every 1 --http-cache "$T/cacheC" --out "$T/chg.h5" 2>"$T/chg.log" &
job=$!
wait_layer "$T/chg.log" 2 && kill -TERM $job
wait $job
rc=$?
[ $rc = 3 ] && [ "$(status_of "$T/chg.h5")" = partial ] && pass "SIGTERM mid-sweep: partial, checkpointed" ||
  fail "SIGTERM" "exit $rc $(grep error "$T/chg.log" | head -n 1)"
# the same header, other weights: only the ETag (and the bytes) say it changed
replace_model() { # dir: m2's files put in place atomically (new inodes, another mtime)
  local f
  for f in "$T/m2"/*; do
    cp "$f" "$1/.new" && touch -d '2020-01-01 00:00:00' "$1/.new" && mv -f "$1/.new" "$1/$(basename "$f")"
  done
}
replace_model "$W/chg"
$ls run --model "$U/chg" "${args[@]}" --checkpoint-every 1 --http-cache "$T/cacheC" --out "$T/chg.h5" --resume 2>"$T/chg2.log"
rc=$?
n=$(grep -cE "$ERR_RE" "$T/chg2.log")
if [ $rc != 0 ] && [ "$n" = 1 ] && grep -qE "$ERR_RE.*model files differ" "$T/chg2.log" && [ "$(status_of "$T/chg.h5")" = partial ]; then
  pass "--resume against the changed model refused: $(grep -E "$ERR_RE" "$T/chg2.log")"
else
  fail "resume refused" "exit $rc, $n error lines: $(grep -E 'error' "$T/chg2.log" | head -n 2)"
fi
grep -q "changed on the server" "$T/chg2.log" && pass "the changed file's cached ranges were dropped" ||
  fail "cache invalidation" "no 'changed on the server' line"
$ls run --model "$T/m2" "${args[@]}" --out "$T/ref2.h5" >/dev/null 2>&1
$ls run --model "$U/chg" "${args[@]}" --http-cache "$T/cacheC" --out "$T/chg3.h5" 2>"$T/chg3.log"
rc=$?
[ $rc = 0 ] && msg=$(same_as "$T/ref2.h5" "$T/chg3.h5") && pass "a fresh run with that cache reads the new model (bit-identical to it)" ||
  fail "fresh run after the change" "exit $rc ${msg:-}"
# changed in the middle of a run (layers 5.. not read yet when it changes)
$ls run --model "$U/chg2" "${args[@]}" --http-cache off --out "$T/mid.h5" 2>"$T/mid.log" &
job=$!
wait_layer "$T/mid.log" 2 && replace_model "$W/chg2"
wait $job
rc=$?
[ $rc != 0 ] && grep -qE "$ERR_RE.*changed on the server during the run" "$T/mid.log" &&
  pass "a file changed during the run: refused" || fail "mid-run change" "exit $rc $(grep error "$T/mid.log" | head -n 1)"

echo "summary: $passes passed, $fails failed"
if [ "$fails" -gt 0 ]; then echo "logs kept in $T"; exit 1; fi
stop_nginx
rm -rf "$T"
exit 0
