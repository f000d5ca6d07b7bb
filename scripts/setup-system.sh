#!/usr/bin/env bash
# Installs the system libraries convirt builds against (BLIS with OpenMP, pkg-config) and
# Open MPI (mpirun, and the headers mpi4py builds against) for data-parallel training and
# its tests (tests/test_distributed.py).
# As root it runs apt-get; otherwise it prints the command to run.
set -euo pipefail
packages="libblis-openmp-dev pkg-config openmpi-bin libopenmpi-dev"
have_all=1
for p in $packages; do
    dpkg -s "$p" >/dev/null 2>&1 || have_all=0
done
if [ "$have_all" = 1 ]; then
    echo "system packages present: $packages"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "convirt needs BLIS built with OpenMP. Without apt-get, install it another way:" >&2
    echo "  conda install -c conda-forge blis && export BLIS_PREFIX=\$CONDA_PREFIX" >&2
    echo "  brew install blis && export BLIS_PREFIX=\$(brew --prefix blis)" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages
else
    echo "Run this as root, then run make again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y $packages" >&2
    exit 1
fi
