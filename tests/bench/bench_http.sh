#!/usr/bin/env bash
# tests/bench/bench_http.sh [BUILD_DIR]: the HTTP read rate of layersweep against
# `curl -o /dev/null` of the same files, from the same local nginx, in the same run.
#
# A random Llama-shaped model (hidden 1024, intermediate 2816, 8 layers, bf16, 2 shards)
# is served by an nginx started here (127.0.0.1, its own prefix in a scratch directory).
# layersweep sweeps it with a tiny dataset (compute is a small share) and no range cache;
# its rate = the body bytes it received / the seconds at least one of its transfers was
# running (the profile's network_bytes / network_s, from --summary-json). curl's rate =
# the bytes of every file / curl's time_total, one file after another over one connection.
# Printed as `name value (note)` lines; nothing passes or fails.
set -u
BUILD=${1:-build}
ls=$BUILD/layersweep
[ -x "$ls" ] || { echo "no $ls: build first"; exit 1; }
command -v nginx >/dev/null || { echo "nginx not installed (launch/install-deps)"; exit 1; }
T=$(mktemp -d "${TMPDIR:-/tmp}/bench_http.XXXXXX")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$T/www"
"$ls" make-model --out "$T/www/m" --hidden 1024 --intermediate 2816 --layers 8 --heads 16 \
  --kv-heads 8 --vocab 32000 --dtype bf16 --shards 2 >/dev/null 2>&1 || { echo "make-model failed"; exit 1; }
"$ls" make-data --out "$T/d.jsonl" --n 4 --min-len 8 --max-len 16 --vocab 32000 >/dev/null 2>&1
PORT=$((20000 + RANDOM % 20000))
mkdir -p "$T/ng/logs"
cat >"$T/ng/nginx.conf" <<EOF
user root;
daemon off;
master_process off;
pid $T/ng/nginx.pid;
error_log $T/ng/logs/error.log;
events { worker_connections 128; }
http {
  access_log off;
  client_body_temp_path $T/ng/body;
  proxy_temp_path $T/ng/proxy;
  fastcgi_temp_path $T/ng/fcgi;
  uwsgi_temp_path $T/ng/uwsgi;
  scgi_temp_path $T/ng/scgi;
  default_type application/octet-stream;
  sendfile on;
  server { listen 127.0.0.1:$PORT; root $T/www; }
}
EOF
nginx -p "$T/ng" -c "$T/ng/nginx.conf" &
NG=$!
trap 'kill -9 $NG 2>/dev/null; wait $NG 2>/dev/null; rm -rf "$T"' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/m/config.json" && break; sleep 0.1; done
U=http://127.0.0.1:$PORT/m
cat "$T/www/m"/*.safetensors >/dev/null # the files in the page cache for both readers

echo "# bench_http $(date -u +%Y-%m-%d) $(uname -m), $(nproc) CPUs; model $(du -sh "$T/www/m" | cut -f1)"
for f in "$T/www/m"/*.safetensors; do
  b=$(basename "$f")
  r=$(curl -s -o /dev/null -w '%{size_download} %{time_total}' "$U/$b")
  echo "curl_file $b $r"
done | awk '{bytes += $3; s += $4} END {printf "curl_mib_per_s        %.1f   (%d bytes in %.3f s, curl -o /dev/null, one connection)\n", bytes / 1048576 / s, bytes, s}'

for conn in 1 4; do
  for rep in 1 2; do
    rm -f "$T/o.h5" "$T/s.json"
    LS_HTTP_CONNECTIONS=$conn "$ls" run --model "$U" --data "$T/d.jsonl" --out "$T/o.h5" --http-cache off \
      --summary-json "$T/s.json" --progress off >/dev/null 2>"$T/run.log" || { cat "$T/run.log"; exit 1; }
    python3 - "$T/s.json" "$conn" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
b, s = j["network_bytes"], j["network_s"]
print("layersweep_mib_per_s  %.1f   (%d connection%s: %d body bytes, %d requests, %.3f s with a transfer running; whole run %.2f s)"
      % (b / 1048576 / s, int(sys.argv[2]), "" if sys.argv[2] == "1" else "s", b, j["http_requests"], s, j["total_s"]))
PY
  done
done
