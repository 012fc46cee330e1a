// gemm_packed alone, for a row-block A/B of two versions of the kernel (see run.sh): compiled
// once per version with -DSRC naming that version's lstm_cpu.cc (its headers beside it);
// run_gemm(M, iters) times `iters` passes of three forward-sized chunks (K = 512, 4 panels
// each) over M rows, on the calling thread, and returns GFLOP/s. gemm_packed takes a count of
// columns (from 8501d75 on: run.sh refuses an older baseline).
#include SRC
#include <chrono>

static std::vector<float> A, Bp, C;

extern "C" double run_gemm(int M, int iters) {
  constexpr int K = 512, npanels = 4, nchunks = 3;
  const int64_t ldc = npanels * nchunks * NR;
  if (A.empty()) {
    A.resize(64 * K);
    Bp.resize(panel_size<float>(K) * npanels * nchunks);
    C.resize(64 * ldc);
    for (size_t i = 0; i < A.size(); ++i) A[i] = 0.01f * (i % 7);
    for (size_t i = 0; i < Bp.size(); ++i) Bp[i] = 0.02f * (i % 5);
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int it = 0; it < iters; ++it)
    for (int c = 0; c < nchunks; ++c) {
      const Product<float> pr{A.data(), K, K, Bp.data() + c * npanels * panel_size<float>(K)};
      gemm_packed<float>(M, npanels * NR, &pr, 1, C.data() + c * npanels * NR, ldc);
    }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * M * K * npanels * nchunks * NR * iters / s / 1e9;
}

extern "C" double checksum() {
  double s = 0;
  for (float x : C) s += x;
  return s;
}
