#!/usr/bin/env bash
# Create .venv beside the project and install harrison-knn into it with its test
# tools. Safe to run again: an existing .venv is reused and brought up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
# torch and torchvision are pinned as a pair: other pairs fail to import together.
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
    "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,lite2]"
.venv/bin/python -c "import harrison_knn, faiss, open_clip, torch; \
print('harrison-knn', harrison_knn.__version__, '| torch', torch.__version__, \
'| faiss', faiss.__version__, '| cuda' if torch.cuda.is_available() else '| cpu')"
