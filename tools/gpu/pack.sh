#!/usr/bin/env bash
# Binaries for a GPU run built HERE (the GPU machine has no PCRE2, cpp-httplib or yaml-cpp, and
# building there costs device time): configures build-gpu for a portable x86-64 target with the
# CUDA backend (sm_90a), builds the CLI, the GPU tests and the CUDA decode bench, and gathers
# them with the Debian libraries the GPU image lacks and the real tokenizer into .gpu/ (ignored
# by git; pass it to the device tool's `carry`). On the device:
#   export LD_LIBRARY_PATH=$PWD/.gpu/lib; BIN=.gpu/bin tools/gpu/run_issue8.sh
#   BUILD=.gpu tools/gpu/run_issue7.sh test v3      (run_issue7 reads $BUILD/bin)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qxF "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_NATIVE=OFF -DDSV3_CUDA=ON \
  -DDSV3_WERROR=ON > /dev/null
cmake --build build-gpu --target dsv3_cli dsv3_gpu_tests bench_cuda_decode bench_cuda_fp8_gemm bench_cuda_mla -j"$(nproc)"
rm -rf .gpu
mkdir -p .gpu/bin .gpu/lib .gpu/tokenizer
cp build-gpu/bin/{dsv3,dsv3_gpu_tests,bench_cuda_decode,bench_cuda_fp8_gemm,bench_cuda_mla} .gpu/bin/
# Only libraries with no newer build on the GPU image that ours could shadow badly (not
# libstdc++, OpenBLAS or gfortran, which are there).
for l in $(ldd build-gpu/bin/dsv3 | awk '/=>/ {print $3}'); do
  case "$(basename "$l")" in
    libfmt.so.* | libpcre2-8.so.* | libcpp-httplib.so.* | libyaml-cpp.so.* | libbrotli*.so.*)
      cp -L "$l" .gpu/lib/ ;;
  esac
done
cp .cache/tokenizer/deepseek_v3/* .gpu/tokenizer/
git rev-parse --short HEAD > .gpu/COMMIT
git diff --quiet HEAD -- src apps tests bench || echo "dirty" >> .gpu/COMMIT
echo ".gpu: $(tr '\n' ' ' < .gpu/COMMIT)$(du -sh .gpu | cut -f1)"
