#!/usr/bin/env bash
# The project's test command: set up, then format check, lints and every test
# (Rust and the Python simulator side).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
python -m pytest python/tests -q -p no:cacheprovider
