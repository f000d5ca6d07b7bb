#!/usr/bin/env bash
# CI: build and smoke-test convirt on the lowest Python that pyproject.toml declares
# (requires-python), so that a declaration the code no longer meets fails here.
#
#   scripts/ci-lowest-python.sh [PYTHON | X.Y]
#
# PYTHON defaults to pythonX.Y for the declared minimum X.Y, from PATH or from pyenv
# ($PYENV_ROOT/versions/X.Y.*); an argument X.Y tests that version instead (the newest
# supported one, say: PyErr_Format's rules changed in 3.12). CI_PY_TESTS replaces the
# list of tests. In a temporary directory it makes a venv with numpy,
# setuptools, wheel, pytest and the runtime dependencies of pyproject.toml, copies the
# tree (tracked and untracked files; no build products), builds the extensions there in
# place with warnings as errors (CONVIRT_WERROR=1, as CI builds), imports convirt and
# runs the short tests below. The tree itself is not touched. Exits 77 when no such
# Python is found.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
read -r -a tests <<<"${CI_PY_TESTS:-tests/test_core.py tests/test_errors.py tests/test_binding.py}"

minimum="$(sed -n 's/^requires-python *= *">= *\([0-9]*\.[0-9]*\)".*/\1/p' "$root/pyproject.toml")"
if [ -z "$minimum" ]; then
    echo "ci-lowest-python: no requires-python = \">=X.Y\" in pyproject.toml" >&2
    exit 1
fi
if [[ "${1:-}" =~ ^[0-9]+\.[0-9]+$ ]]; then
    minimum="$1"
    set -- ""
fi
# The first that runs (pyenv's shim on PATH may not, outside a pyenv-local directory).
python=""
for candidate in "${1:-}" "$(command -v "python$minimum" || true)" \
    $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$minimum".*/bin/"python$minimum" \
          2>/dev/null | sort -rV); do
    if [ -n "$candidate" ] && "$candidate" -c pass 2>/dev/null; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    echo "ci-lowest-python: no Python $minimum found (give its path as the argument)" >&2
    exit 77
fi
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$version" != "$minimum" ]; then
    echo "ci-lowest-python: $python is Python $version, not $minimum" >&2
    exit 1
fi
echo "ci-lowest-python: Python $minimum ($python)"

work="$(mktemp -d "${TMPDIR:-/tmp}/convirt-py$minimum.XXXXXX")"
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q numpy setuptools wheel pytest tomli
deps="$("$py" - "$root/pyproject.toml" <<'PY'
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
)"
mapfile -t deps <<<"$deps"
"$py" -m pip install -q "${deps[@]}"

mkdir "$work/src"
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$root" ls-files -z --cached --others --exclude-standard |
        tar -C "$root" --null -T - --ignore-failed-read -cf - 2>/dev/null |
        tar -C "$work/src" -xf -
else
    tar -C "$root" --exclude=./build --exclude='*.so' --exclude=__pycache__ -cf - . |
        tar -C "$work/src" -xf -
fi

cd "$work/src"
CONVIRT_WERROR=1 "$py" setup.py -q build_ext --inplace
export PYTHONPATH="$work/src"
"$py" -c 'import sys, convirt; print("convirt", convirt.__version__, "on Python", sys.version.split()[0]); convirt.show_config()'
"$py" -m pytest -q -p no:cacheprovider "${tests[@]}"
echo "ci-lowest-python: Python $minimum passed in ${SECONDS}s"
