#!/usr/bin/env bash
# Installs the Debian packages the build needs, only those that are missing.
set -euo pipefail
packages=(cmake g++ libboost1.81-dev libboost-json1.81-dev doctest-dev libdlpack-dev libcli11-dev libxxhash-dev libre2-dev pkg-config)
# clang-14 with its runtimes (libFuzzer, ASan, UBSan): the fuzz stage of .ci/run.
packages+=(clang-14 libclang-rt-14-dev)
# python3 with venv: scripts/python_test makes <build>/pyvenv for the Python package's tests
# (numpy and setuptools go into that venv from the package index, never into the system).
packages+=(python3 python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
