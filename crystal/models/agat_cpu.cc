// Fused AGAT edge kernels for XLA:CPU (XLA FFI custom calls).
//
// The AGAT layer (crystal/models/gatgnn.py, DeeperGATGNN paper eq. 1) spends
// its time on [E, H·D] edge arrays: u = softplus(xw[receiver] + ew[pair]),
// the per-head attention dots of u, the heads' weighted message sum and
// their gradients. XLA:CPU materialises ~15 such arrays per layer and is
// memory-bound on them. These kernels never materialise one: each walks the
// edges once, rebuilds the row's pre-activation from the node term xw
// [N, H·D] (cache-resident) and the pair term ew [P, H·D], and reduces it
// straight into the small outputs. Each walk splits its rows over XLA:CPU's
// intra-op thread pool (one device using all cores; with one device per
// core the chunks mostly run on the calling thread).
//
// Row t (of E) reads ew row t mod P: P = E / 2 in the paired edge layout
// (both edges of a reverse pair share e·W_e), P = E otherwise. Indices
// outside [0, N) are clamped when read and dropped when scattered to, as
// XLA's gather and scatter do. Math follows noisy_nodes/nn.py's softplus:
// y = max(x, 0) + t·P9(t), sigmoid(x) = (x >= 0 ? 1 : t) / (1 + t), t = e^-|x|.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float kLog1pOverT[10] = {
    1.0f,         -0.4999985f,  0.333291f,     -0.24947809f, 0.19651492f,
    -0.15251452f, 0.105332285f, -0.05643503f, 0.019649167f, -0.0032140363f};

// e^x for x <= 0 (Cody-Waite reduction, degree-6 polynomial, ~1 ulp); the
// scalar code is written so that GCC vectorises the row loops around it.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float k = x * 1.44269504088896341f;
  const float n = (k + 12582912.0f) - 12582912.0f;  // round(k)
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// u = softplus(x) (and s = sigmoid(x) if kSigmoid) for one row of `width`
// values x = xn + xe. Two instantiations so that each loop vectorises.
template <bool kSigmoid>
inline void softplus_row_scalar(const float* __restrict xn,
                                const float* __restrict xe, int64_t width,
                                float* __restrict u, float* __restrict s) {
#pragma GCC ivdep
  for (int64_t j = 0; j < width; ++j) {
    const float x = xn[j] + xe[j];
    const float t = exp_nonpositive(-std::fabs(x));
    float acc = kLog1pOverT[9] * t + kLog1pOverT[8];
    acc = acc * t + kLog1pOverT[7];
    acc = acc * t + kLog1pOverT[6];
    acc = acc * t + kLog1pOverT[5];
    acc = acc * t + kLog1pOverT[4];
    acc = acc * t + kLog1pOverT[3];
    acc = acc * t + kLog1pOverT[2];
    acc = acc * t + kLog1pOverT[1];
    acc = acc * t + kLog1pOverT[0];
    u[j] = std::max(x, 0.0f) + t * acc;
    if constexpr (kSigmoid) s[j] = (x >= 0.0f ? 1.0f : t) / (1.0f + t);
  }
}

#if defined(__AVX512F__)
// The same, 16 lanes at a time: 2^n by vscalefps, 1 / (1 + t) by rcp14 and
// one Newton step (~23 bits; vdivps would cost more than the rest).
template <bool kSigmoid>
inline void softplus_vec(const float* __restrict xn, const float* __restrict xe,
                         float* __restrict u, float* __restrict s) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  const __m512 x = _mm512_add_ps(_mm512_loadu_ps(xn), _mm512_loadu_ps(xe));
  // t = e^-|x|
  const __m512 a = _mm512_max_ps(_mm512_sub_ps(zero, _mm512_abs_ps(x)),
                                 _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(
      _mm512_mul_ps(a, _mm512_set1_ps(1.44269504088896341f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), a);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, one));
  const __m512 t = _mm512_scalef_ps(p, n);
  // u = max(x, 0) + t P9(t)
  __m512 acc = _mm512_fmadd_ps(_mm512_set1_ps(kLog1pOverT[9]), t,
                               _mm512_set1_ps(kLog1pOverT[8]));
  for (int c = 7; c >= 0; --c)
    acc = _mm512_fmadd_ps(acc, t, _mm512_set1_ps(kLog1pOverT[c]));
  _mm512_storeu_ps(u, _mm512_fmadd_ps(t, acc, _mm512_max_ps(x, zero)));
  if constexpr (kSigmoid) {
    const __m512 y = _mm512_add_ps(one, t);
    __m512 inv = _mm512_rcp14_ps(y);
    inv = _mm512_mul_ps(inv, _mm512_fnmadd_ps(y, inv, _mm512_set1_ps(2.0f)));
    const __mmask16 neg = _mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ);
    _mm512_storeu_ps(s, _mm512_mask_mul_ps(inv, neg, inv, t));
  }
}

template <bool kSigmoid>
inline void softplus_row(const float* __restrict xn, const float* __restrict xe,
                         int64_t width, float* __restrict u,
                         float* __restrict s) {
  if (width % 64 != 0) {
    softplus_row_scalar<kSigmoid>(xn, xe, width, u, s);
    return;
  }
  // Four independent vectors per iteration: each is a ~25-deep FMA chain.
  for (int64_t j = 0; j < width; j += 64) {
    softplus_vec<kSigmoid>(xn + j, xe + j, u + j, s + j);
    softplus_vec<kSigmoid>(xn + j + 16, xe + j + 16, u + j + 16, s + j + 16);
    softplus_vec<kSigmoid>(xn + j + 32, xe + j + 32, u + j + 32, s + j + 32);
    softplus_vec<kSigmoid>(xn + j + 48, xe + j + 48, u + j + 48, s + j + 48);
  }
}
#else
template <bool kSigmoid>
inline void softplus_row(const float* __restrict xn, const float* __restrict xe,
                         int64_t width, float* __restrict u,
                         float* __restrict s) {
  softplus_row_scalar<kSigmoid>(xn, xe, width, u, s);
}
#endif

// Σ_c a[c] b[c] over n values.
inline float dot(const float* __restrict a, const float* __restrict b,
                 int64_t n) {
#if defined(__AVX512F__)
  if (n % 16 == 0) {
    __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(b));
    for (int64_t c = 16; c < n; c += 16)
      acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + c), _mm512_loadu_ps(b + c),
                            acc);
    return _mm512_reduce_add_ps(acc);
  }
#endif
  float acc = 0.0f;
  for (int64_t c = 0; c < n; ++c) acc += a[c] * b[c];
  return acc;
}

inline int64_t clamp_index(int32_t i, int64_t n) {
  return std::min<int64_t>(std::max<int64_t>(i, 0), n - 1);
}

inline bool in_range(int32_t i, int64_t n) { return i >= 0 && i < n; }

// Runs body(c) for c in [0, chunks) on the calling thread and XLA:CPU's
// intra-op pool. Chunks are claimed from a counter by whichever thread is
// free, the caller included, so the call never waits on a task that has not
// started (no deadlock when the pool is busy or shared by several devices);
// a task that starts after the last claim exits without touching `body`.
template <typename Body>
void parallel_chunks(ffi::ThreadPool& pool, int64_t chunks, const Body& body) {
  if (chunks <= 1) {
    if (chunks == 1) body(0);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const Body* fn = &body;
  auto work = [state, fn, chunks]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      (*fn)(c);
      if (state->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  for (int64_t i = 1; i < chunks; ++i) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == chunks; });
}

// How many chunks to split `rows` edge rows into: one per pool thread, at
// least 512 rows each, and at most 64 MB of per-chunk [N, width] scatter
// accumulators (chunk 0 writes the output itself).
int64_t num_chunks(ffi::ThreadPool& pool, int64_t rows, int64_t acc_floats) {
  int64_t chunks = std::max<int64_t>(1, pool.num_threads());
  chunks = std::min<int64_t>(chunks, std::max<int64_t>(1, rows / 512));
  if (acc_floats > 0)
    chunks = std::min<int64_t>(
        chunks, 1 + (int64_t{16} << 20) / std::max<int64_t>(1, acc_floats));
  return chunks;
}

// [begin, end) of chunk c of n items.
inline int64_t chunk_begin(int64_t c, int64_t chunks, int64_t n) {
  return n * c / chunks;
}

// Chunk c's zeroed scatter accumulator of `size` floats: the output itself
// for chunk 0, its own buffer in `acc[c]` for the others.
float* chunk_accumulator(int64_t c, float* out, int64_t size,
                         std::vector<std::vector<float>>& acc) {
  if (c == 0) {
    std::fill(out, out + size, 0.0f);
    return out;
  }
  acc[c].assign(size, 0.0f);
  return acc[c].data();
}

// out += Σ over the other chunks' accumulators.
void reduce_into(float* out, const std::vector<std::vector<float>>& acc) {
  for (const auto& a : acc)
    if (!a.empty())
#pragma GCC ivdep
      for (size_t j = 0; j < a.size(); ++j) out[j] += a[j];
}

// An edge block's inputs: xw [N, H·D], ew [P, H·D], E edge rows (E a
// multiple of P) with their receivers and (message) segments.
struct Edges {
  int64_t n, hd, e, p, heads, dim;
  const float* x;
  const float* w;
  const int32_t* rcv;
  const int32_t* seg;

  // u (and sigmoid(pre) into s if kSigmoid) of edge row t.
  template <bool kSigmoid>
  void row(int64_t t, float* u, float* s) const {
    softplus_row<kSigmoid>(x + clamp_index(rcv[t], n) * hd,
                           w + (t % p) * hd, hd, u, s);
  }
};

ffi::Error read_edges(const ffi::Buffer<ffi::F32>& xw,
                      const ffi::Buffer<ffi::F32>& ew,
                      const ffi::Buffer<ffi::S32>& receivers,
                      const int32_t* segments, int64_t heads, Edges* d) {
  auto xd = xw.dimensions();
  auto ed = ew.dimensions();
  if (xd.size() != 2 || ed.size() != 2 || xd[1] != ed[1])
    return ffi::Error::InvalidArgument("agat: want xw [N, HD], ew [P, HD]");
  const int64_t e = receivers.element_count();
  *d = Edges{xd[0], xd[1], e, ed[0], heads, 0, xw.typed_data(),
             ew.typed_data(), receivers.typed_data(), segments};
  if (heads <= 0 || d->hd % heads != 0 || d->p <= 0 || e % d->p != 0 ||
      d->n <= 0)
    return ffi::Error::InvalidArgument(
        "agat: need HD % heads == 0 and E % P == 0");
  d->dim = d->hd / heads;
  return ffi::Error::Success();
}

// Forward 1, the attention dots: both[t, k·H + h] = u[t, h]·att[k, h].
ffi::Error AttentionDotsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xw,
                             ffi::Buffer<ffi::F32> ew,
                             ffi::Buffer<ffi::S32> receivers,
                             ffi::Buffer<ffi::F32> att,
                             ffi::ResultBuffer<ffi::F32> both) {
  Edges d;
  if (auto err = read_edges(xw, ew, receivers, nullptr, att.dimensions()[1],
                            &d);
      !err.success())
    return err;
  const float* a = att.typed_data();
  float* out = both->typed_data();
  const int64_t chunks = num_chunks(pool, d.e, 0);
  parallel_chunks(pool, chunks, [&](int64_t c) {
    std::vector<float> u(d.hd);
    for (int64_t t = chunk_begin(c, chunks, d.e);
         t < chunk_begin(c + 1, chunks, d.e); ++t) {
      d.row<false>(t, u.data(), nullptr);
      float* o = out + t * 2 * d.heads;
      for (int64_t k = 0; k < 2; ++k)
        for (int64_t h = 0; h < d.heads; ++h)
          o[k * d.heads + h] = dot(u.data() + h * d.dim,
                                   a + k * d.hd + h * d.dim, d.dim);
    }
  });
  return ffi::Error::Success();
}

// Forward 2, the messages: out[seg[t]] += Σ_h weight[t, h] u[t, h]
// (out [N, D], zeroed first; rows with seg outside [0, N) are dropped).
ffi::Error MessagesImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xw,
                        ffi::Buffer<ffi::F32> ew,
                        ffi::Buffer<ffi::S32> receivers,
                        ffi::Buffer<ffi::S32> segments,
                        ffi::Buffer<ffi::F32> weight,
                        ffi::ResultBuffer<ffi::F32> out) {
  Edges d;
  if (auto err = read_edges(xw, ew, receivers, segments.typed_data(),
                            weight.dimensions()[1], &d);
      !err.success())
    return err;
  const float* wt = weight.typed_data();
  float* result = out->typed_data();
  const int64_t chunks = num_chunks(pool, d.e, d.n * d.dim);
  std::vector<std::vector<float>> acc(chunks);
  parallel_chunks(pool, chunks, [&](int64_t c) {
    float* o = chunk_accumulator(c, result, d.n * d.dim, acc);
    std::vector<float> u(d.hd);
    for (int64_t t = chunk_begin(c, chunks, d.e);
         t < chunk_begin(c + 1, chunks, d.e); ++t) {
      if (!in_range(d.seg[t], d.n)) continue;
      d.row<false>(t, u.data(), nullptr);
      float* os = o + d.seg[t] * d.dim;
      for (int64_t h = 0; h < d.heads; ++h) {
        const float wh = wt[t * d.heads + h];
        const float* uh = u.data() + h * d.dim;
#pragma GCC ivdep
        for (int64_t j = 0; j < d.dim; ++j) os[j] += wh * uh[j];
      }
    }
  });
  reduce_into(result, acc);
  return ffi::Error::Success();
}

// Gradient of the messages for their weights: d_weight[t, h] =
// u[t, h]·g_out[seg[t]] (0 where seg is outside [0, N)).
ffi::Error MessagesWeightGradImpl(ffi::ThreadPool pool,
                                  ffi::Buffer<ffi::F32> xw,
                                  ffi::Buffer<ffi::F32> ew,
                                  ffi::Buffer<ffi::S32> receivers,
                                  ffi::Buffer<ffi::S32> segments,
                                  ffi::Buffer<ffi::F32> g_out,
                                  ffi::ResultBuffer<ffi::F32> d_weight) {
  Edges d;
  if (auto err = read_edges(xw, ew, receivers, segments.typed_data(),
                            d_weight->dimensions()[1], &d);
      !err.success())
    return err;
  const float* go = g_out.typed_data();
  float* gw = d_weight->typed_data();
  const int64_t chunks = num_chunks(pool, d.e, 0);
  parallel_chunks(pool, chunks, [&](int64_t c) {
    std::vector<float> u(d.hd);
    for (int64_t t = chunk_begin(c, chunks, d.e);
         t < chunk_begin(c + 1, chunks, d.e); ++t) {
      float* out = gw + t * d.heads;
      if (!in_range(d.seg[t], d.n)) {
        std::fill(out, out + d.heads, 0.0f);
        continue;
      }
      d.row<false>(t, u.data(), nullptr);
      const float* g = go + d.seg[t] * d.dim;
      for (int64_t h = 0; h < d.heads; ++h)
        out[h] = dot(u.data() + h * d.dim, g, d.dim);
    }
  });
  return ffi::Error::Success();
}

// The rest of the edge block's gradient, in one walk over the pairs:
//   d u[t, h] = g_both[t, h] att[0, h] + g_both[t, H + h] att[1, h]
//               + weight[t, h] g_out[seg[t]]
//   d pre = d u · sigmoid(pre);  d_xw[receiver] += d pre;
//   d_ew[t mod P] += d pre;  d_att[k, h] += g_both[t, k·H + h] u[t, h].
ffi::Error EdgeBlockGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xw,
                             ffi::Buffer<ffi::F32> ew,
                             ffi::Buffer<ffi::S32> receivers,
                             ffi::Buffer<ffi::S32> segments,
                             ffi::Buffer<ffi::F32> att,
                             ffi::Buffer<ffi::F32> g_both,
                             ffi::Buffer<ffi::F32> weight,
                             ffi::Buffer<ffi::F32> g_out,
                             ffi::ResultBuffer<ffi::F32> d_xw,
                             ffi::ResultBuffer<ffi::F32> d_ew,
                             ffi::ResultBuffer<ffi::F32> d_att) {
  Edges d;
  if (auto err = read_edges(xw, ew, receivers, segments.typed_data(),
                            att.dimensions()[1], &d);
      !err.success())
    return err;
  const float* a0 = att.typed_data();
  const float* a1 = a0 + d.hd;
  const float* gb = g_both.typed_data();
  const float* wt = weight.typed_data();
  const float* go = g_out.typed_data();
  float* dx_out = d_xw->typed_data();
  float* de = d_ew->typed_data();
  float* ga_out = d_att->typed_data();
  const int64_t halves = d.e / d.p;
  // Chunks of pairs: d_ew rows are each chunk's own; d_xw and d_att are
  // accumulated per chunk (chunk 0 into the outputs) and summed at the end.
  const int64_t chunks = num_chunks(pool, d.e, d.n * d.hd);
  std::vector<std::vector<float>> acc_x(chunks), acc_a(chunks);
  parallel_chunks(pool, chunks, [&](int64_t c) {
    float* dx = chunk_accumulator(c, dx_out, d.n * d.hd, acc_x);
    float* ga0 = chunk_accumulator(c, ga_out, 2 * d.hd, acc_a);
    float* ga1 = ga0 + d.hd;
    std::vector<float> u(d.hd), s(d.hd), dpre(d.hd), zero(d.dim, 0.0f);
    for (int64_t p = chunk_begin(c, chunks, d.p);
         p < chunk_begin(c + 1, chunks, d.p); ++p) {  // a pair's rows, d_ew[p]
      float* dep = de + p * d.hd;
      std::fill(dep, dep + d.hd, 0.0f);
      for (int64_t k = 0; k < halves; ++k) {
        const int64_t t = p + k * d.p;
        d.row<true>(t, u.data(), s.data());
        const float* g = in_range(d.seg[t], d.n) ? go + d.seg[t] * d.dim
                                                 : zero.data();
        for (int64_t h = 0; h < d.heads; ++h) {
          const float g0 = gb[t * 2 * d.heads + h];
          const float g1 = gb[t * 2 * d.heads + d.heads + h];
          const float wh = wt[t * d.heads + h];
          const int64_t o = h * d.dim;
          const float* uh = u.data() + o;
          const float* sh = s.data() + o;
          float* dh = dpre.data() + o;
#pragma GCC ivdep
          for (int64_t j = 0; j < d.dim; ++j) {
            dh[j] = (g0 * a0[o + j] + g1 * a1[o + j] + wh * g[j]) * sh[j];
            ga0[o + j] += g0 * uh[j];
            ga1[o + j] += g1 * uh[j];
          }
        }
#pragma GCC ivdep
        for (int64_t j = 0; j < d.hd; ++j) dep[j] += dpre[j];
        if (in_range(d.rcv[t], d.n)) {
          float* dxr = dx + d.rcv[t] * d.hd;
#pragma GCC ivdep
          for (int64_t j = 0; j < d.hd; ++j) dxr[j] += dpre[j];
        }
      }
    }
  });
  reduce_into(dx_out, acc_x);
  reduce_into(ga_out, acc_a);
  return ffi::Error::Success();
}

}  // namespace

#define AGAT_ARG_F32 .Arg<ffi::Buffer<ffi::F32>>()
#define AGAT_ARG_S32 .Arg<ffi::Buffer<ffi::S32>>()
#define AGAT_RET_F32 .Ret<ffi::Buffer<ffi::F32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgatAttentionDots, AttentionDotsImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() AGAT_ARG_F32 AGAT_ARG_F32
                                  AGAT_ARG_S32 AGAT_ARG_F32 AGAT_RET_F32);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgatMessages, MessagesImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() AGAT_ARG_F32 AGAT_ARG_F32
                                  AGAT_ARG_S32 AGAT_ARG_S32 AGAT_ARG_F32
                                      AGAT_RET_F32);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgatMessagesWeightGrad, MessagesWeightGradImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() AGAT_ARG_F32 AGAT_ARG_F32
                                  AGAT_ARG_S32 AGAT_ARG_S32 AGAT_ARG_F32
                                      AGAT_RET_F32);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgatEdgeBlockGrad, EdgeBlockGradImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() AGAT_ARG_F32 AGAT_ARG_F32
                                  AGAT_ARG_S32 AGAT_ARG_S32 AGAT_ARG_F32
                                      AGAT_ARG_F32 AGAT_ARG_F32 AGAT_ARG_F32
                                          AGAT_RET_F32 AGAT_RET_F32
                                              AGAT_RET_F32);
