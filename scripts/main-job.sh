#!/usr/bin/env bash
# The main job on real photos: index a seeded 80% of a HARRISON-layout folder
# with the offline encoder, suggest hashtags for the other 20% and score them,
# then time one suggestion from the command line.
#   usage: scripts/main-job.sh [DATA_DIR] [INDEX_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

data=${1:-../shared/data/flickr8k-1k}
index=${2:-indexes/flickr8k-1k}
knn=.venv/bin/harrison-knn
if [ ! -x "$knn" ]; then
    echo "harrison-knn is not installed in .venv: run scripts/setup.sh first" >&2
    exit 1
fi

echo "== build: embed $data and index 80% of it"
"$knn" build "$data" --index "$index" --holdout 0.2 --seed 0

echo
echo "== evaluate: suggestions for the held-out 20% beside their true hashtags"
"$knn" evaluate --index "$index" --examples 8

echo
echo "== suggest: one held-out photo from the command line"
photo=$(.venv/bin/python -c "import json, sys; \
print(json.load(open(sys.argv[1] + '/metadata.json'))['settings']['held_out'][0])" "$index")
"$knn" suggest --index "$index" "$data/$photo" --neighbours 3
