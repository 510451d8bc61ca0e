#!/usr/bin/env bash
# dllm's CPU ops on aarch64 (Grace / GH200 hosts, Graviton), from this x86-64 machine: cross-builds
# the extension against PyPI's aarch64 torch wheel and runs tests under qemu-user.
#
#   bash scripts/aarch64_check.sh [PYTEST ARGS...]      (as root, on Debian 12; from the checkout)
#   DLLM_AARCH64_CUDA=1 bash scripts/aarch64_check.sh   (the CUDA build a GH200 makes, see below)
#
# Default tests: the CPU cases of the ops' test files but torch.compile's (inductor would compile its
# C++ with the host's x86 compiler) and the statistical ones (their hundreds of thousands of draws
# take qemu minutes each); other arguments pick other tests (e.g. `tests/test_sedd_step.py -k
# "cpu and frequencies"`).
#
# What it sets up, under $ARM (default /tmp/dllm-aarch64), once:
# - Debian's aarch64 cross compiler and qemu-user, and Debian's arm64 Python 3.11 unpacked into a
#   sysroot (dpkg learns the arm64 architecture; `dpkg --remove-architecture arm64` undoes it);
# - torch ($TORCH_SPEC, default torch==2.14.1, CI's) for aarch64 without its dependencies, and the
#   Python packages the tests import. PyPI's aarch64 torch is a CUDA build whose CUDA libraries
#   (several GB, not all of them on every index) nothing here needs: placeholder libraries take their
#   sonames and symbols, each function returning a non-zero status (so torch finds no GPU) that
#   doubles as an error string;
# - a /proc/cpuinfo of an Arm Neoverse core, bound over the host's in a private mount namespace:
#   PyTorch's cpuinfo reads it at import, and qemu's shows the x86 host (a segfault in
#   cpuinfo_arm_linux_init).
# The extension is built as CMake builds it (the same flags; -ffp-contract=off where CMake sets it),
# without the x86 AVX2 copy of the kernels, which CMake leaves out on aarch64 too.
#
# DLLM_AARCH64_CUDA=1 builds it with the CUDA kernels, as on a Grace Hopper host: nvcc (torch's CUDA
# major; PATH or CUDA_HOME) compiles the kernels for sm_90 (the wgmma ones for sm_90a) with the aarch64
# GCC as host compiler, the bindings take the CUDA sources too, and the module links torch's CUDA
# libraries and PyPI's aarch64 libcudart, which the tests then load (torch finds no GPU: the CPU ops
# run, registered beside the CUDA ones). The headers are the same files for every host: nvcc's own, and
# those of cuBLAS, cuSPARSE and cuSOLVER, which torch's CUDA headers include, from the nvidia wheels of
# an x86 CUDA torch of the same CUDA (DLLM_NV_INCLUDE; default: this checkout's .venv, `make venv`),
# since not every index has their aarch64 wheels.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
ARM=${ARM:-/tmp/dllm-aarch64}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
SITE=$ARM/site SYSROOT=$ARM/sysroot PLACEHOLDERS=$ARM/placeholders
CUDA_BUILD=${DLLM_AARCH64_CUDA:-0}
mkdir -p "$ARM"

if ! command -v aarch64-linux-gnu-g++ > /dev/null || ! command -v qemu-aarch64-static > /dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++-aarch64-linux-gnu qemu-user-static
fi
if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
  dpkg --add-architecture arm64 && apt-get update -q
  mkdir -p "$ARM/debs" && (cd "$ARM/debs" && apt-get download \
    python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 libpython3.11-dev:arm64 \
    libpython3.11:arm64 libexpat1:arm64 zlib1g:arm64 libffi8:arm64 libssl3:arm64 libbz2-1.0:arm64 liblzma5:arm64 \
    libsqlite3-0:arm64 libuuid1:arm64 libncursesw6:arm64 libtinfo6:arm64 libreadline8:arm64 libgcc-s1:arm64 \
    libstdc++6:arm64 libc6:arm64 libgomp1:arm64)
  for deb in "$ARM"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
fi
PLATFORM=(--platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64
          --python-version 3.11 --only-binary=:all:)
if [ ! -d "$SITE/torch" ]; then
  python3 -m pip download -q --no-deps "${PLATFORM[@]}" -d "$ARM/wheels" "$TORCH_SPEC"
  mkdir -p "$SITE" && python3 -m zipfile -e "$ARM"/wheels/torch-*.whl "$SITE"
fi
if [ ! -d "$SITE/pybind11" ]; then
  python3 -m pip install -q --target "$SITE" "${PLATFORM[@]}" numpy tqdm safetensors tokenizers matplotlib filelock \
    typing-extensions sympy networkx jinja2 fsspec pytest pytest-timeout pytest-xdist "pybind11>=2.12" --no-warn-conflicts
fi

T=$SITE/torch
TORCH_CUDA=$(sed -n "s/^cuda: .* = '\(.*\)'/\1/p" "$T/version.py") CUDA_MAJOR=
if (( CUDA_BUILD )); then
  CUDA_MAJOR=${TORCH_CUDA%%.*}
  NVCC=$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")
  [ -x "$NVCC" ] || { echo "DLLM_AARCH64_CUDA=1: no nvcc on PATH or in CUDA_HOME" >&2; exit 1; }
  NVCC_MAJOR=$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
  [ "$NVCC_MAJOR" = "$CUDA_MAJOR" ] || { echo "nvcc is CUDA $NVCC_MAJOR, torch's is $TORCH_CUDA" >&2; exit 1; }
  CUDA_INCLUDE=$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')/include  # its toolkit's
  NV_INCLUDE=${DLLM_NV_INCLUDE:-$(ls -d "$SRC"/.venv/lib/python3*/site-packages/nvidia/cu"$CUDA_MAJOR"/include 2>/dev/null | head -1)}
  [ -f "$NV_INCLUDE/cublas_v2.h" ] || { echo "DLLM_AARCH64_CUDA=1 needs the cuBLAS headers of an x86 CUDA torch's" \
    "nvidia wheels: make venv, or DLLM_NV_INCLUDE=.../nvidia/cu$CUDA_MAJOR/include" >&2; exit 1; }
  CUDART=$ARM/cudart/nvidia/cu$CUDA_MAJOR/lib
  if [ ! -f "$CUDART/libcudart.so.$CUDA_MAJOR" ]; then  # the version torch's own requirement names
    toolkit=$(sed -n 's/^Requires-Dist: cuda-toolkit\[.*\]==\([0-9.]*\).*/\1/p' "$SITE"/torch-*.dist-info/METADATA)
    [ -n "$toolkit" ] || { echo "DLLM_AARCH64_CUDA=1: $TORCH_SPEC names no cuda-toolkit version to take libcudart from" >&2; exit 1; }
    python3 -m pip download -q "${PLATFORM[@]}" -d "$ARM/cuda-wheels" "cuda-toolkit[cudart]==$toolkit"
    python3 -m zipfile -e "$ARM"/cuda-wheels/nvidia_cuda_runtime-*.whl "$ARM/cudart"
  fi
fi

# Placeholders for the CUDA libraries torch's libraries name: every version node and symbol they ask for.
mkdir -p "$PLACEHOLDERS"
python3 - "$SITE/torch" "$PLACEHOLDERS" <<'EOF'
import collections, glob, os, re, subprocess, sys
torch_dir, out = sys.argv[1:]
libs = glob.glob(f"{torch_dir}/lib/*.so*") + glob.glob(f"{torch_dir}/*.so")
present = {os.path.basename(p) for p in libs}
readelf = lambda *a: subprocess.run(["aarch64-linux-gnu-readelf", *a], capture_output=True, text=True).stdout
needed = {n for lib in libs for n in re.findall(r"\(NEEDED\).*\[(.+)\]", readelf("-d", lib))}
missing = sorted(n for n in needed if n not in present and re.match(r"lib(cu|nccl|nvrtc|nvshmem)", n))
versions, symbols, defined, unversioned = collections.defaultdict(set), collections.defaultdict(set), set(), set()
for lib in libs:
    current = None
    for line in readelf("-V", lib).splitlines():
        if m := re.search(r"File: (\S+)", line):
            current = m.group(1)
        elif (m := re.search(r"Name: (\S+)", line)) and current in missing:
            versions[current].add(m.group(1))
    for line in readelf("--dyn-syms", "-W", lib).splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        if f[6] != "UND":
            defined.add(f[7].split("@")[0])
        elif "@" in f[7]:
            name, version = f[7].split("@", 1)
            symbols[version.lstrip("@")].add(name)
        else:
            unversioned.add(f[7])
# an unversioned symbol goes to the library its prefix names (longest prefix first)
prefixes = sorted(((re.sub(r"^lib|\.so.*$", "", n), n) for n in missing), key=lambda p: -len(p[0]))
owner = {}
for name in unversioned - defined:
    for prefix, lib in prefixes:
        if name.lower().startswith(prefix.lower()) or (prefix == "cudart" and name.startswith(("cuda", "__cuda"))):
            owner.setdefault(lib, set()).add(name)
            break
for lib in missing:
    nodes = sorted(versions[lib]) or [lib]
    script, source = [], ['static const char text[] = "placeholder: no CUDA library here";']
    for i, node in enumerate(nodes):
        names = sorted(symbols[node] | (owner.get(lib, set()) if i == 0 else set())) + [f"placeholder_{i}"]
        script.append(f"{node} {{ global: {'; '.join(names)}; {'local: *; ' if i == len(nodes) - 1 else ''}}};")
        source += [f"const char* {n}(void) {{ return text; }}" for n in names]
    with open(f"{out}/{lib}.map", "w") as f:
        f.write("\n".join(script) + "\n")
    with open(f"{out}/{lib}.c", "w") as f:
        f.write("\n".join(dict.fromkeys(source)) + "\n")
    subprocess.run(["aarch64-linux-gnu-gcc", "-shared", "-fPIC", "-fno-builtin", "-w", "-o", f"{out}/{lib}",
                    f"{out}/{lib}.c", f"-Wl,-soname,{lib}", f"-Wl,--version-script={out}/{lib}.map"], check=True)
print(f"{len(missing)} placeholder libraries: {' '.join(missing)}")
EOF

cat > "$ARM/cpuinfo" <<'EOF'
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c
CPU revision	: 1

EOF

# The extension, compiled with CMakeLists.txt's flags (its CPU-only configuration, or the CUDA one).
OBJ=$ARM/obj PKG=$ARM/pkg
rm -rf "$OBJ" "$PKG" && mkdir -p "$OBJ" "$PKG"
CXX=aarch64-linux-gnu-g++ pids=()
finish() { for p in "${pids[@]}"; do wait "$p"; done; pids=(); }  # each compile's status, so set -e sees a failure
for f in "$SRC"/csrc/kernels/*.cpp; do
  b=$(basename "$f") exact=()
  case $b in sedd_cpu.cpp|rotary_cpu.cpp|adaln_cpu.cpp) exact=(-ffp-contract=off);; esac
  $CXX -I"$SRC/csrc/include" -O3 -DNDEBUG -std=gnu++20 -fPIC -fno-math-errno -fno-trapping-math "${exact[@]}" \
    -c "$f" -o "$OBJ/kernel_$b.o" & pids+=($!)
done
finish
BINDING_FLAGS=(-DDLLM_WITH_CUDA=0 -DDLLM_WITH_WGMMA=0) CUDA_LIBS=() ARCHS=
if (( CUDA_BUILD )); then
  BINDING_FLAGS=(-DDLLM_WITH_CUDA=1 -DDLLM_WITH_WGMMA=1 -I"$NV_INCLUDE" -isystem "$CUDA_INCLUDE")
  CUDA_LIBS=(-ltorch_cuda -lc10_cuda "$CUDART/libcudart.so.$CUDA_MAJOR") ARCHS=90
  for f in "$SRC"/csrc/kernels/*.cu; do  # one nvcc a core
    arch=90; [[ $f == *_wgmma.cu ]] && arch=90a
    "$NVCC" -ccbin "$CXX" -O3 -DNDEBUG -std=c++20 -Xcompiler=-fPIC -lineinfo --expt-relaxed-constexpr \
      "--generate-code=arch=compute_$arch,code=[compute_$arch,sm_$arch]" -I"$SRC/csrc/include" -isystem "$CUDA_INCLUDE" \
      -c "$f" -o "$OBJ/cuda_$(basename "$f").o" & pids+=($!)
    (( ${#pids[@]} < $(nproc) )) || finish
  done
  finish
fi
for f in "$SRC"/csrc/torch/*.cpp; do
  b=$(basename "$f"); [[ $b == *_cuda.cpp ]] && (( ! CUDA_BUILD )) && continue
  $CXX "${BINDING_FLAGS[@]}" -D_GLIBCXX_USE_CXX11_ABI=1 -I"$SRC/csrc/include" \
    -isystem "$SYSROOT/usr/include/python3.11" -isystem "$SYSROOT/usr/include" -isystem "$T/include" \
    -isystem "$T/include/torch/csrc/api/include" -isystem "$SITE/pybind11/include" -O2 -DNDEBUG -std=gnu++20 -fPIC -fopenmp \
    -c "$f" -o "$OBJ/binding_$b.o"
done
cp -r "$SRC/python/dllm" "$PKG/dllm" && rm "$PKG/dllm/_build_config.py.in"
# libtorch's own CUDA dependencies are placeholders made for run time, not on the link path (a CUDA
# build links the aarch64 libcudart, which its tests load instead of the placeholder)
$CXX -shared -fopenmp -o "$PKG/dllm/_C.cpython-311-aarch64-linux-gnu.so" "$OBJ"/*.o -L"$T/lib" -ltorch -ltorch_cpu -lc10 \
  "${CUDA_LIBS[@]}" -Wl,-rpath,"$T/lib" -Wl,--allow-shlib-undefined
TORCH_VERSION=$(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$T/version.py")
printf 'VERSION = "%s"\nTORCH_VERSION = "%s"\nTORCH_CUDA_VERSION = "%s"\nCUDA_ARCHS = "%s"\n' \
  "$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml")" "$TORCH_VERSION" "${CUDA_MAJOR:+$TORCH_CUDA}" "$ARCHS" \
  > "$PKG/dllm/_build_config.py"
echo "COMMIT = \"$(git -C "$SRC" rev-parse --short HEAD)$(git -C "$SRC" diff --quiet HEAD || echo -dirty)\"" \
  > "$PKG/dllm/_build_commit.py"

# The tests, by aarch64 Python under qemu (the wrapper lets pytest-xdist start its workers the same way:
# without binfmt_misc, an aarch64 program's exec of another fails), in a mount namespace with the Arm
# /proc/cpuinfo.
cat > "$ARM/python" <<EOF
#!/bin/bash
export PYTHONPATH=$PKG:$SITE QEMU_LD_PREFIX=$SYSROOT
export LD_LIBRARY_PATH=${CUDART:+$CUDART:}$PLACEHOLDERS:$SYSROOT/usr/lib/aarch64-linux-gnu:$SYSROOT/lib/aarch64-linux-gnu
exec qemu-aarch64-static $SYSROOT/usr/bin/python3.11 "\$@"
EOF
chmod +x "$ARM/python"
(( $# )) || set -- --dist load --tx "$(nproc)*popen//python=$ARM/python" tests/test_sample_categorical.py \
  tests/test_unmask.py tests/test_sedd_step.py tests/test_sedd_losses.py tests/test_sample_transition.py \
  tests/test_attention.py tests/test_rotary.py tests/test_adaln.py \
  -k "not cuda and not emulated and not compile and not rare_tail and not frequencies and not distribution"
cd "$SRC/tests"
exec unshare --mount bash -c 'mount --bind "$0" /proc/cpuinfo && "$1" -c "import platform, dllm; print(platform.machine(), dllm.build_info())" &&
  exec "$1" -m pytest -q -p no:cacheprovider --timeout 7200 "${@:2}"' "$ARM/cpuinfo" "$ARM/python" "${@/#tests\//}"
