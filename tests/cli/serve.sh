#!/usr/bin/env bash
# dsv3 serve end to end: a tiny random model whose vocabulary matches the real DeepSeek-V3
# tokenizer, served on 127.0.0.1 (a free port), exercised by tests/serve/*.test.mjs through the
# official openai npm client; then SIGTERM must drain and exit 0.
set -euo pipefail
dsv3="$1"
src="$DSV3_SOURCE_DIR"
tok="$src/.cache/tokenizer/deepseek_v3"
cfg="$src/tests/fixtures/configs/tiny_real_vocab.json"
r1="$src/tests/fixtures/chat/deepseek-r1-chat-template.json"
tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$tmp"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done; exit 1; }

[ -f "$tok/tokenizer.json" ] || fail "run scripts/setup.sh first (it fetches the tokenizer)"
[ -d "$src/tests/serve/node_modules/openai" ] ||
  fail "tests/serve/node_modules is missing: run scripts/setup.sh (it runs npm ci there)"
command -v node >/dev/null || fail "node is missing: run scripts/setup.sh"
"$dsv3" serve --help >/dev/null || fail "serve --help"
# The tiny model with a 2048-token context, so one request can run long enough to be cancelled.
node -e 'const fs = require("fs"); const c = JSON.parse(fs.readFileSync(process.argv[1]));
  c.max_position_embeddings = 2048; fs.writeFileSync(process.argv[2], JSON.stringify(c));' \
  "$cfg" "$tmp/config.json"
"$dsv3" init --config "$tmp/config.json" --out "$tmp/m" --dtype bf16 --seed 3 >/dev/null

max_body=65536
key="test-key-$$"
# Starts a server in the background; $1 names it, the rest are extra flags. Waits for /health.
start() {
  local name="$1"; shift
  "$dsv3" serve --model "$tmp/m" --tokenizer "$tok" --host 127.0.0.1 --port 0 \
    --port-file "$tmp/$name.port" --max-body-bytes "$max_body" --max-seqs 4 \
    --shutdown-grace 10 "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  eval "${name}_pid=$!"
  for _ in $(seq 1 300); do
    if [ -s "$tmp/$name.port" ] &&
       curl -fsS --max-time 2 "http://127.0.0.1:$(cat "$tmp/$name.port")/health" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "$!" 2>/dev/null || fail "$name server exited at start"
    sleep 0.1
  done
  fail "$name server not healthy within 30 s"
}
start main --api-key "$key" --served-model-name tiny
start r1 --template "$r1" --served-model-name tiny

export DSV3_URL="http://127.0.0.1:$(cat "$tmp/main.port")"
export DSV3_R1_URL="http://127.0.0.1:$(cat "$tmp/r1.port")"
export DSV3_API_KEY="$key" DSV3_MODEL_NAME=tiny DSV3_BIN="$dsv3" DSV3_MODEL_DIR="$tmp/m"
export DSV3_TOKENIZER="$tok" DSV3_MAX_BODY="$max_body"
(cd "$src/tests/serve" &&
 timeout 800 node --test --test-timeout=700000 --test-concurrency=1 ./*.test.mjs) ||
  fail "node tests failed"

# The chat page in headless Chromium: the reply must stream into the page (and, with the R1
# template, into its reasoning element); screenshots are kept under the build directory.
artifacts="$(cd "$(dirname "$dsv3")/.." && pwd)/test-artifacts"
mkdir -p "$artifacts"
page() {
  local rc=0
  (cd "$src/tests/serve" && timeout 120 node --experimental-websocket --no-warnings \
     browser_page.mjs "$@") || rc=$?
  [ "$rc" = 2 ] && { echo "serve: SKIPPED the browser test: chromium is not installed (scripts/setup.sh installs it)"; return 0; }
  [ "$rc" = 0 ] || fail "browser test failed ($*)"
}
page --url "$DSV3_URL" --api-key "$key" --screenshot "$artifacts/serve-page.png"
page --url "$DSV3_R1_URL" --expect-reasoning --screenshot "$artifacts/serve-page-r1.png"

# SIGTERM while a stream is in flight: the stream completes, the server exits 0.
curl -sN --max-time 30 -H "Authorization: Bearer $key" "$DSV3_URL/v1/completions" \
  -d '{"prompt": "Hello", "max_tokens": 40, "temperature": 0, "stream": true}' \
  >"$tmp/drain.out" 2>/dev/null &
curl_pid=$!
sleep 0.2
for name in main r1; do
  pid_var="${name}_pid"
  kill -TERM "${!pid_var}"
done
wait "$curl_pid" || true
for name in main r1; do
  pid_var="${name}_pid"
  rc=0
  timeout 30 tail --pid="${!pid_var}" -f /dev/null || fail "$name server did not exit after SIGTERM"
  wait "${!pid_var}" || rc=$?
  [ "$rc" = 0 ] || fail "$name server exited $rc after SIGTERM"
done
grep -q "stopped" "$tmp/main.log" || fail "no shutdown message"
grep -q "data: \[DONE\]" "$tmp/drain.out" || { cat "$tmp/drain.out" >&2; fail "the in-flight stream was not finished"; }
echo "serve: all checks passed"
