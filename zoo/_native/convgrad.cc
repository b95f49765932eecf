// Convolution weight gradients on CPU as outer products accumulated in registers (issue 7), for
// zoo.convgrad: an XLA FFI custom call.
//
//   out[t, p, r] = sum over (b, i, j) of  P[b, sh*i + di_t, sw*j + dj_t, p] * R[b, i, j, r]
//
// P is the side gathered at the taps (a convolution's input, padded so that every tap is in range: the
// operand given, padded here by `pads`, struct Padded), R the side read as whole rows (dy for a convolution;
// for a transposed convolution x, and P is dy padded), (sh, sw)
// the strides, (di_t, dj_t) tap t's offset. No copies of P per tap (im2col) are made: for each pixel, a block of
// rows (t, p) is broadcast from P and multiplied into R's row, the block's sums held in vector registers
// over a tile of pixels. R's channels are processed 64 at a time (4 vectors of 16 floats), so C_R must be a
// multiple of 16. Threads split the pixels; each sums into its own copy of out, added at the end.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <sched.h>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64)));

// 16 floats loaded from or stored to memory at any alignment (a float* may point into a v16u). Not
// memcpy: GCC 12 tuned for Skylake-SP / Cascade Lake (-march=native on such a CPU) copies 64 bytes as two
// 256-bit halves, through the stack, and then kept every register block's sums on the stack too (a load and
// a store per multiply-add: out_block<4, 6>'s loop 93 instructions, 51 of them on the stack, for its 24
// multiply-adds): the thin-input forward pass ran at 20 GFLOP/s on one such core. With -march=sapphirerapids
// that loop was 45 instructions, none on the stack; with these, 49 for Cascade Lake, none on the stack.
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
inline v16 load16(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void store16(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }

// Two-vector shuffles (GCC's and Clang's spellings).
#if defined(__clang__)
#define SHUF2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUF2(a, b, ...) __builtin_shuffle(a, b, i16{__VA_ARGS__})
#endif

// Pins a loaded vector in a register: without it GCC folds the load into every multiply-add that uses it,
// and the loop issues a load per multiply-add (the thin kernels ran at half speed so: load-bound). Only
// where a v16 is one register (AVX-512).
#if defined(__AVX512F__) && (defined(__GNUC__) || defined(__clang__))
#define IN_REGISTER(x) __asm__("" : "+v"(x))
#else
#define IN_REGISTER(x)
#endif

// The lane sums of 16 vectors at once, by a tree of two-vector shuffles (30 shuffles and 15 adds, against
// 64 and 64 for a halving per vector): lane SUM_AT(i) of the result is the sum of a[i]'s 16 lanes.
#define SUM_AT(i) (4 * ((i) % 4) + (i) / 4)
inline v16 halves(v16 a, v16 b) {   // 8 partial sums of a, then 8 of b
  return SHUF2(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
         SHUF2(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
inline v16 quarters(v16 a, v16 b) {   // of halves(a0, a1) and halves(a2, a3): 4 partial sums each of a0 .. a3
  return SHUF2(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
         SHUF2(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
}
inline v16 pairs(v16 a, v16 b) {   // of quarters of a0 .. a3 and of a4 .. a7: group l of 4 lanes 2 each of a_l, a_4+l
  return SHUF2(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
         SHUF2(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
}
__attribute__((always_inline)) inline v16 lane_sums16(const v16* a) {
  v16 r[8], s[4];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) r[k] = halves(a[2 * k], a[2 * k + 1]);
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) s[k] = quarters(r[2 * k], r[2 * k + 1]);
  const v16 t0 = pairs(s[0], s[1]), t1 = pairs(s[2], s[3]);
  return SHUF2(t0, t1, 0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28, 30) +   // [4l + m]: a[l + 4m]'s
         SHUF2(t0, t1, 1, 3, 17, 19, 5, 7, 21, 23, 9, 11, 25, 27, 13, 15, 29, 31);
}

namespace {

struct Geometry {
  int64_t b, hp, wp, cp;     // P (as padded)
  int64_t ho, wo, cr;        // R (and the pixels summed over)
  int64_t sh, sw;            // strides
  int64_t taps;
};

// n floats copied from src to dst, or zeros written, by vector moves in line: a padded row of a 1-channel image
// is 28 floats, and the calls to memcpy and memset per row (and their choice of method) took as long as the
// weight gradient's multiply-adds for the VAE's 1 -> 32 layer (perf: a third of the kernel's time).
inline void copy_floats(float* dst, const float* src, int64_t n) {
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) store16(dst + k, load16(src + k));
#if defined(__AVX512F__)
  if (k < n) {
    const __mmask16 m = (__mmask16)((1u << (n - k)) - 1);
    _mm512_mask_storeu_ps(dst + k, m, _mm512_maskz_loadu_ps(m, src + k));
  }
#else
  for (; k < n; ++k) dst[k] = src[k];
#endif
}

inline void zero_floats(float* dst, int64_t n) {
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) store16(dst + k, v16{});
#if defined(__AVX512F__)
  if (k < n) _mm512_mask_storeu_ps(dst + k, (__mmask16)((1u << (n - k)) - 1), _mm512_setzero_ps());
#else
  for (; k < n; ++k) dst[k] = 0.0f;
#endif
}

// Output row r of the b * ho rows of a batch as its batch item b and row i in it, counted from one row to the
// next (next()) instead of divided for per row: a 64-bit division is ~40-90 cycles, and perf put 10% of
// conv_taps' VAE 1 -> 32 block on one. Divides once, and not at all where ho is 0 (no rows).
struct RowOf {
  int64_t b, i, ho;
  RowOf(int64_t r, int64_t ho) : b(ho ? r / ho : 0), i(ho ? r % ho : 0), ho(ho) {}
  void next() {
    if (++i == ho) i = 0, ++b;
  }
};

// P as the kernels read it: the operand A (b, h, w, c) padded by (lo_h, hi_h, lo_w, hi_w) zeros (a padding
// may be negative: a crop). The padding is done here, a few batch items at a time into a buffer of the
// thread's, where XLA's pad before the call wrote the whole padded P to memory and the kernel read it
// back (for the DCGAN's 3-channel transposed convolution's input gradient, ~0.12 ms of its 0.85 at batch
// 64). Without padding, P is A.
struct Padded {
  const float* a;
  int64_t h, w, c, lo_h, lo_w, hp, wp;
  std::vector<float> buf;
  float* data = nullptr;      // buf's first 64-byte boundary: every vector of a pixel in one cache line
  int64_t b0 = 0, b1 = 0;     // the items in buf

  Padded(const float* a, int64_t h, int64_t w, int64_t c, ffi::Span<const int64_t> pads)
      : a(a), h(h), w(w), c(c), lo_h(pads[0]), lo_w(pads[2]), hp(h + pads[0] + pads[1]), wp(w + pads[2] + pads[3]) {}
  bool none() const { return lo_h == 0 && lo_w == 0 && hp == h && wp == w; }
  // items [first, last) padded, one after the other: item `first` at the pointer returned
  const float* items(int64_t first, int64_t last) {
    if (none()) return a + first * h * w * c;
    if (first < b0 || last > b1) {
      b0 = first, b1 = last;
      buf.resize((last - first) * hp * wp * c + 16);
      data = buf.data() + ((64 - (uintptr_t)buf.data() % 64) % 64) / sizeof(float);
      const int64_t x0 = std::clamp<int64_t>(lo_w, 0, wp), x1 = std::clamp<int64_t>(lo_w + w, x0, wp);
      float* out = data;
      for (int64_t b = first; b < last; ++b)
        for (int64_t y = 0; y < hp; ++y, out += wp * c) {
          const int64_t src = y - lo_h;
          if (src < 0 || src >= h) {
            zero_floats(out, wp * c);
            continue;
          }
          zero_floats(out, x0 * c);
          copy_floats(out + x0 * c, a + ((b * h + src) * w + x0 - lo_w) * c, (x1 - x0) * c);
          zero_floats(out + x1 * c, (wp - x1) * c);
        }
    }
    return data + (first - b0) * hp * wp * c;
  }
};

// One tile of pixels (whole rows of R, rows [r0, r1) of the b * ho output rows) for a block of RB rows of
// out starting at `row`, columns [col, col + 16 * Q).
// P: batch item b0's start (the items of the tile follow it).
template <int Q, int RB>
inline void block(const Geometry& g, const float* P, int64_t b0, const float* R, const int64_t* rowoff, int64_t r0,
                  int64_t r1, float* out, int64_t row, int64_t col) {
  v16 acc[RB][Q];
  for (int k = 0; k < RB; ++k)
    for (int q = 0; q < Q; ++q) acc[k][q] = load16(out + (row + k) * g.cr + col + 16 * q);
  int64_t off[RB];
  for (int k = 0; k < RB; ++k) off[k] = rowoff[row + k];
  RowOf at(r0, g.ho);
  for (int64_t orow = r0; orow < r1; ++orow, at.next()) {
    const float* rp = R + (orow * g.wo) * g.cr + col;
    const float* pp = P + (((at.b - b0) * g.hp + g.sh * at.i) * g.wp) * g.cp;
    const int64_t pstep = g.sw * g.cp;
    for (int64_t j = 0; j < g.wo; ++j, rp += g.cr, pp += pstep) {
      v16 v[Q];
      for (int q = 0; q < Q; ++q) v[q] = load16(rp + 16 * q);
      for (int k = 0; k < RB; ++k) {
        const float a = pp[off[k]];
        for (int q = 0; q < Q; ++q) acc[k][q] += a * v[q];
      }
    }
  }
  for (int k = 0; k < RB; ++k)
    for (int q = 0; q < Q; ++q) store16(out + (row + k) * g.cr + col + 16 * q, acc[k][q]);
}

// block<Q, n> for a run-time n in [1, N]
template <int Q, int N>
inline void block_of(int64_t n, const Geometry& g, const float* P, int64_t b0, const float* R,
                     const int64_t* rowoff, int64_t r0, int64_t r1, float* out, int64_t row, int64_t col) {
  if constexpr (N > 1) {
    if (n < N) return block_of<Q, N - 1>(n, g, P, b0, R, rowoff, r0, r1, out, row, col);
  }
  block<Q, N>(g, P, b0, R, rowoff, r0, r1, out, row, col);
}

template <int Q>
void tile(const Geometry& g, const float* P, int64_t b0, const float* R, const int64_t* rowoff, int64_t r0,
          int64_t r1, float* out, int64_t col) {
  constexpr int RB = 24 / Q;    // RB * Q accumulators: 24 of the 32 vector registers
  const int64_t rows = g.taps * g.cp;
  if constexpr (Q == 1) {     // 16 columns: blocks of 24 rows and single rows, as before (balancing them
    int64_t row = 0;           // would build 24 block sizes more; none of the families' layers was timed so)
    for (; row + RB <= rows; row += RB) block<Q, RB>(g, P, b0, R, rowoff, r0, r1, out, row, col);
    for (; row < rows; ++row) block<Q, 1>(g, P, b0, R, rowoff, r0, r1, out, row, col);
  } else {
    // the rows in as few blocks as RB allows, of sizes within one of each other: a 1-channel layer's 16 taps
    // at 64 columns as 5 + 5 + 6 rows, where blocks of 6 left 4 rows of one (4 vector loads and a broadcast
    // per 4 multiply-adds), and the Gated PixelCNN's 28 taps as 5 + 5 + 6 + 6 + 6, not 6 x 4 and 4 x 1
    const int64_t blocks = (rows + RB - 1) / RB;
    int64_t row = 0;
    for (int64_t k = 0; k < blocks; ++k) {
      const int64_t n = (rows - row) / (blocks - k);
      block_of<Q, RB>(n, g, P, b0, R, rowoff, r0, r1, out, row, col);
      row += n;
    }
  }
}

void accumulate(const Geometry& g, Padded& P, const float* R, const int64_t* rowoff, int64_t r0, int64_t r1,
                float* out) {
  // tiles of about 128 pixels (whole rows), so that R's and P's parts stay in the core's caches (tiles of
  // 256 to 2,048 pixels, by R's width, measured 0.95-1.05x of these on five layers' shapes); where a batch
  // item has at most 256, tiles of whole items, each padded once (tiles of 9 rows of 14 padded each of the
  // VAE's 28x28 images twice: a quarter of its 1 -> 32 weight gradient's time went to the padding)
  const int64_t pixels = g.ho * g.wo;
  const int64_t step = pixels <= 256 ? g.ho * std::max<int64_t>(1, 128 / std::max<int64_t>(pixels, 1))
                                     : std::max<int64_t>(1, 128 / std::max<int64_t>(g.wo, 1));
  for (int64_t t0 = r0; t0 < r1; t0 += step) {
    const int64_t t1 = std::min(r1, t0 + step), b0 = t0 / g.ho;
    const float* p = P.items(b0, (t1 - 1) / g.ho + 1);
    int64_t col = 0;
    for (; col + 64 <= g.cr; col += 64) tile<4>(g, p, b0, R, rowoff, t0, t1, out, col);
    // 32 columns as 2 vectors (RB 12), not two passes of 1 (RB 24: a broadcast load per multiply-add)
    for (; col + 32 <= g.cr; col += 32) tile<2>(g, p, b0, R, rowoff, t0, t1, out, col);
    for (; col + 16 <= g.cr; col += 16) tile<1>(g, p, b0, R, rowoff, t0, t1, out, col);
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

// run(k, r0, r1) for the nt parts [rows * k / nt, rows * (k + 1) / nt) of the rows, on this thread and XLA's
// own threads (its intra-op pool, whose idle threads spin a while before they sleep: a thread started per
// call took ~0.1 ms on the 2-core VM, a quarter of a 3-channel layer's pass at batch 64, and one of our own
// woken from sleep ~0.05 ms). The pool may run a task late, or on this thread, or not while this one
// waits (XLA promises no parallelism): so each task and this thread take parts from one counter until none
// are left, and this thread waits only for parts another thread has taken. A task that starts after the
// call has returned finds none left (the counter outlives the call; `run` and the rows do not).
template <class F>
void in_parts(ffi::ThreadPool& pool, int nt, int64_t rows, F run) {
  if (nt <= 1) return run(0, 0, rows);
  struct Parts {
    std::atomic<int> next{0}, done{0};
    int n = 0;
    std::function<void(int)> part;
    void work() {
      for (int k; (k = next.fetch_add(1)) < n; done.fetch_add(1)) part(k);
    }
  };
  auto parts = std::make_shared<Parts>();
  parts->n = nt;
  parts->part = [&](int k) { run(k, rows * k / nt, rows * (k + 1) / nt); };
  for (int k = 1; k < nt; ++k) pool.Schedule([parts] { parts->work(); });
  parts->work();
  while (parts->done.load() < nt) std::this_thread::yield();
}

// The geometry of a kernel reading A padded by `pads` at taps; false where the shapes or pads are not such.
bool padded_geometry(ffi::Span<const int64_t> ad, ffi::Span<const int64_t> rd, ffi::Span<const int64_t> strides,
                     ffi::Span<const int64_t> offsets, ffi::Span<const int64_t> pads, Geometry* g) {
  if (ad.size() != 4 || rd.size() != 4 || offsets.size() % 2 || strides.size() != 2 || pads.size() != 4)
    return false;
  *g = Geometry{ad[0], ad[1] + pads[0] + pads[1], ad[2] + pads[2] + pads[3], ad[3], rd[1], rd[2], rd[3],
                strides[0], strides[1], (int64_t)offsets.size() / 2};
  return rd[0] == g->b && g->hp >= 1 && g->wp >= 1 && g->sh >= 1 && g->sw >= 1;
}

ffi::Error WeightGrad(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> r, ffi::Result<ffi::Buffer<ffi::F32>> out,
                      ffi::Span<const int64_t> strides, ffi::Span<const int64_t> offsets, ffi::Span<const int64_t> pads,
                      int64_t threads, ffi::ThreadPool pool) {
  auto pd = p.dimensions(), od = out->dimensions();
  Geometry g;
  if (od.size() != 3 || !padded_geometry(pd, r.dimensions(), strides, offsets, pads, &g) || g.cr % 16 ||
      od[0] != g.taps || od[1] != g.cp || od[2] != g.cr)
    return ffi::Error::InvalidArgument("zoo_conv_weight_grad: shapes, strides, offsets or pads do not match");
  std::vector<int64_t> rowoff;
  if (!offsets_in_range(g, offsets, &rowoff))
    return ffi::Error::InvalidArgument("zoo_conv_weight_grad: a tap reads outside P");
  const float* R = r.typed_data();
  float* O = out->typed_data();
  const int64_t n = g.taps * g.cp * g.cr, orows = g.b * g.ho;
  const int nt = thread_count(threads, orows);
  std::memset(O, 0, n * sizeof(float));
  // part k > 0 sums into a copy of its own, added at the end (one thread: none, in_parts runs part 0 here)
  std::vector<std::vector<float>> parts(nt - 1, std::vector<float>(n, 0.0f));
  in_parts(pool, nt, orows, [&](int k, int64_t r0, int64_t r1) {
    Padded P(p.typed_data(), pd[1], pd[2], pd[3], pads);
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

// P: the output row's batch item's start; `bias` (y's channels) or null: the sums start from it
template <int Q, int NPX, int PS>
inline void out_block(const Geometry& g, const float* P, const float* W, const float* bias, const int64_t* rowoff,
                      int64_t orow, int64_t i, int64_t j0, float* Y, int64_t col) {
  v16 b[Q];
  for (int q = 0; q < Q; ++q) {
    b[q] = v16{};
    if (bias) b[q] = load16(bias + col + 16 * q);
  }
  v16 acc[NPX][Q];
  for (int k = 0; k < NPX; ++k)
    for (int q = 0; q < Q; ++q) acc[k][q] = b[q];
  const float* pp = P + (g.sh * i * g.wp + g.sw * j0) * g.cp;
  const int64_t pstep = PS ? PS : g.sw * g.cp, rows = g.taps * g.cp;
  float* y = Y + (orow * g.wo + j0) * g.cr + col;
  // the block's output lines asked for, for writing, before its sums are computed, so that their reads for
  // ownership overlap the multiply-adds: the stores of a 1-channel first layer (12.8 MB of output at batch
  // 64) waited on them. On the 2-core Cascade Lake VM, in alternating processes, the 7x7 mask A's forward
  // pass 92-101 -> 142-144 GFLOP/s (109 against 101 once); D's first layer 0.60 -> 0.80 of the ceiling.
  for (int k = 0; k < NPX; ++k)
    for (int q = 0; q < Q; ++q) __builtin_prefetch(y + k * g.cr + 16 * q, 1, 3);
  for (int64_t row = 0; row < rows; ++row) {
    v16 w[Q];
    for (int q = 0; q < Q; ++q) w[q] = load16(W + row * g.cr + col + 16 * q);
    const float* pr = pp + rowoff[row];
    for (int k = 0; k < NPX; ++k) {
      const float a = pr[k * pstep];
      for (int q = 0; q < Q; ++q) acc[k][q] += a * w[q];
    }
  }
  for (int k = 0; k < NPX; ++k)
    for (int q = 0; q < Q; ++q) store16(y + k * g.cr + 16 * q, acc[k][q]);
}

// out_block of the n < N pixels left at the end of a row, as one block
template <int Q, int N, int PS>
void out_tail(const Geometry& g, const float* P, const float* W, const float* bias, const int64_t* rowoff,
              int64_t orow, int64_t i, int64_t j0, float* Y, int64_t col, int64_t n) {
  if constexpr (N > 1) {
    if (n < N - 1) return out_tail<Q, N - 1, PS>(g, P, W, bias, rowoff, orow, i, j0, Y, col, n);
    out_block<Q, N - 1, PS>(g, P, W, bias, rowoff, orow, i, j0, Y, col);
  }
}

// A row in blocks of NPX pixels, then the rest as one block. The rest (4 pixels of a 28-pixel row) were blocks
// of one pixel: 4 sums (Q = 4), each multiply-add waiting on the one before, where a block of 6 has 24 in
// flight. With one block of 4, the Gated PixelCNN's 4x7 first layer (1 -> 128) ran 1.09-1.33x and a 4x7
// layer into 64 1.02-1.29x as fast on one core (the rows cut evenly, 6, 6, 6, 5, 5, ran 0.84x: the README).
// But where the rest would hold fewer than 8 sums (chains of multiply-adds, 4 cycles each: fewer than 2 a cycle
// in flight), the last full block and the rest as two halves: a 14-pixel row into 32 channels as 7 + 7, not
// 12 + 2 (whose 2 took a quarter of the layer's time).
template <int Q, int PS>
void out_row(const Geometry& g, const float* P, const float* W, const float* bias, const int64_t* rowoff,
             int64_t orow, int64_t i, float* Y, int64_t col) {
  constexpr int NPX = 24 / Q;
  int64_t full = g.wo / NPX, rest = g.wo % NPX;
  if (rest && rest * Q < 8 && full >= 1) full -= 1, rest += NPX;
  int64_t j = 0;
  for (; j < full * NPX; j += NPX) out_block<Q, NPX, PS>(g, P, W, bias, rowoff, orow, i, j, Y, col);
  if (rest > NPX) {
    out_tail<Q, NPX, PS>(g, P, W, bias, rowoff, orow, i, j, Y, col, rest / 2);
    j += rest / 2, rest -= rest / 2;
  }
  if (rest) out_tail<Q, NPX, PS>(g, P, W, bias, rowoff, orow, i, j, Y, col, rest);
}

// PS: P's step from one output pixel to the next (sw * cp) where it is 1 or 2, else 0 (read from g): as a
// constant, the broadcasts' addresses need no arithmetic per pixel
template <int PS>
void convolve_at(const Geometry& g, Padded& P, const float* W, const float* bias, const int64_t* rowoff, int64_t r0,
                 int64_t r1, float* Y) {
  RowOf at(r0, g.ho);
  for (int64_t orow = r0; orow < r1; ++orow, at.next()) {
    const float* p = P.items(at.b, at.b + 1);
    int64_t col = 0;
    for (; col + 64 <= g.cr; col += 64) out_row<4, PS>(g, p, W, bias, rowoff, orow, at.i, Y, col);
    for (; col + 32 <= g.cr; col += 32) out_row<2, PS>(g, p, W, bias, rowoff, orow, at.i, Y, col);   // as in accumulate
    for (; col + 16 <= g.cr; col += 16) out_row<1, PS>(g, p, W, bias, rowoff, orow, at.i, Y, col);
  }
}

void convolve(const Geometry& g, Padded& P, const float* W, const float* bias, const int64_t* rowoff, int64_t r0,
              int64_t r1, float* Y) {
  switch (g.sw * g.cp) {
    case 1: return convolve_at<1>(g, P, W, bias, rowoff, r0, r1, Y);
    case 2: return convolve_at<2>(g, P, W, bias, rowoff, r0, r1, Y);
    default: return convolve_at<0>(g, P, W, bias, rowoff, r0, r1, Y);
  }
}

// bias: null, or y's channels of bias added (ConvBias)
ffi::Error conv_with(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> w, const float* bias,
                     ffi::Result<ffi::Buffer<ffi::F32>> y, ffi::Span<const int64_t> strides,
                     ffi::Span<const int64_t> offsets, ffi::Span<const int64_t> pads, int64_t threads,
                     ffi::ThreadPool& pool) {
  auto pd = p.dimensions(), wd = w.dimensions();
  Geometry g;
  if (wd.size() != 3 || !padded_geometry(pd, y->dimensions(), strides, offsets, pads, &g) || g.cr % 16 ||
      wd[0] != g.taps || wd[1] != g.cp || wd[2] != g.cr)
    return ffi::Error::InvalidArgument("zoo_conv_taps: shapes, strides, offsets or pads do not match");
  std::vector<int64_t> rowoff;
  if (!offsets_in_range(g, offsets, &rowoff))
    return ffi::Error::InvalidArgument("zoo_conv_taps: a tap reads outside P");
  const int64_t orows = g.b * g.ho;
  const int nt = thread_count(threads, orows);
  in_parts(pool, nt, orows, [&](int, int64_t r0, int64_t r1) {
    Padded P(p.typed_data(), pd[1], pd[2], pd[3], pads);
    convolve(g, P, w.typed_data(), bias, rowoff.data(), r0, r1, y->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error Conv(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> w, ffi::Result<ffi::Buffer<ffi::F32>> y,
                ffi::Span<const int64_t> strides, ffi::Span<const int64_t> offsets, ffi::Span<const int64_t> pads,
                int64_t threads, ffi::ThreadPool pool) {
  return conv_with(p, w, nullptr, y, strides, offsets, pads, threads, pool);
}

// conv_taps plus a bias, added where the sums start (no pass over y after the call)
ffi::Error ConvBias(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                    ffi::Result<ffi::Buffer<ffi::F32>> y, ffi::Span<const int64_t> strides,
                    ffi::Span<const int64_t> offsets, ffi::Span<const int64_t> pads, int64_t threads,
                    ffi::ThreadPool pool) {
  auto bd = bias.dimensions(), yd = y->dimensions();
  if (bd.size() != 1 || yd.size() != 4 || bd[0] != yd[3])
    return ffi::Error::InvalidArgument("zoo_conv_taps_bias: the bias must be (y's channels,)");
  return conv_with(p, w, bias.typed_data(), y, strides, offsets, pads, threads, pool);
}

// ---- the convolutions whose output is thin (1 to 4 channels) and whose input is not:
//   y[b, o, c] = sum over taps t and p of  x[b, at_t(o), p] * V_t[c, p]
// with C_x a multiple of 16: a block of NPX output pixels of one row that read x at a fixed step from one
// tap to the next holds NPX * C <= 16 vectors of partial sums over p, 16 channels at a time, and sums their
// lanes together at the end (lane_sums16). Each (16 channels, tap) step loads NPX vectors of x and C of V
// into registers for NPX * C multiply-adds. Which pixels and taps make a block is planned once per call
// (per output row, the same for every batch item). The DCGAN's last transposed convolution (64 -> 3, by
// parity of the output column) and its first convolution's input gradient, a PixelCNN's 7x7 mask A input
// gradient (64 -> 1).

// One tap of a block: its pixel k reads x at off + k * step (from the batch item's start) for k in [lo, hi),
// zeros elsewhere (a transposed convolution's edges); v: the tap's kernel (C, C_x).
struct Tap {
  int64_t off;
  const float* v;
  int lo, hi;
};

struct Block {
  int64_t out;     // its first pixel in y (from the batch item's start)
  int nb;          // pixels
  bool edge;       // some tap reads zeros for some pixel (of runs: some run reads more than RUN_EDGE of them)
  size_t t0, nt;   // taps: plan.taps[t0, t0 + nt)
};

// Taps of one kernel row with neighbouring columns, at stride 1: pixel k of a block at the run's tap q reads x
// at position k + q of the run, x's row `row` and column col + k + q, so each x vector loaded serves up to
// `len` taps (run_fmas). Its positions [mlo, mhi) lie inside x: those outside, at most RUN_EDGE at either
// end, read zeros (a pointer chosen once per run), else (Block::edge) the block's runs read x padded with
// zero columns (Plan::padl, padr), at `off` in a padded item.
constexpr int RUN_MAX = 8, RUN_EDGE = 3;
struct Run {
  int64_t off, at;           // its first position in x's padded item, and in x's item
  const float* v[RUN_MAX];   // tap q's kernel
  int len, mlo, mhi;
  int64_t row, col;
};

struct Plan {
  std::vector<std::vector<Block>> rows;   // per output row
  std::vector<Tap> taps;
  std::vector<Run> runs;                  // in place of taps where the blocks are runs' (thin_conv_runs)
  int64_t h = 0, w = 0, padl = 0, padr = 0;   // x's rows and columns; (runs) its zero columns each side
  int pairs = 0;                          // (transposed_pairs) 1 + parity 1's first position O1
  int64_t step, ostep;                    // x's and y's step from one pixel of a block to the next
  int64_t xbatch, ybatch, cx;             // a batch item's size in x and y; x's channels
  std::vector<float> zeros;               // one pixel's channels of zeros
};

// CX: x's channels where they are a constant (and x's pixels follow each other), else 0
template <int C, int NPX, bool EDGE, int CX>
__attribute__((always_inline)) inline void thin_block(const Plan& plan, const Block& blk, const float* X, float* Y) {
  static_assert(C * NPX <= 16, "one tree of sums");
  v16 acc[16];
#pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) acc[k] = v16{};
  const int64_t cx = CX ? CX : plan.cx, step = CX ? CX : plan.step;
  // do-while (blk.nt >= 1): with a path that skips the loop, GCC keeps the sums in memory, not registers
  size_t t = blk.t0;
  do {
    const Tap& tap = plan.taps[t];
    const float* x[NPX];
    for (int k = 0; k < NPX; ++k) {
      const intptr_t at = (intptr_t)X + (intptr_t)((tap.off + k * step) * sizeof(float));
      if (EDGE) {   // chosen without a branch (GCC made a plain ?: a chain of branches per pixel)
        const intptr_t in = -(intptr_t)((uint32_t)(k - tap.lo) < (uint32_t)(tap.hi - tap.lo));
        x[k] = (const float*)((at & in) | ((intptr_t)plan.zeros.data() & ~in));
      } else {
        x[k] = (const float*)at;
      }
    }
    for (int64_t p = 0; p < cx; p += 16) {
      v16 w[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        w[c] = load16(tap.v + c * cx + p);
        IN_REGISTER(w[c]);
      }
#pragma GCC unroll 16
      for (int k = 0; k < NPX; ++k) {
        v16 a;
        a = load16(x[k] + p);
        IN_REGISTER(a);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) acc[k * C + c] += a * w[c];
      }
    }
  } while (++t < blk.t0 + blk.nt);
  const v16 sums = lane_sums16(acc);
  float* y = Y + blk.out;
  for (int k = 0; k < NPX; ++k)
    for (int c = 0; c < C; ++c) y[k * plan.ostep + c] = sums[SUM_AT(k * C + c)];
}

// thin_block with NPX = blk.nb (at most N)
template <int C, int N, int CX>
__attribute__((always_inline)) inline void thin_block_of(const Plan& plan, const Block& blk, const float* X, float* Y) {
  if constexpr (N > 1) {
    if (blk.nb < N) return thin_block_of<C, N - 1, CX>(plan, blk, X, Y);
  }
  if (blk.edge)
    thin_block<C, N, true, CX>(plan, blk, X, Y);
  else
    thin_block<C, N, false, CX>(plan, blk, X, Y);
}

// y[k * step] for k < n <= 16: lane SUM_AT(k) of sums (lane_sums16's), a vector store where step is 1
inline void store_sums(v16 sums, int n, float* y, int64_t step) {
  const v16 in_order = SHUF2(sums, sums, SUM_AT(0), SUM_AT(1), SUM_AT(2), SUM_AT(3), SUM_AT(4), SUM_AT(5), SUM_AT(6),
                             SUM_AT(7), SUM_AT(8), SUM_AT(9), SUM_AT(10), SUM_AT(11), SUM_AT(12), SUM_AT(13),
                             SUM_AT(14), SUM_AT(15));
#if defined(__AVX512F__)
  if (step == 1) return _mm512_mask_storeu_ps(y, (__mmask16)((1u << n) - 1), (__m512)in_order);
#endif
  float lanes[16];
  store16(lanes, in_order);
  for (int k = 0; k < n; ++k) y[k * step] = lanes[k];
}

// A run's M positions (x vectors of CX channels) from `base`: the first and last E through pointers chosen once
// per run (edge_pointers: zeros where a position lies outside x, Run::mlo and mhi), the others x's own. (Plain
// functions on the caller's array: as members of a struct, GCC kept the pointers on the stack.)
template <int M, int E, int CX>
__attribute__((always_inline)) inline void edge_pointers(const Run& run, const float* base, const float* zeros,
                                                         const float** edge) {
  static_assert(M >= 2 * E, "the edges do not meet");
  for (int e = 0; e < E; ++e) {
    edge[e] = e >= run.mlo && e < run.mhi ? base + e * CX : zeros;
    const int m = M - E + e;
    edge[E + e] = m >= run.mlo && m < run.mhi ? base + m * CX : zeros;
  }
}

// position m's channels [p, p + 16) in a register
template <int M, int E, int CX>
__attribute__((always_inline)) inline v16 position(const float* const* edge, const float* base, int m, int p) {
  v16 a = load16((m < E ? edge[m] : m >= M - E ? edge[E + m - (M - E)] : base + m * CX) + p);
  IN_REGISTER(a);
  return a;
}

// The run's first L kernels' channels [p, p + 16) in registers
template <int L>
__attribute__((always_inline)) inline void load_kernels(const Run& run, int p, v16* w) {
#pragma GCC unroll 8
  for (int q = 0; q < L; ++q) {
    w[q] = load16(run.v[q] + p);
    IN_REGISTER(w[q]);
  }
}

// One run's multiply-adds into a block's NPX sums (one output channel, x's CX channels, 32, 64 or 128): per 16
// channels, the run's L kernel vectors and each of its NPX - 1 + L positions' x vector loaded once into
// registers (NPX + L + 1 of the 32), NPX * L multiply-adds. A 7-tap run of 16 pixels: 29 loads per 112
// multiply-adds, against 15 per 14 and a pointer per pixel (more than the general registers hold: GCC kept
// them in vector registers and moved them back per load) taking the taps one at a time (thin_block).
template <int NPX, int L, int CX, bool DIRECT>
__attribute__((always_inline)) inline void run_fmas(const Run& run, const float* X, const float* zeros, v16* acc) {
  constexpr int M = NPX + L - 1, E = DIRECT ? RUN_EDGE : 0;
  // x's item read directly: the run's first position may lie before it (never read: the edges read zeros)
  const float* base = DIRECT ? (const float*)((intptr_t)X + (intptr_t)(run.at * (int64_t)sizeof(float))) : X + run.off;
  const float* edge[2 * RUN_EDGE + 1];
  edge_pointers<M, E, CX>(run, base, zeros, edge);
#pragma GCC unroll 1
  for (int p = 0; p < CX; p += 16) {
    v16 w[L];
    load_kernels<L>(run, p, w);
#pragma GCC unroll 32
    for (int m = 0; m < M; ++m) {
      const v16 a = position<M, E, CX>(edge, base, m, p);
#pragma GCC unroll 8
      for (int q = 0; q < L; ++q)
        if (m - q >= 0 && m - q < NPX) acc[m - q] += a * w[q];
    }
  }
}

// A block of nb <= NPX pixels (NPX sums computed, nb stored) from x's item (DIRECT) or x padded (Plan::padl,
// padr).
template <int NPX, int CX, bool DIRECT>
__attribute__((always_inline)) inline void run_block(const Plan& plan, const Block& blk, const float* X, float* Y) {
  v16 acc[16];
#pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) acc[k] = v16{};
  for (size_t r = blk.t0; r < blk.t0 + blk.nt; ++r) {
    const Run& run = plan.runs[r];
    switch (run.len) {
      case 1: run_fmas<NPX, 1, CX, DIRECT>(run, X, plan.zeros.data(), acc); break;
      case 2: run_fmas<NPX, 2, CX, DIRECT>(run, X, plan.zeros.data(), acc); break;
      case 3: run_fmas<NPX, 3, CX, DIRECT>(run, X, plan.zeros.data(), acc); break;
      case 4: run_fmas<NPX, 4, CX, DIRECT>(run, X, plan.zeros.data(), acc); break;
      case 5: run_fmas<NPX, 5, CX, DIRECT>(run, X, plan.zeros.data(), acc); break;
      case 6: run_fmas<NPX, 6, CX, DIRECT>(run, X, plan.zeros.data(), acc); break;
      case 7: run_fmas<NPX, 7, CX, DIRECT>(run, X, plan.zeros.data(), acc); break;
      default: run_fmas<NPX, 8, CX, DIRECT>(run, X, plan.zeros.data(), acc); break;
    }
  }
  store_sums(lane_sums16(acc), blk.nb, Y + blk.out, plan.ostep);
}

// The sums a block of nb pixels computes (run_block's NPX): the families' rows of 28 (and a stride-2 layer's
// column parities of 14) as two blocks of 14, not 16 sums of which 2 go unused. (A third size, 8, would
// build 48 more kernels: 4.4 s more of the compiler.)
constexpr int run_npx(int nb) { return nb <= 14 ? 14 : 16; }

// f(block, x's batch item, y's batch item) for the blocks of output rows [r0, r1) of all batch items' rows
// (plan.rows.size() per item)
template <class F>
void for_blocks(const Plan& plan, const float* X, float* Y, int64_t r0, int64_t r1, F f) {
  const int64_t ho = (int64_t)plan.rows.size();
  RowOf at(r0, ho);
  for (int64_t r = r0; r < r1; ++r, at.next())
    for (const Block& blk : plan.rows[at.i]) f(blk, X + at.b * plan.xbatch, Y + at.b * plan.ybatch);
}

// output rows [r0, r1), by runs; x's CX channels (32, 64 or 128: runs_cx) a constant. A block whose runs read
// zeros at more than RUN_EDGE positions reads its batch item padded with the plan's zero columns (Padded: once
// per item and thread, where needed), computing 16 sums whatever its pixels (a 14-sum kernel there too took
// the library's build from 31 to 38 s). Where the runs had tested each position against x's edges, with a
// branch (every block of a 28-wide row has an edge), the DCGAN's 128 -> 1 transposed convolution ran at 34
// GFLOP/s on one core, 0.3 of the matrix product's.
template <int CX>
void runs_run(const Plan& plan, const float* X, float* Y, int64_t r0, int64_t r1) {
  const std::vector<int64_t> pads{0, 0, plan.padl, plan.padr};
  Padded P(X, plan.h, plan.w, CX, pads);
  const int64_t ho = (int64_t)plan.rows.size();
  for (int64_t b = r0 / ho; b * ho < r1; ++b) {
    const float* Xb = X + b * plan.xbatch;
    const float* padded = nullptr;
    float* Yb = Y + b * plan.ybatch;
    for (int64_t i = std::max<int64_t>(r0 - b * ho, 0); i < std::min(r1 - b * ho, ho); ++i)
      for (const Block& blk : plan.rows[i]) {
        if (!blk.edge) {
          switch (run_npx(blk.nb)) {
            case 14: run_block<14, CX, true>(plan, blk, Xb, Yb); break;
            default: run_block<16, CX, true>(plan, blk, Xb, Yb); break;
          }
          continue;
        }
        if (!padded) padded = P.items(b, b + 1);
        run_block<16, CX, false>(plan, blk, padded, Yb);   // rare (no family's layer): one size, 16
      }
  }
}

// ---- a transposed convolution at stride 2 along a row, into one channel, with a kernel 4 wide, where x's rows are
// wider than the tap vectors below take (16: the DCGAN's and the VAE's last layers, their first layers' input
// gradients, 14 wide, go by those since 2aa9db7): both column parities of a row in one block
// (transposed_pairs). Output pixel 2 m + par reads x's columns m + d at two taps d = O_par, O_par + 1 from the
// block's first position on (O0 = 0; O1 0 or 1, by the padding's parity): each x vector loaded serves the four
// taps, where a block of one parity (runs) loaded it for two, and the block's 14 sums are 14 neighbouring
// outputs, stored at once. A run holds one kernel row's four kernels (v[0, 1]: parity 0's, v[2, 3]: parity 1's).
// Against runs (alternating A/B in one process, batch 100 and 128, 9-11 rounds): the D's 1 -> 64 input
// gradient (64 -> 1) 1.35x and 1.12x, the VAE's 32 -> 1 1.20x and 1.14x, the G's 128 -> 1 1.03x and 1.00x.
constexpr int PAIR_NPX = 7;
template <int O1, int CX>
__attribute__((always_inline)) inline void pair_fmas(const Run& run, const float* X, const float* zeros, v16* acc) {
  constexpr int NPX = PAIR_NPX, M = NPX + 1 + O1, E = RUN_EDGE;
  const float* base = (const float*)((intptr_t)X + (intptr_t)(run.at * (int64_t)sizeof(float)));
  const float* edge[2 * RUN_EDGE + 1];
  edge_pointers<M, E, CX>(run, base, zeros, edge);
#pragma GCC unroll 1
  for (int p = 0; p < CX; p += 16) {
    v16 w[4];
    load_kernels<4>(run, p, w);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const v16 a = position<M, E, CX>(edge, base, m, p);
#pragma GCC unroll 2
      for (int q = 0; q < 2; ++q) {
        const int k0 = m - q, k1 = m - O1 - q;
        if (k0 >= 0 && k0 < NPX) acc[2 * k0] += a * w[q];
        if (k1 >= 0 && k1 < NPX) acc[2 * k1 + 1] += a * w[2 + q];
      }
    }
  }
}

// outputs [0, blk.nb) from blk.out: pixel k of parity par is output 2 k + par
template <int O1, int CX>
void pairs_run(const Plan& plan, const float* X, float* Y, int64_t r0, int64_t r1) {
  for_blocks(plan, X, Y, r0, r1, [&](const Block& blk, const float* Xb, float* Yb) {
    v16 acc[16];
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) acc[k] = v16{};
    for (size_t r = blk.t0; r < blk.t0 + blk.nt; ++r) pair_fmas<O1, CX>(plan.runs[r], Xb, plan.zeros.data(), acc);
    store_sums(lane_sums16(acc), blk.nb, Yb + blk.out, 1);
  });
}

template <int CX>
void pairs_of(const Plan& plan, const float* X, float* Y, int64_t r0, int64_t r1) {
  plan.pairs == 1 ? pairs_run<0, CX>(plan, X, Y, r0, r1) : pairs_run<1, CX>(plan, X, Y, r0, r1);
}

// x's channels that thin_conv takes by runs: the PixelCNN's 64, the Gated PixelCNN's 128 (two gates of 64:
// its first layer's input gradient ran 2.2-2.4x as fast as by thin_block on one core) and the PixelRNNs' 32
bool runs_cx(int64_t cx) { return cx == 32 || cx == 64 || cx == 128; }

// Pixels per block: C * NPX <= 16 sums in registers, with the C vectors of V and one of x (24 sums in two
// trees ran 0.93x as fast, GCC keeping some of them in memory).
template <int C>
constexpr int npx() { return 16 / C; }
inline int npx_of(int64_t c) { return 16 / (int)c; }

// output rows [r0, r1), a block at a time
template <int C, int CX>
void thin_run(const Plan& plan, const float* X, float* Y, int64_t r0, int64_t r1) {
  for_blocks(plan, X, Y, r0, r1, [&](const Block& blk, const float* Xb, float* Yb) {
    if (blk.nt)
      thin_block_of<C, npx<C>(), CX>(plan, blk, Xb, Yb);
    else
      for (int k = 0; k < blk.nb; ++k)
        for (int c = 0; c < C; ++c) Yb[blk.out + k * plan.ostep + c] = 0.0f;
  });
}

// [lo, hi): the k in [0, n) for which col + s * k lies in [0, w) (s >= 1); lo >= hi where there are none.
// A block's pixels that read inside x at a tap (thin_conv_plan, transposed_plan) or its run's positions
// (thin_conv_runs).
std::pair<int, int> inside(int64_t col, int64_t s, int64_t n, int64_t w) {
  const int64_t lo = col >= 0 ? 0 : (-col + s - 1) / s, hi = col >= w ? 0 : (w - col + s - 1) / s;
  return {(int)std::min(lo, n), (int)std::min(hi, n)};
}

// n pixels as blocks of at most npx, as even as can be: (first, count)
std::vector<std::pair<int64_t, int>> blocks_of(int64_t n, int npx) {
  std::vector<std::pair<int64_t, int>> out;
  const int64_t count = (n + npx - 1) / npx;
  for (int64_t i = 0; i < count; ++i) out.push_back({n * i / count, (int)(n * (i + 1) / count - n * i / count)});
  return out;
}

// The plan's blocks on all threads; channels c (1 to 4) a template argument.
ffi::Error thin_in_parts(ffi::ThreadPool& pool, const Plan& plan, int64_t c, const float* X, float* Y, int64_t rows,
                         int64_t threads) {
  const int nt = thread_count(threads, rows);
  in_parts(pool, nt, rows, [&](int, int64_t r0, int64_t r1) {
    if (plan.pairs)     // plan.cx is 32, 64 or 128 (runs_cx)
      return plan.cx == 32 ? pairs_of<32>(plan, X, Y, r0, r1)
             : plan.cx == 64 ? pairs_of<64>(plan, X, Y, r0, r1) : pairs_of<128>(plan, X, Y, r0, r1);
    if (!plan.runs.empty())     // plan.cx is 32, 64 or 128 (runs_cx)
      return plan.cx == 32 ? runs_run<32>(plan, X, Y, r0, r1)
             : plan.cx == 64 ? runs_run<64>(plan, X, Y, r0, r1) : runs_run<128>(plan, X, Y, r0, r1);
    // the families' layers into an image's 1 or 3 channels from 64, pixels read one after the other: those
    // sizes as constants (1.09x for the 3-channel layers; fewer registers for addresses)
    if (plan.cx == 64 && plan.step == 64 && (c == 1 || c == 3))
      c == 1 ? thin_run<1, 64>(plan, X, Y, r0, r1) : thin_run<3, 64>(plan, X, Y, r0, r1);
    else
      switch (c) {
        case 1: thin_run<1, 0>(plan, X, Y, r0, r1); break;
        case 2: thin_run<2, 0>(plan, X, Y, r0, r1); break;
        case 3: thin_run<3, 0>(plan, X, Y, r0, r1); break;
        default: thin_run<4, 0>(plan, X, Y, r0, r1); break;
      }
  });
  return ffi::Error::Success();
}

// An empty plan of x (b, h, w, cx), read at `step` from one pixel of a block to the next, into y (b, ho, wo, c),
// written at `ostep`: its sizes, its ho rows of blocks to fill and a pixel's channels of zeros.
Plan plan_of(int64_t h, int64_t w, int64_t cx, int64_t ho, int64_t wo, int64_t c, int64_t step, int64_t ostep) {
  Plan plan;
  plan.step = step, plan.ostep = ostep, plan.cx = cx;
  plan.xbatch = h * w * cx, plan.ybatch = ho * wo * c;
  plan.h = h, plan.w = w;
  plan.zeros.assign(cx, 0.0f);
  plan.rows.resize(ho);
  return plan;
}

// The plan of a convolution of P (A (b, h, w, cx) padded by `pads`) by V (taps, c, cx) into y (b, ho, wo, c):
// output pixel (i, j) reads P at (sh * i + di_t, sw * j + dj_t) at tap t, that is A at (sh * i + di_t - lo_h,
// sw * j + dj_t - lo_w), zeros outside A (taps that read only zeros for a block are left out of its plan; its
// pixels that do read zeros read them from plan.zeros).
Plan thin_conv_plan(const Geometry& g, ffi::Span<const int64_t> offsets, ffi::Span<const int64_t> pads, int64_t h,
                    int64_t w, const float* V) {
  Plan plan = plan_of(h, w, g.cp, g.ho, g.wo, g.cr, g.sw * g.cp, g.cr);
  for (int64_t i = 0; i < g.ho; ++i)
    for (auto [j0, nb] : blocks_of(g.wo, npx_of(g.cr))) {
      Block blk{(i * g.wo + j0) * g.cr, nb, false, plan.taps.size(), 0};
      for (int64_t t = 0; t < g.taps; ++t) {
        const int64_t row = g.sh * i + offsets[2 * t] - pads[0], col = g.sw * j0 + offsets[2 * t + 1] - pads[2];
        if (row < 0 || row >= h) continue;
        const auto [lo, hi] = inside(col, g.sw, nb, w);     // pixel k reads A's column col + sw * k
        if (lo >= hi) continue;
        blk.edge = blk.edge || lo > 0 || hi < nb;
        plan.taps.push_back(Tap{(row * w + col) * g.cp, V + t * g.cr * g.cp, lo, hi});
      }
      blk.nt = plan.taps.size() - blk.t0;
      plan.rows[i].push_back(blk);
    }
  return plan;
}

// Into plan.runs, the runs of one kernel row's taps for block blk of nb pixels: tap q reads x's row `row` from
// column col0 + dc[q] on (dc ascending) with kernel v[q]. A run is taps whose columns are one apart, at most
// RUN_MAX of them; one that reads nothing inside x's width w is left out, and blk.edge set where one reads
// zeros for some of its positions. (thin_conv_runs and transposed_runs.)
void push_runs(Plan& plan, Block& blk, int64_t row, int64_t col0, const std::vector<int64_t>& dc,
               const std::vector<const float*>& v, int nb, int64_t w) {
  for (size_t a = 0; a < dc.size();) {
    size_t e = a + 1;
    while (e < dc.size() && (int)(e - a) < RUN_MAX && dc[e] == dc[e - 1] + 1) ++e;
    Run run{0, (row * w + col0 + dc[a]) * plan.cx, {}, (int)(e - a), 0, 0, row, col0 + dc[a]};
    for (size_t q = a; q < e; ++q) run.v[q - a] = v[q];
    a = e;
    const auto [lo, hi] = inside(run.col, 1, nb + run.len - 1, w);
    if (lo >= hi) continue;
    // its positions: run_npx(nb) - 1 + len, of which nb - 1 + len are needed
    const int m = run_npx(nb) + run.len - 1;
    std::tie(run.mlo, run.mhi) = inside(run.col, 1, m, w);
    blk.edge = blk.edge || run.mlo > RUN_EDGE || run.mhi < m - RUN_EDGE;
    // the zero columns that they need on either side of x where the block reads x padded (16 sums there:
    // runs_run)
    plan.padl = std::max(plan.padl, -run.col);
    plan.padr = std::max(plan.padr, run.col + 16 + run.len - 1 - w);
    plan.runs.push_back(run);
  }
}

// The runs' offsets in x's items padded by (plan.padl, plan.padr) zero columns, once push_runs has found them.
void place_runs(Plan& plan) {
  const int64_t wp = plan.padl + plan.w + plan.padr;
  for (Run& run : plan.runs) run.off = (run.row * wp + run.col + plan.padl) * plan.cx;
}

// thin_conv_plan's function by runs (Run), where the convolution is at stride 1 into one channel from 32, 64 or
// 128 (runs_cx): per block of up to 16 pixels, the taps of each kernel row in runs of neighbouring columns.
Plan thin_conv_runs(const Geometry& g, ffi::Span<const int64_t> offsets, ffi::Span<const int64_t> pads, int64_t h,
                    int64_t w, const float* V) {
  Plan plan = plan_of(h, w, g.cp, g.ho, g.wo, 1, g.cp, 1);
  // the taps by kernel row (its row offset), then column: their column offsets and kernels
  std::map<int64_t, std::pair<std::vector<int64_t>, std::vector<const float*>>> by_row;
  std::vector<std::pair<std::pair<int64_t, int64_t>, int64_t>> order;
  for (int64_t t = 0; t < g.taps; ++t) order.push_back({{offsets[2 * t], offsets[2 * t + 1]}, t});
  std::sort(order.begin(), order.end());
  for (auto [at, t] : order) {
    by_row[at.first].first.push_back(at.second);
    by_row[at.first].second.push_back(V + t * g.cp);
  }
  for (int64_t i = 0; i < g.ho; ++i)
    for (auto [j0, nb] : blocks_of(g.wo, 16)) {
      Block blk{i * g.wo + j0, nb, false, plan.runs.size(), 0};
      for (const auto& [di, taps] : by_row) {
        const int64_t row = i + di - pads[0];
        if (row >= 0 && row < h) push_runs(plan, blk, row, j0 - pads[2], taps.first, taps.second, nb, w);
      }
      blk.nt = plan.runs.size() - blk.t0;
      plan.rows[i].push_back(blk);
    }
  place_runs(plan);
  return plan;
}

ffi::Error ThinConv(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> v, ffi::Result<ffi::Buffer<ffi::F32>> y,
                    ffi::Span<const int64_t> strides, ffi::Span<const int64_t> offsets, ffi::Span<const int64_t> pads,
                    int64_t threads, ffi::ThreadPool pool) {
  auto pd = p.dimensions(), vd = v.dimensions();
  Geometry g;
  if (vd.size() != 3 || !padded_geometry(pd, y->dimensions(), strides, offsets, pads, &g) || g.cp % 16 ||
      g.cr < 1 || g.cr > 4 || vd[0] != g.taps || vd[1] != g.cr || vd[2] != g.cp)
    return ffi::Error::InvalidArgument("zoo_thin_conv: shapes, strides, offsets or pads do not match");
  std::vector<int64_t> rowoff;
  if (!offsets_in_range(g, offsets, &rowoff))
    return ffi::Error::InvalidArgument("zoo_thin_conv: a tap reads outside P");
  const bool runs = g.sh == 1 && g.sw == 1 && g.cr == 1 && runs_cx(g.cp);
  const Plan plan = (runs ? thin_conv_runs : thin_conv_plan)(g, offsets, pads, pd[1], pd[2], v.typed_data());
  return thin_in_parts(pool, plan, g.cr, p.typed_data(), y->typed_data(), g.b * g.ho, threads);
}

// ---- a transposed convolution into 1 to 4 channels, read from x directly (no padding, no phases):
//   y[b, o_h, o_w, c] = sum over taps (i, j) and p of  x[b, u_h, u_w, p] * V[i, j, c, p]
// where o = s * u + lo - i on each axis (lax.conv_transpose's dilated input padded by lo). The output
// pixels of one row and one column parity (o_w = par + s_w * m) meet the same taps, and tap j reads x's
// column m + d_j: blocks of them, x's pixels outside it read as zeros.

// On one axis, the taps i that meet output index o (size n of x, kernel k, stride s, padding lo) where
// o - lo + i is a multiple of s, and (d_i) x's index (o - lo + i) / s; `inside` keeps only those in x.
void axis_taps(int64_t o, int64_t n, int64_t k, int64_t s, int64_t lo, bool inside, std::vector<int64_t>* taps,
               std::vector<int64_t>* at) {
  taps->clear();
  at->clear();
  for (int64_t i = 0; i < k; ++i) {
    const int64_t d = o - lo + i;
    const int64_t q = d >= 0 ? d / s : -((-d + s - 1) / s);   // floor
    if (d - q * s == 0 && (!inside || (q >= 0 && q < n))) {
      taps->push_back(i);
      at->push_back(q);
    }
  }
}

// The plan of a transposed convolution of x (b, h, w, cx) by V (kh, kw, c, cx) into y (b, ho, wo, c).
Plan transposed_plan(int64_t h, int64_t w, int64_t cx, int64_t ho, int64_t wo, int64_t c, int64_t kh, int64_t kw,
                     int64_t sh, int64_t sw, int64_t lo_h, int64_t lo_w, const float* V) {
  Plan plan = plan_of(h, w, cx, ho, wo, c, cx, sw * c);
  std::vector<int64_t> ri, ru, cj, cd;
  for (int64_t oy = 0; oy < ho; ++oy) {
    axis_taps(oy, h, kh, sh, lo_h, true, &ri, &ru);
    for (int64_t par = 0; par < sw && par < wo; ++par) {
      axis_taps(par, w, kw, sw, lo_w, false, &cj, &cd);
      // pixel m of a block from m0 reads x's column cd[q] + m0 + m at tap q (zeros outside x)
      for (auto [m0, nb] : blocks_of((wo - par + sw - 1) / sw, npx_of(c))) {
        Block blk{(oy * wo + par + sw * m0) * c, nb, false, plan.taps.size(), 0};
        for (size_t r = 0; r < ri.size(); ++r)
          for (size_t q = 0; q < cj.size(); ++q) {
            const int64_t u0 = cd[q] + m0;
            const auto [lo, hi] = inside(u0, 1, nb, w);
            if (lo >= hi) continue;
            blk.edge = blk.edge || lo > 0 || hi < nb;
            plan.taps.push_back(Tap{(ru[r] * w + u0) * cx, V + (ri[r] * kw + cj[q]) * c * cx, lo, hi});
          }
        blk.nt = plan.taps.size() - blk.t0;
        plan.rows[oy].push_back(blk);
      }
    }
  }
  return plan;
}

// transposed_plan's function by runs (Run), where the output is one channel and x has 32, 64 or 128 (runs_cx):
// the taps of a kernel row that meet one column parity read x's columns one apart (at stride s, taps s apart),
// so each x vector loaded serves all of them (run_fmas), where taps one at a time load one per multiply-add.
// Blocks of up to 16 pixels of a row's parity; the output's pixels of a block are s apart (plan.ostep).
Plan transposed_runs(int64_t h, int64_t w, int64_t cx, int64_t ho, int64_t wo, int64_t kh, int64_t kw, int64_t sh,
                     int64_t sw, int64_t lo_h, int64_t lo_w, const float* V) {
  Plan plan = plan_of(h, w, cx, ho, wo, 1, cx, sw);
  std::vector<int64_t> ri, ru, cj, cd;
  std::vector<std::vector<const float*>> v;    // per kernel row meeting oy: the kernels of the parity's taps
  for (int64_t oy = 0; oy < ho; ++oy) {
    axis_taps(oy, h, kh, sh, lo_h, true, &ri, &ru);
    for (int64_t par = 0; par < sw && par < wo; ++par) {
      axis_taps(par, w, kw, sw, lo_w, false, &cj, &cd);     // cd ascending with cj
      v.assign(ri.size(), {});
      for (size_t r = 0; r < ri.size(); ++r)
        for (int64_t j : cj) v[r].push_back(V + (ri[r] * kw + j) * cx);
      for (auto [m0, nb] : blocks_of((wo - par + sw - 1) / sw, 16)) {
        Block blk{oy * wo + par + sw * m0, nb, false, plan.runs.size(), 0};
        for (size_t r = 0; r < ri.size(); ++r) push_runs(plan, blk, ru[r], m0, cd, v[r], nb, w);
        blk.nt = plan.runs.size() - blk.t0;
        plan.rows[oy].push_back(blk);
      }
    }
  }
  place_runs(plan);
  return plan;
}

// transposed_runs' function by pairs (pair_fmas), where the stride along a row is 2 and the kernel 4 wide, so that
// each parity meets two taps a column apart, and no block's positions reach further than RUN_EDGE outside x;
// false where it cannot be so.
bool transposed_pairs(int64_t h, int64_t w, int64_t cx, int64_t ho, int64_t wo, int64_t kh, int64_t kw, int64_t sh,
                      int64_t sw, int64_t lo_h, int64_t lo_w, const float* V, Plan* out) {
  if (sw != 2 || kw != 4 || wo < 2) return false;
  Plan plan = plan_of(h, w, cx, ho, wo, 1, cx, 1);
  std::vector<int64_t> ri, ru, cj[2], cd[2];
  for (int par = 0; par < 2; ++par) {
    axis_taps(par, w, kw, sw, lo_w, false, &cj[par], &cd[par]);
    if (cj[par].size() != 2 || cd[par][1] != cd[par][0] + 1) return false;
  }
  const int64_t first = cd[0][0], o1 = cd[1][0] - first;
  if (o1 != 0 && o1 != 1) return false;
  plan.pairs = 1 + (int)o1;
  const int m = PAIR_NPX + 1 + (int)o1;
  for (int64_t oy = 0; oy < ho; ++oy) {
    axis_taps(oy, h, kh, sh, lo_h, true, &ri, &ru);
    for (auto [m0, nb] : blocks_of((wo + 1) / 2, PAIR_NPX)) {
      // outputs 2 m0 on, 2 nb of them but for an odd width's last
      Block blk{oy * wo + 2 * m0, (int)std::min<int64_t>(2 * nb, wo - 2 * m0), false, plan.runs.size(), 0};
      for (size_t r = 0; r < ri.size(); ++r) {
        Run run{0, (ru[r] * w + m0 + first) * cx, {}, 4, 0, 0, ru[r], m0 + first};
        for (int par = 0; par < 2; ++par)
          for (int q = 0; q < 2; ++q) run.v[2 * par + q] = V + (ri[r] * kw + cj[par][q]) * cx;
        std::tie(run.mlo, run.mhi) = inside(run.col, 1, m, w);
        if (run.mlo >= run.mhi) continue;
        if (run.mlo > RUN_EDGE || run.mhi < m - RUN_EDGE) return false;
        plan.runs.push_back(run);
      }
      blk.nt = plan.runs.size() - blk.t0;
      plan.rows[oy].push_back(blk);
    }
  }
  *out = std::move(plan);
  return true;
}

// ---- the same transposed convolutions into one channel (stride 2 along rows, a kernel 4 wide and at most 4 tall),
// where x's rows are at most 16 pixels and y's at most 32 (the VAE's and the DCGAN's last layers, 14 -> 28, and
// their first layers' input gradients), by tap vectors: for each pixel u of a row of x, z_u = sum over c of
// x[u, c] * vt_c, the vector of its 16 taps' products (kernel row i and column j at lane 4 i + j), by
// multiply-adds of a broadcast entry of x into registers that hold 16 channels' vt. No lane sums: the pairs'
// blocks spent as much on them (45 shuffles and adds per 14 outputs) and on their runs' set-up as on their 112
// multiply-adds at 32 channels (perf: 50% of the time in the multiply-adds). Then the row's z transposed (64
// shuffles: lane u of T_t is pixel u's tap t), and each output row's two column parities are sums of two T_t
// shifted by whole pixels (loads at an offset from a zero-padded copy), their lanes interleaved and added into
// y, whose rows each meet two rows of x. A row of 14 pixels at 32 channels: 448 multiply-adds, ~150 other
// vector operations.
constexpr int TV_W = 16, TV_PAD = 16, TV_SLOT = TV_W + 2 * TV_PAD;

struct TapVectors {
  std::vector<float> vt;        // (cx, 16): the kernel of tap (i, j) at 4 i + j, channel c at [16 c + 4 i + j]
  int64_t h, w, cx, ho, wo, kh, sh, lo_h;
  int64_t at[4][2][2];          // kernel row i, column parity p: its two taps' T (at tap j's shift k: lane m + k)
  int64_t xbatch, ybatch;
};

// The 16 x 16 matrix a (row r: a[r]) transposed in place (4 stages of two-vector shuffles)
inline void transpose16(v16* a) {
  v16 t[16];
#pragma GCC unroll 8
  for (int k = 0; k < 16; k += 2) {     // within 128-bit lanes: rows 2k, 2k+1 interleaved
    t[k] = SHUF2(a[k], a[k + 1], 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
    t[k + 1] = SHUF2(a[k], a[k + 1], 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
  }
#pragma GCC unroll 4
  for (int k = 0; k < 16; k += 4) {     // lane L of a[k + q]: column 4 L + q of rows k .. k + 3
    a[k] = SHUF2(t[k], t[k + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
    a[k + 1] = SHUF2(t[k], t[k + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    a[k + 2] = SHUF2(t[k + 1], t[k + 3], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
    a[k + 3] = SHUF2(t[k + 1], t[k + 3], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {         // lanes 0, 1 then 2, 3 of the rows' groups (q, 4 + q) and (8 + q, 12 + q)
    t[q] = SHUF2(a[q], a[4 + q], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    t[4 + q] = SHUF2(a[q], a[4 + q], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    t[8 + q] = SHUF2(a[8 + q], a[12 + q], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    t[12 + q] = SHUF2(a[8 + q], a[12 + q], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {         // column 4 L + q: lane L of each group
    a[q] = SHUF2(t[q], t[8 + q], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    a[4 + q] = SHUF2(t[q], t[8 + q], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    a[8 + q] = SHUF2(t[4 + q], t[12 + q], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    a[12 + q] = SHUF2(t[4 + q], t[12 + q], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
}

// z[u] for the TV_NP pixels of a row from xr (CX channels each, a constant: one pointer for all the pixels, where
// 14 of their own were more than the general registers, kept on the stack), with vt's 16 channels at a time in
// registers: 14 sums and 16 kernel vectors, 30 of the 32 registers
constexpr int TV_NP = 14;
template <int CX>
__attribute__((always_inline)) inline void tap_sums(const float* xr, const float* vt, v16* z) {
  constexpr int NP = TV_NP;
  v16 acc[NP];
#pragma GCC unroll 16
  for (int u = 0; u < NP; ++u) acc[u] = v16{};
#pragma GCC unroll 1
  for (int c0 = 0; c0 < CX; c0 += 16) {
    v16 v[16];
#pragma GCC unroll 16
    for (int c = 0; c < 16; ++c) {
      v[c] = load16(vt + (c0 + c) * 16);
      IN_REGISTER(v[c]);
    }
#pragma GCC unroll 16
    for (int c = 0; c < 16; ++c)
#pragma GCC unroll 16
      for (int u = 0; u < NP; ++u) acc[u] += xr[u * CX + c0 + c] * v[c];
  }
#pragma GCC unroll 16
  for (int u = 0; u < NP; ++u) z[u] = acc[u];
}

// y[k] += v[k] for k < n <= 16
inline void add_into(float* y, v16 v, int n) {
#if defined(__AVX512F__)
  const __mmask16 m = (__mmask16)((1u << n) - 1);
  _mm512_mask_storeu_ps(y, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, y), (__m512)v));
#else
  for (int k = 0; k < n; ++k) y[k] += v[k];
#endif
}

// batch items [b0, b1); x's CX channels (32, 64 or 128)
template <int CX>
void tap_vectors_run(const TapVectors& tv, const float* X, float* Y, int64_t b0, int64_t b1) {
  alignas(64) float tb[16 * TV_SLOT];     // T_t at tb + TV_SLOT t + TV_PAD, zeros either side
  std::fill(tb, tb + 16 * TV_SLOT, 0.0f);
  // blocks of 14 pixels; one of fewer (x's rows of other than 14 or 28 pixels) from a copy (its sums past the
  // block's pixels are the next block's to overwrite, or past the row, zeroed)
  const auto blocks = blocks_of(tv.w, TV_NP);
  std::vector<float> part(TV_NP * CX, 0.0f);
  const int n0 = (int)std::min<int64_t>(tv.wo, 16), n1 = (int)std::max<int64_t>(tv.wo - 16, 0);
  for (int64_t b = b0; b < b1; ++b) {
    const float* Xb = X + b * tv.xbatch;
    float* Yb = Y + b * tv.ybatch;
    zero_floats(Yb, tv.ybatch);
    for (int64_t r = 0; r < tv.h; ++r) {
      // the output rows sh r + lo_h - i that this row of x meets
      const int64_t top = tv.sh * r + tv.lo_h;
      if (top - (tv.kh - 1) >= tv.ho || top < 0) continue;
      // at 32 channels, the next row of x asked for while this one is summed (x streams from memory at 8 FLOP a
      // byte: 1.04-1.08x); at 64 and 128, 56 and 112 lines asked for at once, 0.91-0.92x
      if (CX == 32 && r + 1 < tv.h)
        for (int64_t k = 0; k < tv.w * CX; k += 16) __builtin_prefetch(Xb + (r + 1) * tv.w * CX + k, 0, 3);
      // each block's 14 sums written from its first pixel on, in order (a block's sums past its pixels are the
      // next block's, written after), then those past the row's pixels zeroed (copying a block's sums out
      // instead took a call of memcpy per row)
      v16 z[TV_W + TV_NP];
      for (auto [u0, n] : blocks) {
        const float* xr = Xb + (r * tv.w + u0) * CX;
        if (n < TV_NP) {
          copy_floats(part.data(), xr, n * CX);
          xr = part.data();
        }
        tap_sums<CX>(xr, tv.vt.data(), z + u0);
      }
      for (int64_t u = tv.w; u < TV_W; ++u) z[u] = v16{};
      transpose16(z);
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) store16(tb + TV_SLOT * t + TV_PAD, z[t]);
      for (int64_t i = 0; i < tv.kh; ++i) {
        const int64_t yo = top - i;
        if (yo < 0 || yo >= tv.ho) continue;
        v16 par[2];
        for (int p = 0; p < 2; ++p) par[p] = load16(tb + tv.at[i][p][0]) + load16(tb + tv.at[i][p][1]);
        float* yr = Yb + yo * tv.wo;
        add_into(yr, SHUF2(par[0], par[1], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), n0);
        if (n1) add_into(yr + 16, SHUF2(par[0], par[1], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), n1);
      }
    }
  }
}

// The plan of tap_vectors_run for x (b, h, w, cx) by V (kh, kw, 1, cx) into y (b, ho, wo, 1) at strides (sh, sw),
// paddings lo; false where it is not such a layer.
bool tap_vectors(int64_t h, int64_t w, int64_t cx, int64_t ho, int64_t wo, int64_t kh, int64_t kw, int64_t sh,
                 int64_t sw, int64_t lo_h, int64_t lo_w, const float* V, TapVectors* out) {
  if (sw != 2 || kw != 4 || kh < 1 || kh > 4 || w > TV_W || wo > 2 * TV_W || !runs_cx(cx)) return false;
  TapVectors tv;
  // output column 2 m + p meets tap j (x's column u = (2 m + p - lo_w + j) / 2) where lo_w - j - p is even:
  // lane m of T_j shifted by k = (j + p - lo_w) / 2
  for (int p = 0; p < 2; ++p) {
    int n = 0;
    for (int j = 0; j < 4; ++j) {
      const int64_t d = j + p - lo_w;
      if (d % 2) continue;
      if (d / 2 < -TV_PAD || d / 2 > TV_PAD) return false;
      for (int i = 0; i < 4; ++i) tv.at[i][p][n] = TV_SLOT * (4 * i + j) + TV_PAD + d / 2;
      ++n;
    }
  }
  tv.vt.assign(cx * 16, 0.0f);
  for (int64_t t = 0; t < kh * 4; ++t)
    for (int64_t c = 0; c < cx; ++c) tv.vt[c * 16 + t] = V[t * cx + c];
  tv.h = h, tv.w = w, tv.cx = cx, tv.ho = ho, tv.wo = wo, tv.kh = kh, tv.sh = sh, tv.lo_h = lo_h;
  tv.xbatch = h * w * cx, tv.ybatch = ho * wo;
  *out = std::move(tv);
  return true;
}

ffi::Error ThinTransposed(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> v, ffi::Result<ffi::Buffer<ffi::F32>> y,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads, int64_t threads,
                          ffi::ThreadPool pool) {
  auto xd = x.dimensions(), vd = v.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || vd.size() != 4 || yd.size() != 4 || strides.size() != 2 || pads.size() != 2)
    return ffi::Error::InvalidArgument("zoo_thin_transposed: x, v and y must be 4-D, strides and pads pairs");
  const int64_t c = yd[3];
  if (yd[0] != xd[0] || xd[3] % 16 || c < 1 || c > 4 || vd[2] != c || vd[3] != xd[3] || strides[0] < 1 ||
      strides[1] < 1)
    return ffi::Error::InvalidArgument("zoo_thin_transposed: shapes do not match");
  TapVectors tv;
  if (c == 1 && tap_vectors(xd[1], xd[2], xd[3], yd[1], yd[2], vd[0], vd[1], strides[0], strides[1], pads[0], pads[1],
                            v.typed_data(), &tv)) {
    in_parts(pool, thread_count(threads, xd[0]), xd[0],
             [&](int, int64_t b0, int64_t b1) {
               const float* X = x.typed_data();
               float* Y = y->typed_data();
               tv.cx == 32 ? tap_vectors_run<32>(tv, X, Y, b0, b1)
               : tv.cx == 64 ? tap_vectors_run<64>(tv, X, Y, b0, b1) : tap_vectors_run<128>(tv, X, Y, b0, b1);
             });
    return ffi::Error::Success();
  }
  Plan plan;
  if (c == 1 && runs_cx(xd[3]) &&
      transposed_pairs(xd[1], xd[2], xd[3], yd[1], yd[2], vd[0], vd[1], strides[0], strides[1], pads[0], pads[1],
                       v.typed_data(), &plan))
    return thin_in_parts(pool, plan, c, x.typed_data(), y->typed_data(), xd[0] * yd[1], threads);
  plan = c == 1 && runs_cx(xd[3])
      ? transposed_runs(xd[1], xd[2], xd[3], yd[1], yd[2], vd[0], vd[1], strides[0], strides[1], pads[0], pads[1],
                        v.typed_data())
      : transposed_plan(xd[1], xd[2], xd[3], yd[1], yd[2], c, vd[0], vd[1], strides[0], strides[1], pads[0],
                        pads[1], v.typed_data());
  return thin_in_parts(pool, plan, c, x.typed_data(), y->typed_data(), xd[0] * yd[1], threads);
}

}  // namespace

// Every handler: two float32 operands (ZOO_BIND_EXTRA: and a third, conv_taps' bias), one result, the strides,
// the taps' offsets and P's paddings (or the transposed kernel's paddings), a thread count and XLA's thread pool.
#define ZOO_BIND_EXTRA(EXTRA, ...)                           \
  ffi::Ffi::Bind()                                           \
      .Arg<ffi::Buffer<ffi::F32>>()                          \
      .Arg<ffi::Buffer<ffi::F32>>() EXTRA                    \
      .Ret<ffi::Buffer<ffi::F32>>()                          \
      .Attr<ffi::Span<const int64_t>>("strides") __VA_ARGS__ \
      .Attr<int64_t>("threads")                              \
      .Ctx<ffi::ThreadPool>()
#define ZOO_BIND(...) ZOO_BIND_EXTRA(, __VA_ARGS__)
#define ZOO_TAPS .Attr<ffi::Span<const int64_t>>("offsets").Attr<ffi::Span<const int64_t>>("pads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooConvWeightGrad, WeightGrad, ZOO_BIND(ZOO_TAPS));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooConvTaps, Conv, ZOO_BIND(ZOO_TAPS));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooConvTapsBias, ConvBias, ZOO_BIND_EXTRA(.Arg<ffi::Buffer<ffi::F32>>(), ZOO_TAPS));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooThinConv, ThinConv, ZOO_BIND(ZOO_TAPS));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooThinTransposed, ThinTransposed, ZOO_BIND(.Attr<ffi::Span<const int64_t>>("pads")));
