#!/usr/bin/env bash
# Points vw2_policy at a calvin_env checkout (the `calvin` backend): makes a virtualenv
# with this project's Python requirements, calvin_env's requirements and hydra-colorlog,
# then checks `import calvin_env` and one reset and one step of the real env.
#
#   scripts/setup_calvin.sh /path/to/calvin_env [--venv DIR] [--renderer auto|egl|tiny] [--steps N]
#
# The checkout is a clone of https://github.com/mees/calvin_env at its HEAD (its `tacto`
# submodule may stay empty: the backend uses no tactile camera). The venv defaults to
# .venv-calvin in this repository (ignored by git); it is kept apart from .venv so that
# calvin_env's requirements never change what the tests run with. Idempotent: reruns only
# check. At the end it prints the `vw2 eval calvin` command line that uses it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
root="${CALVIN_ENV_ROOT:-}"
venv="$repo/.venv-calvin"
renderer=auto
steps=30
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --renderer) renderer="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "setup_calvin: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) root="$1"; shift ;;
  esac
done
if [ -z "$root" ]; then
  echo "setup_calvin: give the calvin_env checkout (or set CALVIN_ENV_ROOT)" >&2
  usage >&2
  exit 2
fi
root="$(cd "$root" && pwd)"
for f in calvin_env/envs/play_table_env.py conf/config_data_collection.yaml requirements.txt data; do
  if [ ! -e "$root/$f" ]; then
    echo "setup_calvin: $root is not a calvin_env checkout (no $f)" >&2
    exit 1
  fi
done
case "$venv" in /*) ;; *) venv="$(pwd)/$venv" ;; esac

# hydra-colorlog: calvin_env's configs override hydra/job_logging with colorlog; without
# the plugin hydra fails with MissingConfigException ... hydra/job_logging/colorlog.
extra=(hydra-colorlog)
stamp="$venv/.vw2-calvin.sha256"
want=$(cat "$repo/python/requirements.txt" "$root/requirements.txt" <(printf '%s\n' "${extra[@]}") | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  echo "setup_calvin: creating $venv"
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup_calvin: installing this project's and calvin_env's requirements into $venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r "$repo/python/requirements.txt" -r "$root/requirements.txt" "${extra[@]}"
  echo "$want" > "$stamp"
fi

echo "setup_calvin: checking import calvin_env"
PYTHONPATH="$root" "$venv/bin/python" -c 'import calvin_env.envs.play_table_env, calvin_env.envs.tasks' || {
  echo "setup_calvin: import calvin_env failed with $venv/bin/python (see above)" >&2
  exit 1
}
echo "setup_calvin: one reset and $steps steps of the real env (renderer $renderer)"
PYTHONPATH="$repo/python" "$venv/bin/python" -m vw2_adapter.calvin_backend \
  --calvin-env "$root" --renderer "$renderer" --steps "$steps"

cat <<EOF
setup_calvin: ok. Evaluate with the calvin backend:
  VW2_PYTHON=$venv/bin/python CALVIN_ENV_ROOT=$root \\
    cargo run --release -- eval calvin --policy POLICY --backend calvin --chains 1000 --workers 2 --out DIR
EOF
