// What the kernel compiles with: the standard and system headers, the XLA FFI API
// (`ffi`), and the feature macros: FLAX_LSTM_BF16, the bfloat16 kernel (CPUs with
// AVX512_BF16; 2 its software emulation for the tests), and FLAX_LSTM_AMX, its AMX tile path
// (1 the hardware's, 2 a software emulation for the tests).
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif
// The bfloat16 kernel: 1 on CPUs with AVX512_BF16 (vdpbf16ps), 2 in a test build with
// -DFLAX_LSTM_BF16_EMULATE=1 on an AVX2 CPU without it, vdpbf16ps done in software
// (micro_kernel.h) on vectors of 16 floats, as AVX-512's: the same panels, packing, tiles and
// calls, so that the tests run the bfloat16 kernel on any AVX2 machine.
#if defined(__AVX512BF16__)
#define FLAX_LSTM_BF16 1
#elif defined(FLAX_LSTM_BF16_EMULATE) && FLAX_LSTM_BF16_EMULATE && defined(__AVX2__)
#define FLAX_LSTM_BF16 2
// Its 64-byte vectors are passed between the kernel's own functions only.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// AMX tiles for the bfloat16 step GEMMs (amx.h): compiled with the bfloat16 kernel on
// x86-64 Linux where the compiler has the AMX intrinsics (through target attributes: the
// library needs no AMX -march), and used where the run-time check finds AMX-BF16. A test build
// with -DFLAX_LSTM_AMX_EMULATE=1 runs the same code with the tile instructions done in
// software, on any CPU that has the bfloat16 kernel (the emulated one too).
#if FLAX_LSTM_BF16 && defined(__x86_64__)
#if defined(FLAX_LSTM_AMX_EMULATE) && FLAX_LSTM_AMX_EMULATE
#define FLAX_LSTM_AMX 2
#elif defined(__linux__) && defined(__has_include)
#if __has_include(<amxbf16intrin.h>) || __has_include(<amxintrin.h>)
#define FLAX_LSTM_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
