#!/usr/bin/env bash
# The project's test command: set up, then format check, lints and every test
# (Rust with the ROS adapter type-checked against r2r's doc-only bindings, the
# colcon package layout, and the Python simulator side), then the ROS 2 node built with
# colcon against a real ROS 2 Jazzy from PyPI and tested with rclpy (scripts/test-ros.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1
cargo fmt --all -- --check
cargo clippy --all-targets --locked --features ros2-check -- -D warnings
cargo test --locked --features ros2-check
./scripts/check_ros_package.sh
python -m pytest python/tests -q -p no:cacheprovider
./scripts/test-ros.sh
