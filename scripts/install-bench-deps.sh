#!/usr/bin/env bash
# Installs pylate, the peer of benchmarks/bench_colbert.py, into its own folder (default benchmarks/.deps/pylate),
# leaving the main environment's pins untouched. Usage, from the repository root:
#
#   bash scripts/install-bench-deps.sh [TARGET]
#   PYTHONPATH=benchmarks/.deps/pylate .venv/bin/python -m pytest benchmarks/bench_colbert.py -p no:cacheprovider -s
#
# Why a folder and not a `bench` extra: pylate 1.6.0 requires sentence-transformers==5.3.0 (the main environment has
# 6.x, whose Dense config pylate cannot read) and fast-plaid, which pins another torch (a multi-GB CUDA build). pip
# cannot resolve that next to the main pins, so pylate and the few packages it needs at run time for encode and
# rerank go in with --no-deps; everything else (torch, transformers, tokenizers, datasets, ...) comes from the main
# environment. PLAID indexing (fast-plaid) is not installed and not benchmarked.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TARGET=${1:-benchmarks/.deps/pylate}
"$PY" -m pip --disable-pip-version-check install -q --no-deps --upgrade --target "$TARGET" \
    pylate==1.6.0 sentence-transformers==5.3.0 ujson==5.12.0 fastkmeans==0.5.0 voyager==2.1.0
PYTHONPATH="$TARGET" "$PY" -c "import pylate, sentence_transformers as st; print('pylate', pylate.__version__, '| sentence-transformers', st.__version__, 'in $TARGET')"
touch "$TARGET/.installed"
