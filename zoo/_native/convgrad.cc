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
#include <system_error>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64)));

// The sum of a vector's 16 lanes: four halvings (shuffle and add), not a chain of 15 scalar adds.
inline float lane_sum(v16 a) {
#if defined(__clang__)
  a += __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  a += __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  a += __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  a += __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
#else
  a += __builtin_shuffle(a, i16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  a += __builtin_shuffle(a, i16{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
  a += __builtin_shuffle(a, i16{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  a += __builtin_shuffle(a, i16{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
#endif
  return a[0];
}

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

// Each tap's offset in P relative to a pixel's, per (tap, channel) row; false where a tap reads outside P.
bool offsets_in_range(const Geometry& g, ffi::Span<const int64_t> offsets, std::vector<int64_t>* rowoff) {
  rowoff->assign(g.taps * g.cp, 0);
  for (int64_t t = 0; t < g.taps; ++t) {
    const int64_t di = offsets[2 * t], dj = offsets[2 * t + 1];
    if (di < 0 || dj < 0 || g.sh * (g.ho - 1) + di >= g.hp || g.sw * (g.wo - 1) + dj >= g.wp) return false;
    for (int64_t c = 0; c < g.cp; ++c) (*rowoff)[t * g.cp + c] = (di * g.wp + dj) * g.cp + c;
  }
  return true;
}

int thread_count(int64_t threads, int64_t rows) {
  const int64_t want = threads > 0 ? threads : threads_wanted();
  return (int)std::max<int64_t>(1, std::min<int64_t>(want, rows));
}

// run(k, r0, r1) for the nt parts [rows * k / nt, rows * (k + 1) / nt) of the rows: part 0 on this thread,
// the others on threads of their own (on this thread too where a thread cannot be started: an exception
// escaping an FFI handler would end the process)
template <class F>
void in_parts(int nt, int64_t rows, F run) {
  std::vector<std::thread> pool;
  int k = 1;
  try {
    for (; k < nt; ++k) pool.emplace_back([&, k] { run(k, rows * k / nt, rows * (k + 1) / nt); });
  } catch (const std::system_error&) {
  }
  for (int rest = k; rest < nt; ++rest) run(rest, rows * rest / nt, rows * (rest + 1) / nt);
  run(0, 0, rows / nt);
  for (auto& th : pool) th.join();
}

ffi::Error WeightGrad(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> r, ffi::Result<ffi::Buffer<ffi::F32>> out,
                      ffi::Span<const int64_t> strides, ffi::Span<const int64_t> offsets, int64_t threads) {
  auto pd = p.dimensions(), rd = r.dimensions(), od = out->dimensions();
  if (pd.size() != 4 || rd.size() != 4 || od.size() != 3 || offsets.size() % 2 || strides.size() != 2)
    return ffi::Error::InvalidArgument("zoo_conv_weight_grad: P and R must be 4-D, out 3-D, offsets pairs");
  Geometry g{pd[0], pd[1], pd[2], pd[3], rd[1], rd[2], rd[3], strides[0], strides[1], (int64_t)offsets.size() / 2};
  if (rd[0] != g.b || g.cr % 16 || od[0] != g.taps || od[1] != g.cp || od[2] != g.cr || g.sh < 1 || g.sw < 1)
    return ffi::Error::InvalidArgument("zoo_conv_weight_grad: shapes do not match");
  std::vector<int64_t> rowoff;
  if (!offsets_in_range(g, offsets, &rowoff))
    return ffi::Error::InvalidArgument("zoo_conv_weight_grad: a tap reads outside P");
  const float* P = p.typed_data();
  const float* R = r.typed_data();
  float* O = out->typed_data();
  const int64_t n = g.taps * g.cp * g.cr, orows = g.b * g.ho;
  const int nt = thread_count(threads, orows);
  std::memset(O, 0, n * sizeof(float));
  if (nt == 1) {
    accumulate(g, P, R, rowoff.data(), 0, orows, O);
    return ffi::Error::Success();
  }
  std::vector<std::vector<float>> parts(nt - 1, std::vector<float>(n, 0.0f));
  in_parts(nt, orows, [&](int k, int64_t r0, int64_t r1) {
    accumulate(g, P, R, rowoff.data(), r0, r1, k ? parts[k - 1].data() : O);
  });
  for (auto& part : parts)
    for (int64_t k = 0; k < n; ++k) O[k] += part[k];
  return ffi::Error::Success();
}

// ---- the convolution itself where its input is thin:
//   y[b, i, j, r] = sum over (t, p) of  P[b, sh*i + di_t, sw*j + dj_t, p] * W[t, p, r]
// (an implicit matrix product: no copies per tap). A block of NPX neighbouring output pixels and 64 of y's
// channels is held in registers; for each (t, p), W's row is loaded once and P's NPX entries broadcast.

template <int Q, int NPX>
inline void out_block(const Geometry& g, const float* P, const float* W, const int64_t* rowoff, int64_t orow,
                      int64_t j0, float* Y, int64_t col) {
  v16 acc[NPX][Q];
  for (int k = 0; k < NPX; ++k)
    for (int q = 0; q < Q; ++q) acc[k][q] = v16{};
  const int64_t b = orow / g.ho, i = orow % g.ho;
  const float* pp = P + ((b * g.hp + g.sh * i) * g.wp + g.sw * j0) * g.cp;
  const int64_t pstep = g.sw * g.cp, rows = g.taps * g.cp;
  for (int64_t row = 0; row < rows; ++row) {
    v16 w[Q];
    for (int q = 0; q < Q; ++q) memcpy(&w[q], W + row * g.cr + col + 16 * q, 64);
    const float* pr = pp + rowoff[row];
    for (int k = 0; k < NPX; ++k) {
      const float a = pr[k * pstep];
      for (int q = 0; q < Q; ++q) acc[k][q] += a * w[q];
    }
  }
  float* y = Y + (orow * g.wo + j0) * g.cr + col;
  for (int k = 0; k < NPX; ++k)
    for (int q = 0; q < Q; ++q) memcpy(y + k * g.cr + 16 * q, &acc[k][q], 64);
}

template <int Q>
void out_row(const Geometry& g, const float* P, const float* W, const int64_t* rowoff, int64_t orow, float* Y,
             int64_t col) {
  constexpr int NPX = 24 / Q;
  int64_t j = 0;
  for (; j + NPX <= g.wo; j += NPX) out_block<Q, NPX>(g, P, W, rowoff, orow, j, Y, col);
  for (; j < g.wo; ++j) out_block<Q, 1>(g, P, W, rowoff, orow, j, Y, col);
}

void convolve(const Geometry& g, const float* P, const float* W, const int64_t* rowoff, int64_t r0, int64_t r1,
              float* Y) {
  for (int64_t orow = r0; orow < r1; ++orow) {
    int64_t col = 0;
    for (; col + 64 <= g.cr; col += 64) out_row<4>(g, P, W, rowoff, orow, Y, col);
    for (; col + 16 <= g.cr; col += 16) out_row<1>(g, P, W, rowoff, orow, Y, col);
  }
}

ffi::Error Conv(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> w, ffi::Result<ffi::Buffer<ffi::F32>> y,
                ffi::Span<const int64_t> strides, ffi::Span<const int64_t> offsets, int64_t threads) {
  auto pd = p.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (pd.size() != 4 || wd.size() != 3 || yd.size() != 4 || offsets.size() % 2 || strides.size() != 2)
    return ffi::Error::InvalidArgument("zoo_conv_taps: P and y must be 4-D, W 3-D, offsets pairs");
  Geometry g{pd[0], pd[1], pd[2], pd[3], yd[1], yd[2], yd[3], strides[0], strides[1], (int64_t)offsets.size() / 2};
  if (yd[0] != g.b || g.cr % 16 || wd[0] != g.taps || wd[1] != g.cp || wd[2] != g.cr || g.sh < 1 || g.sw < 1)
    return ffi::Error::InvalidArgument("zoo_conv_taps: shapes do not match");
  std::vector<int64_t> rowoff;
  if (!offsets_in_range(g, offsets, &rowoff))
    return ffi::Error::InvalidArgument("zoo_conv_taps: a tap reads outside P");
  const int64_t orows = g.b * g.ho;
  const int nt = thread_count(threads, orows);
  in_parts(nt, orows, [&](int, int64_t r0, int64_t r1) {
    convolve(g, p.typed_data(), w.typed_data(), rowoff.data(), r0, r1, y->typed_data());
  });
  return ffi::Error::Success();
}

// ---- the convolution where its output is thin (1 to 4 channels) and its input is not:
//   y[b, i, j, c] = sum over (t, p) of  P[b, sh*i + di_t, sw*j + dj_t, p] * V[t, c, p]
// with C_P a multiple of 16: for each of NPX neighbouring output pixels and each of the C outputs, one vector
// of partial sums over p, 16 channels at a time (NPX * C independent sums: no chain waits on the one
// before), summed across its 16 lanes at the end. The DCGAN's last transposed convolution (64 -> 3, by
// phases) and its first convolution's input gradient, a PixelCNN's 7x7 mask A input gradient (64 -> 1).

template <int C, int NPX>
inline void thin_block(const Geometry& g, const float* P, const float* V, const int64_t* tapoff, int64_t orow,
                       int64_t j0, float* Y) {
  v16 acc[NPX][C];
  for (int k = 0; k < NPX; ++k)
    for (int c = 0; c < C; ++c) acc[k][c] = v16{};
  const int64_t b = orow / g.ho, i = orow % g.ho;
  const float* pp = P + ((b * g.hp + g.sh * i) * g.wp + g.sw * j0) * g.cp;
  const int64_t pstep = g.sw * g.cp;
  for (int64_t t = 0; t < g.taps; ++t) {
    const float* pt = pp + tapoff[t];
    const float* vt = V + t * C * g.cp;
    for (int64_t q = 0; q < g.cp; q += 16) {
      v16 v[C];
      for (int c = 0; c < C; ++c) memcpy(&v[c], vt + c * g.cp + q, 64);
      for (int k = 0; k < NPX; ++k) {
        v16 a;
        memcpy(&a, pt + k * pstep + q, 64);
        for (int c = 0; c < C; ++c) acc[k][c] += a * v[c];
      }
    }
  }
  float* y = Y + (orow * g.wo + j0) * C;
  for (int k = 0; k < NPX; ++k)
    for (int c = 0; c < C; ++c) y[k * C + c] = lane_sum(acc[k][c]);
}

template <int C>
void thin_rows(const Geometry& g, const float* P, const float* V, const int64_t* tapoff, int64_t r0, int64_t r1,
               float* Y) {
  constexpr int NPX = 24 / C;
  for (int64_t orow = r0; orow < r1; ++orow) {
    int64_t j = 0;
    for (; j + NPX <= g.wo; j += NPX) thin_block<C, NPX>(g, P, V, tapoff, orow, j, Y);
    for (; j < g.wo; ++j) thin_block<C, 1>(g, P, V, tapoff, orow, j, Y);
  }
}

ffi::Error ThinConv(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> v, ffi::Result<ffi::Buffer<ffi::F32>> y,
                    ffi::Span<const int64_t> strides, ffi::Span<const int64_t> offsets, int64_t threads) {
  auto pd = p.dimensions(), vd = v.dimensions(), yd = y->dimensions();
  if (pd.size() != 4 || vd.size() != 3 || yd.size() != 4 || offsets.size() % 2 || strides.size() != 2)
    return ffi::Error::InvalidArgument("zoo_thin_conv: P and y must be 4-D, V 3-D, offsets pairs");
  Geometry g{pd[0], pd[1], pd[2], pd[3], yd[1], yd[2], yd[3], strides[0], strides[1], (int64_t)offsets.size() / 2};
  if (yd[0] != g.b || g.cp % 16 || g.cr < 1 || g.cr > 4 || vd[0] != g.taps || vd[1] != g.cr || vd[2] != g.cp ||
      g.sh < 1 || g.sw < 1)
    return ffi::Error::InvalidArgument("zoo_thin_conv: shapes do not match");
  std::vector<int64_t> rowoff;
  if (!offsets_in_range(g, offsets, &rowoff))
    return ffi::Error::InvalidArgument("zoo_thin_conv: a tap reads outside P");
  std::vector<int64_t> tapoff(g.taps);
  for (int64_t t = 0; t < g.taps; ++t) tapoff[t] = rowoff[t * g.cp];
  const int64_t orows = g.b * g.ho;
  const int nt = thread_count(threads, orows);
  auto run = [&](int64_t r0, int64_t r1) {
    const float *P = p.typed_data(), *V = v.typed_data();
    float* Y = y->typed_data();
    switch (g.cr) {
      case 1: thin_rows<1>(g, P, V, tapoff.data(), r0, r1, Y); break;
      case 2: thin_rows<2>(g, P, V, tapoff.data(), r0, r1, Y); break;
      case 3: thin_rows<3>(g, P, V, tapoff.data(), r0, r1, Y); break;
      default: thin_rows<4>(g, P, V, tapoff.data(), r0, r1, Y); break;
    }
  };
  in_parts(nt, orows, [&](int, int64_t r0, int64_t r1) { run(r0, r1); });
  return ffi::Error::Success();
}

// ---- a transposed convolution into 1 to 4 channels, read from x directly (no padding, no phases):
//   y[b, o_h, o_w, c] = sum over taps (i, j) and p of  x[b, u_h, u_w, p] * V[i, j, c, p]
// where o = s * u + lo - i on each axis (lax.conv_transpose's dilated input padded by lo), C_P a multiple
// of 16. Output pixels of one row and one column parity share their taps and read neighbouring x pixels:
// blocks of NPX of them are summed in registers, 16 of x's channels at a time; the edges pixel by pixel.

struct Transposed {
  int64_t b, h, w, cp;       // x
  int64_t ho, wo, c;         // y
  int64_t kh, kw, sh, sw, lo_h, lo_w;
};

template <int C, int NPX>
inline void tt_block(const Transposed& g, const float* X, const float* V, int64_t b, int64_t oy, int64_t ox0,
                     const int64_t* rows_i, const int64_t* rows_u, int nrows, const int64_t* cols_j,
                     const int64_t* cols_u, int ncols, float* Y) {
  v16 acc[NPX][C];
  for (int k = 0; k < NPX; ++k)
    for (int c = 0; c < C; ++c) acc[k][c] = v16{};
  for (int r = 0; r < nrows; ++r)
    for (int q = 0; q < ncols; ++q) {
      const float* xp = X + ((b * g.h + rows_u[r]) * g.w + cols_u[q]) * g.cp;
      const float* vp = V + ((rows_i[r] * g.kw + cols_j[q]) * C) * g.cp;
      for (int64_t p = 0; p < g.cp; p += 16) {
        v16 v[C];
        for (int c = 0; c < C; ++c) memcpy(&v[c], vp + c * g.cp + p, 64);
        for (int k = 0; k < NPX; ++k) {
          v16 a;
          memcpy(&a, xp + k * g.cp + p, 64);
          for (int c = 0; c < C; ++c) acc[k][c] += a * v[c];
        }
      }
    }
  float* y = Y + ((b * g.ho + oy) * g.wo + ox0) * C;
  for (int k = 0; k < NPX; ++k)
    for (int c = 0; c < C; ++c) y[k * g.sw * C + c] = lane_sum(acc[k][c]);
}

// the taps meeting output index o on one axis (size n of x, kernel k, stride s, padding lo): tap i where
// o - lo + i is a multiple of s, reading x at (o - lo + i) / s; `first`/`last`: the range of x read
void axis_taps(int64_t o, int64_t n, int64_t k, int64_t s, int64_t lo, std::vector<int64_t>* taps,
               std::vector<int64_t>* at) {
  taps->clear();
  at->clear();
  for (int64_t i = 0; i < k; ++i) {
    const int64_t d = o - lo + i;
    if (d % s == 0 && d >= 0 && d / s < n) {
      taps->push_back(i);
      at->push_back(d / s);
    }
  }
}

template <int C>
void tt_rows(const Transposed& g, const float* X, const float* V, int64_t r0, int64_t r1, float* Y) {
  constexpr int NPX = 24 / C;
  std::vector<int64_t> ri, ru, cj, cu;
  for (int64_t orow = r0; orow < r1; ++orow) {
    const int64_t b = orow / g.ho, oy = orow % g.ho;
    axis_taps(oy, g.h, g.kh, g.sh, g.lo_h, &ri, &ru);
    for (int64_t par = 0; par < g.sw && par < g.wo; ++par) {
      // columns par, par + sw, ...: the first with every one of its parity's taps inside x starts the blocks
      int64_t ox = par;
      auto one = [&](int64_t x0) {
        axis_taps(x0, g.w, g.kw, g.sw, g.lo_w, &cj, &cu);
        tt_block<C, 1>(g, X, V, b, oy, x0, ri.data(), ru.data(), (int)ri.size(), cj.data(), cu.data(),
                       (int)cj.size(), Y);
      };
      // the taps of this parity (those of some column far from the edges)
      std::vector<int64_t> pj;
      for (int64_t j = 0; j < g.kw; ++j)
        if (((par - g.lo_w + j) % g.sw + g.sw) % g.sw == 0) pj.push_back(j);
      for (; ox < g.wo; ox += g.sw) {
        bool inside = true;
        for (int64_t j : pj) {
          const int64_t d = ox - g.lo_w + j;
          if (d < 0 || d / g.sw + NPX > g.w) inside = false;
        }
        if (inside && !pj.empty() && ox + g.sw * (NPX - 1) < g.wo) {
          axis_taps(ox, g.w, g.kw, g.sw, g.lo_w, &cj, &cu);
          tt_block<C, NPX>(g, X, V, b, oy, ox, ri.data(), ru.data(), (int)ri.size(), cj.data(), cu.data(),
                           (int)cj.size(), Y);
          ox += g.sw * (NPX - 1);
        } else {
          one(ox);
        }
      }
    }
  }
}

ffi::Error ThinTransposed(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> v, ffi::Result<ffi::Buffer<ffi::F32>> y,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads, int64_t threads) {
  auto xd = x.dimensions(), vd = v.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || vd.size() != 4 || yd.size() != 4 || strides.size() != 2 || pads.size() != 2)
    return ffi::Error::InvalidArgument("zoo_thin_transposed: x, v and y must be 4-D, strides and pads pairs");
  Transposed g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], vd[0], vd[1], strides[0], strides[1], pads[0], pads[1]};
  if (yd[0] != g.b || g.cp % 16 || g.c < 1 || g.c > 4 || vd[2] != g.c || vd[3] != g.cp || g.sh < 1 || g.sw < 1)
    return ffi::Error::InvalidArgument("zoo_thin_transposed: shapes do not match");
  const int64_t orows = g.b * g.ho;
  const int nt = thread_count(threads, orows);
  auto run = [&](int64_t r0, int64_t r1) {
    const float *X = x.typed_data(), *V = v.typed_data();
    float* Y = y->typed_data();
    switch (g.c) {
      case 1: tt_rows<1>(g, X, V, r0, r1, Y); break;
      case 2: tt_rows<2>(g, X, V, r0, r1, Y); break;
      case 3: tt_rows<3>(g, X, V, r0, r1, Y); break;
      default: tt_rows<4>(g, X, V, r0, r1, Y); break;
    }
  };
  in_parts(nt, orows, [&](int, int64_t r0, int64_t r1) { run(r0, r1); });
  return ffi::Error::Success();
}

}  // namespace

// Every handler: two float32 operands, one result, the strides, the taps' offsets (or the transposed
// kernel's paddings) and a thread count.
#define ZOO_HANDLER(symbol, impl, taps)                                                 \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, impl,                                           \
                                ffi::Ffi::Bind()                                        \
                                    .Arg<ffi::Buffer<ffi::F32>>()                       \
                                    .Arg<ffi::Buffer<ffi::F32>>()                       \
                                    .Ret<ffi::Buffer<ffi::F32>>()                       \
                                    .Attr<ffi::Span<const int64_t>>("strides")          \
                                    .Attr<ffi::Span<const int64_t>>(taps)               \
                                    .Attr<int64_t>("threads"))

ZOO_HANDLER(ZooConvWeightGrad, WeightGrad, "offsets");
ZOO_HANDLER(ZooConvTaps, Conv, "offsets");
ZOO_HANDLER(ZooThinConv, ThinConv, "offsets");
ZOO_HANDLER(ZooThinTransposed, ThinTransposed, "pads");
