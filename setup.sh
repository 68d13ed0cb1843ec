#!/usr/bin/env bash
# Set up rag-retriever on a fresh machine: a virtual environment in .venv, torch==2.13.0 (CPU) first,
# then the project and its test tools under constraints.txt so torch stays pinned.
# fitz-gov (the demo corpus and its labeled queries) installs with --no-deps: it is data, MIT licensed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
.venv/bin/python -m pip install --quiet --no-deps fitz-gov==4.1.0
echo "setup: ok ($(.venv/bin/python -c 'import torch, faiss, duckdb, sentence_transformers as s; print("torch", torch.__version__, "faiss", faiss.__version__, "duckdb", duckdb.__version__, "sentence-transformers", s.__version__)'))"
