#!/usr/bin/env bash
# One command, fresh machine: install everything the tests need, then run them.
# Integration tests start their own mosquitto on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test yes
.venv/bin/ruff check .
.venv/bin/python -m mypy  # [tool.mypy] in pyproject.toml: the four packages
exec .venv/bin/python -m pytest -q "$@"
