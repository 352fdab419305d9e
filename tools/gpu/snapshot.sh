#!/usr/bin/env bash
# The committed tree (HEAD) as a plain folder for the device tool, so that a GPU run builds what
# was committed and not whatever others have half-edited in the shared working tree. The folder
# is ignored by git (.git/info/exclude) and travels through the tool's `carry`.
# Usage: tools/gpu/snapshot.sh [DIR]   (default .issue7-snap); then on the device:
#   cd .issue7-snap && tools/gpu/run_issue7.sh ...
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-.issue7-snap}
grep -qxF "/$dir/" .git/info/exclude || echo "/$dir/" >> .git/info/exclude
rm -rf "$dir"
mkdir -p "$dir"
git archive HEAD | tar -x -C "$dir"
git rev-parse --short HEAD > "$dir/COMMIT"
echo "$dir: $(cat "$dir/COMMIT"), $(du -sh "$dir" | cut -f1)"
