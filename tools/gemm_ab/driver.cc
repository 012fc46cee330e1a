// Loads two builds of gemm_rows.cc and times them interleaved, call by call, for a range of
// row counts; prints the best GFLOP/s of each over 40 rounds (one core) and the ratio.
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>

using Run = double (*)(int, int);
using Sum = double (*)();

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s BASELINE.so CURRENT.so\n", argv[0]);
    return 2;
  }
  Run run[2];
  Sum sum[2];
  for (int v = 0; v < 2; ++v) {
    void* lib = dlopen(argv[1 + v], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return std::fprintf(stderr, "%s\n", dlerror()), 1;
    run[v] = reinterpret_cast<Run>(dlsym(lib, "run_gemm"));
    sum[v] = reinterpret_cast<Sum>(dlsym(lib, "checksum"));
  }
  std::printf("| rows | baseline GFLOP/s | current GFLOP/s | current/baseline |\n|---|---|---|---|\n");
  for (int M : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 18, 25, 32, 33, 64}) {
    double best[2] = {0, 0};
    for (int round = 0; round < 40; ++round)
      for (int v = 0; v < 2; ++v) best[v] = std::max(best[v], run[v](M, 30));
    std::printf("| %d | %.1f | %.1f | %.2f× |\n", M, best[0], best[1], best[1] / best[0]);
  }
  std::printf("checksums (equal when the products are bit for bit the same): %.9g %.9g\n", sum[0](),
              sum[1]());
}
