#!/usr/bin/env bash
# The five shipped models (32 MiB each, tracked) would take the GPU trip far over its 64 MiB. The
# device tool sends tracked and not-ignored files: "light" takes the models out of git's index and
# ignores them locally (.git/info/exclude; the files stay on disk, nothing is committed), "restore"
# puts them back. Between the two, git status shows them as deleted: commit nothing then.
# Usage: benchmarks/gpu_trip/travel.sh light|restore
set -eu
cd "$(git rev-parse --show-toplevel)"
MODELS=src/medsr/models
RULE="/$MODELS/*.safetensors"
EXCLUDE=$(git rev-parse --git-path info/exclude)
case "${1:-}" in
light)
    mkdir -p "$(dirname "$EXCLUDE")"
    grep -qxF "$RULE" "$EXCLUDE" 2>/dev/null || echo "$RULE" >>"$EXCLUDE"
    git rm -r -q --cached --ignore-unmatch -- "$MODELS"/*.safetensors
    if [ -d .gpu-trip ]; then  # which code travels (.git does not): trip.sh prints it into its log
        { echo "medsr $(git rev-parse HEAD), $(git status --porcelain --untracked-files=no -- . ":!$MODELS" \
            | wc -l) changed file(s) not committed"; } >.gpu-trip/commit.txt
    fi
    echo "the shipped models stay here and out of the trip; run '$0 restore' after it (commit nothing before)" ;;
restore)
    [ -f "$EXCLUDE" ] && sed -i "\\|^$(printf '%s' "$RULE" | sed 's/[*.]/\\&/g')\$|d" "$EXCLUDE"
    git reset -q -- "$MODELS"
    git diff --quiet HEAD -- "$MODELS" && echo "the shipped models are tracked again, unchanged" ;;
*)
    echo "usage: $0 light|restore" >&2
    exit 2 ;;
esac
