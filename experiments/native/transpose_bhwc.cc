// A probe for issue 7, not part of the library: an XLA FFI custom call (CPU) that transposes a float32
// (B, H, W, C) activation into (C, H, W, B), the layout XLA:CPU's weight-gradient convolution reads its
// input in. XLA does this transpose element by element (about 7 ms for 64x28x28x64 on the 2-core AVX-512
// CPU, against about 1-2 ms for a copy); here each pixel's B x C block moves in 16x16 tiles transposed in
// AVX-512 registers, the pixels split over two threads. B and C must be multiples of 16.
//
// Built and measured by experiments/native/bench_transpose.py (which says how).
#include <immintrin.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Transposes the 16x16 block whose rows are r[0..15], in place: r[j] becomes column j.
inline void Transpose16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {      // interleave row pairs: 2x2 blocks of floats
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {      // then 4x4 blocks, as pairs of doubles
    for (int j = 0; j < 2; ++j) {
      __m512d a = _mm512_castps_pd(t[4 * i + j]), b = _mm512_castps_pd(t[4 * i + j + 2]);
      r[4 * i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[4 * i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  }
  for (int i = 0; i < 2; ++i) {      // then the 128-bit lanes: 8x8, then 16x16
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
      t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
}

// Pixels [p0, p1) of in (B, HW, C) into out (C, HW, B).
void TransposePixels(const float* in, float* out, int64_t b_size, int64_t hw, int64_t c_size, int64_t p0,
                     int64_t p1) {
  __m512 r[16];
  for (int64_t p = p0; p < p1; ++p) {
    for (int64_t b0 = 0; b0 < b_size; b0 += 16) {
      for (int64_t c0 = 0; c0 < c_size; c0 += 16) {
        for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(in + ((b0 + i) * hw + p) * c_size + c0);
        Transpose16x16(r);
        for (int j = 0; j < 16; ++j) _mm512_storeu_ps(out + ((c0 + j) * hw + p) * b_size + b0, r[j]);
      }
    }
  }
}

ffi::Error TransposeBHWC(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  auto dims = x.dimensions();
  if (dims.size() != 4) return ffi::Error::InvalidArgument("zoo_transpose_bhwc: x must have rank 4");
  int64_t b_size = dims[0], hw = dims[1] * dims[2], c_size = dims[3];
  if (b_size % 16 || c_size % 16) {
    return ffi::Error::InvalidArgument("zoo_transpose_bhwc: B and C must be multiples of 16");
  }
  const int threads = 2;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back(TransposePixels, x.typed_data(), y->typed_data(), b_size, hw, c_size, hw * t / threads,
                      hw * (t + 1) / threads);
  }
  for (auto& t : pool) t.join();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooTransposeBHWC, TransposeBHWC,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
