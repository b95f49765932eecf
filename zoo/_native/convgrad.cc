// Convolution weight gradients on CPU as outer products accumulated in registers (issue 7), for
// zoo.convgrad: an XLA FFI custom call.
//
//   out[t, p, r] = sum over (b, i, j) of  P[b, sh*i + di_t, sw*j + dj_t, p] * R[b, i, j, r]
//
// P is the side gathered at the taps (a convolution's input, padded so that every tap is in range), R the
// side read as whole rows (dy for a convolution; for a transposed convolution x, and P is dy padded), (sh, sw)
// the strides, (di_t, dj_t) tap t's offset. No copies of P per tap (im2col) are made: for each pixel, a block of
// rows (t, p) is broadcast from P and multiplied into R's row, the block's sums held in vector registers
// over a tile of pixels. R's channels are processed 64 at a time (4 vectors of 16 floats), so C_R must be a
// multiple of 16. Threads split the pixels; each sums into its own copy of out, added at the end.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <sched.h>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

typedef float v16 __attribute__((vector_size(64), aligned(4)));

namespace {

struct Geometry {
  int64_t b, hp, wp, cp;     // P
  int64_t ho, wo, cr;        // R (and the pixels summed over)
  int64_t sh, sw;            // strides
  int64_t taps;
};

// One tile of pixels (whole rows of R, rows [r0, r1) of the b * ho output rows) for a block of RB rows of
// out starting at `row`, columns [col, col + 16 * Q).
template <int Q, int RB>
inline void block(const Geometry& g, const float* P, const float* R, const int64_t* rowoff, int64_t r0,
                  int64_t r1, float* out, int64_t row, int64_t col) {
  v16 acc[RB][Q];
  for (int k = 0; k < RB; ++k)
    for (int q = 0; q < Q; ++q) memcpy(&acc[k][q], out + (row + k) * g.cr + col + 16 * q, 64);
  int64_t off[RB];
  for (int k = 0; k < RB; ++k) off[k] = rowoff[row + k];
  for (int64_t orow = r0; orow < r1; ++orow) {
    const int64_t b = orow / g.ho, i = orow % g.ho;
    const float* rp = R + (orow * g.wo) * g.cr + col;
    const float* pp = P + ((b * g.hp + g.sh * i) * g.wp) * g.cp;
    const int64_t pstep = g.sw * g.cp;
    for (int64_t j = 0; j < g.wo; ++j, rp += g.cr, pp += pstep) {
      v16 v[Q];
      for (int q = 0; q < Q; ++q) memcpy(&v[q], rp + 16 * q, 64);
      for (int k = 0; k < RB; ++k) {
        const float a = pp[off[k]];
        for (int q = 0; q < Q; ++q) acc[k][q] += a * v[q];
      }
    }
  }
  for (int k = 0; k < RB; ++k)
    for (int q = 0; q < Q; ++q) memcpy(out + (row + k) * g.cr + col + 16 * q, &acc[k][q], 64);
}

template <int Q>
void tile(const Geometry& g, const float* P, const float* R, const int64_t* rowoff, int64_t r0, int64_t r1,
          float* out, int64_t col) {
  constexpr int RB = 24 / Q;    // RB * Q accumulators: 24 of the 32 vector registers
  const int64_t rows = g.taps * g.cp;
  int64_t row = 0;
  for (; row + RB <= rows; row += RB) block<Q, RB>(g, P, R, rowoff, r0, r1, out, row, col);
  for (; row < rows; ++row) block<Q, 1>(g, P, R, rowoff, r0, r1, out, row, col);
}

void accumulate(const Geometry& g, const float* P, const float* R, const int64_t* rowoff, int64_t r0,
                int64_t r1, float* out) {
  // tiles of about 128 pixels (whole rows), so that R's and P's parts stay in the core's caches (tiles of
  // 256 to 2,048 pixels, by R's width, measured 0.95-1.05x of these on five layers' shapes)
  const int64_t step = std::max<int64_t>(1, 128 / std::max<int64_t>(g.wo, 1));
  for (int64_t t0 = r0; t0 < r1; t0 += step) {
    const int64_t t1 = std::min(r1, t0 + step);
    int64_t col = 0;
    for (; col + 64 <= g.cr; col += 64) tile<4>(g, P, R, rowoff, t0, t1, out, col);
    for (; col + 16 <= g.cr; col += 16) tile<1>(g, P, R, rowoff, t0, t1, out, col);
  }
}

int threads_wanted() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

ffi::Error WeightGrad(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> r, ffi::Result<ffi::Buffer<ffi::F32>> out,
                      ffi::Span<const int64_t> strides, ffi::Span<const int64_t> offsets, int64_t threads) {
  auto pd = p.dimensions(), rd = r.dimensions(), od = out->dimensions();
  if (pd.size() != 4 || rd.size() != 4 || od.size() != 3 || offsets.size() % 2 || strides.size() != 2)
    return ffi::Error::InvalidArgument("zoo_conv_weight_grad: P and R must be 4-D, out 3-D, offsets pairs");
  Geometry g{pd[0], pd[1], pd[2], pd[3], rd[1], rd[2], rd[3], strides[0], strides[1], (int64_t)offsets.size() / 2};
  if (rd[0] != g.b || g.cr % 16 || od[0] != g.taps || od[1] != g.cp || od[2] != g.cr || g.sh < 1 || g.sw < 1)
    return ffi::Error::InvalidArgument("zoo_conv_weight_grad: shapes do not match");
  std::vector<int64_t> rowoff(g.taps * g.cp);
  for (int64_t t = 0; t < g.taps; ++t) {
    const int64_t di = offsets[2 * t], dj = offsets[2 * t + 1];
    if (di < 0 || dj < 0 || g.sh * (g.ho - 1) + di >= g.hp || g.sw * (g.wo - 1) + dj >= g.wp)
      return ffi::Error::InvalidArgument("zoo_conv_weight_grad: a tap reads outside P");
    for (int64_t c = 0; c < g.cp; ++c) rowoff[t * g.cp + c] = (di * g.wp + dj) * g.cp + c;
  }
  const float* P = p.typed_data();
  const float* R = r.typed_data();
  float* O = out->typed_data();
  const int64_t n = g.taps * g.cp * g.cr, orows = g.b * g.ho;
  int nt = threads > 0 ? (int)threads : threads_wanted();
  nt = (int)std::max<int64_t>(1, std::min<int64_t>(nt, orows));
  std::memset(O, 0, n * sizeof(float));
  if (nt == 1) {
    accumulate(g, P, R, rowoff.data(), 0, orows, O);
    return ffi::Error::Success();
  }
  std::vector<std::vector<float>> parts(nt - 1, std::vector<float>(n, 0.0f));
  std::vector<std::thread> pool;
  for (int w = 1; w < nt; ++w)
    pool.emplace_back([&, w] { accumulate(g, P, R, rowoff.data(), orows * w / nt, orows * (w + 1) / nt, parts[w - 1].data()); });
  accumulate(g, P, R, rowoff.data(), 0, orows / nt, O);
  for (auto& th : pool) th.join();
  for (auto& part : parts)
    for (int64_t k = 0; k < n; ++k) O[k] += part[k];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooConvWeightGrad, WeightGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Attr<int64_t>("threads"));
