// The generator's mapping MLP with one hidden layer, and the probabilities' post-processing, forward
// and backward, in float32 (qtrain --compile; built into one library with ry_kernel.cpp by
// qtrain/native_kernel.py, called through ctypes from qtrain/mapping_kernel.py).
//
// Per basis index i = ihi * nlo + ilo (2^n of them):
//   x_i  = (beta tanh(kk p_i)).clamp_min(1e-12)^alpha, minus its mean           (post-processing)
//   h_ij = top[ihi][j] + lowT[j][ilo] + x_i wn[j]       (first Linear on [bits(i), x_i], bias in low)
//   a_ij = act(h_ij)                                     (gelu exact / relu / tanh / none)
//   out_ik = b2[k] + sum_j w2[k][j] a_ij                 (K >= 1; K == 0: out is a itself, (2^n, H))
// The work runs in tiles of T consecutive indices (T = min(64, 2^n)), every hidden unit j of a tile
// as a row of T lanes, so that the activation and the reductions vectorise over i whatever H is.
// Saved for the backward pass, in tile order (tile, j, lane): a and act'(h).
// Transcendentals are branch-free polynomial forms that vectorise: exp and log after Cephes, tanh
// after Cephes' tanhf, erf as in torch's Vectorized<float>::erf (Abramowitz-Stegun 7.1.26, absolute
// error <= 1.5e-7, the form torch's own CPU GELU uses).

#include <cmath>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <algorithm>
#include <cstring>
#include <vector>

namespace {

enum Act { NONE = 0, GELU = 1, RELU = 2, TANH = 3 };

#define INL inline __attribute__((always_inline))

// W float lanes as one GCC vector (W = 16: one AVX-512 register), with int32 lanes of the same size
template <int W>
struct Vec {
  typedef float V __attribute__((vector_size(4 * W)));
  typedef int32_t I __attribute__((vector_size(4 * W)));
};

template <typename V>
INL V ld(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
INL void st(float* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename V>
INL V splat(float f) {
  return V{} + f;
}
template <typename V>
INL float hsum(const V& v) {
  float s = 0;
  for (int i = 0; i < int(sizeof(V) / 4); ++i) s += v[i];
  return s;
}
template <typename V, typename I>
INL V vabs(V x) {
  return (V)((I)x & 0x7fffffff);
}
template <typename V, typename I>
INL V vcopysign(V mag, V sgn) {
  return (V)(((I)mag & 0x7fffffff) | ((I)sgn & int32_t(0x80000000)));
}

// 1 / x: AVX-512's 14-bit estimate and one Newton step (relative error ~1e-8), else a division
template <typename V>
INL V recip(V x) {
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    V r = (V)_mm512_maskz_rcp14_ps(__mmask16(0xffff), (__m512)x);
    return r * (2.0f - x * r);
  }
#endif
  return 1.0f / x;
}

template <typename V>
INL V exp_poly(V x) {  // e^x for |x| <= ln(2) / 2
  const V z = x * x;
  V y = splat<V>(1.9875691500E-4f);
  y = y * x + 1.3981999507E-3f;
  y = y * x + 8.3334519073E-3f;
  y = y * x + 4.1665795894E-2f;
  y = y * x + 1.6666665459E-1f;
  y = y * x + 5.0000001201E-1f;
  return y * z + x + 1.0f;
}

template <typename V, typename I>
INL V exp_v(V x) {
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {  // k = round(x / ln 2), e^x = 2^k e^r by vscalefps (no clamps)
    const __mmask16 all = 0xffff;
    const V k = (V)_mm512_maskz_roundscale_ps(all, (__m512)(x * 1.44269504088896341f),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return (V)_mm512_maskz_scalef_ps(all, (__m512)exp_poly(x - k * 0.693359375f + k * 2.12194440e-4f),
                                     (__m512)k);
  }
#endif
  x = x < -87.33654f ? splat<V>(-87.33654f) : x;
  x = x > 88.72283f ? splat<V>(88.72283f) : x;
  // round x / ln 2 to the nearest integer k by the 1.5 * 2^23 shift: k sits in the low mantissa bits
  const V big = x * 1.44269504088896341f + 12582912.0f;
  const V fx = big - 12582912.0f;
  return exp_poly(x - fx * 0.693359375f + fx * 2.12194440e-4f) * (V)(((I)big - 0x4b400000 + 127) << 23);
}

template <typename V, typename I>
INL V log_v(V x) {  // x > 0, normal
  const I b = (I)x;
  V e = __builtin_convertvector((b >> 23) - 126, V);
  V m = (V)((b & int32_t(0x807fffff)) | 0x3f000000);  // in [0.5, 1)
  const auto small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const V z = m * m;
  V y = splat<V>(7.0376836292E-2f);
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

template <typename V, typename I>
INL V tanh_v(V x) {
  const V ax = vabs<V, I>(x);
  const V z = x * x;
  V p = splat<V>(-5.70498872745E-3f);
  p = p * z + 2.06390887954E-2f;
  p = p * z - 5.37397155531E-2f;
  p = p * z + 1.33314422036E-1f;
  p = p * z - 3.33332819422E-1f;
  const V small = p * z * ax + ax;
  const V large = 1.0f - 2.0f * recip(exp_v<V, I>(2.0f * ax) + 1.0f);
  return vcopysign<V, I>(ax < 0.625f ? small : large, x);
}

// a = act(h), d = act'(h) (used for gelu only: the others' follows from a)
template <int ACT, typename V, typename I>
INL void activate(V h, V& a, V& d) {
  if (ACT == GELU) {
    const V u = vabs<V, I>(h * 0.70710678118654752440f);
    const V t = recip(0.3275911f * u + 1.0f);
    V r = splat<V>(1.061405429f);
    r = r * t - 1.453152027f;
    r = r * t + 1.421413741f;
    r = r * t - 0.284496736f;
    r = r * t + 0.254829592f;
    const V ex = exp_v<V, I>(-u * u);
    const V erfa = 1.0f - r * t * ex;
    const V cdf = 0.5f * (1.0f + vcopysign<V, I>(erfa, h));
    a = h * cdf;
    d = cdf + h * ex * 0.39894228040143267794f;
  } else if (ACT == RELU) {
    a = h > 0.0f ? h : splat<V>(0.0f);
    d = h > 0.0f ? splat<V>(1.0f) : splat<V>(0.0f);
  } else if (ACT == TANH) {
    a = tanh_v<V, I>(h);
    d = 1.0f - a * a;
  } else {
    a = h;
    d = splat<V>(1.0f);
  }
}

struct Shape {
  int64_t N;  // 2^n
  int lob;    // bits of the low index: nlo = 2^lob
  int H, K;
};

// the post-processing: raw x (before the mean) and its slope d x / d p (times 0 where masked), W
// lanes at a time (N a multiple of W); returns the sum of the raw x
template <int W>
double features(const float* p, int64_t N, float kk, float beta, float alpha, float* x, float* slope) {
  typedef typename Vec<W>::V V;
  typedef typename Vec<W>::I I;
  const float scale = alpha * beta * kk;
  double total = 0;
  constexpr int B = 256;
  for (int64_t i0 = 0; i0 < N; i0 += B) {
    const int64_t end = N - i0 < B ? N : i0 + B;
    V part = splat<V>(0.0f);
    for (int64_t i = i0; i < end; i += W) {
      const V t = tanh_v<V, I>(kk * ld<V>(p + i));
      const V xb = beta * t;
      const V xc = xb > 1e-12f ? xb : splat<V>(1e-12f);
      const V v = exp_v<V, I>(alpha * log_v<V, I>(xc));
      st(x + i, v);
      part += v;
      st(slope + i, xb < 1e-12f ? splat<V>(0.0f) : v / xc * (1.0f - t * t) * scale);
    }
    total += hsum(part);
  }
  return total;
}

template <int T, int ACT>
void forward(const Shape& s, const float* top, const float* lowT, const float* wn, const float* w2,
             const float* b2, const float* x, float* A, float* D, float* out) {
  const int H = s.H, K = s.K;
  const int64_t nlo = int64_t(1) << s.lob, mlo = nlo - 1;
  constexpr int W = T < 16 ? T : 16;
  typedef typename Vec<W>::V V;
  typedef typename Vec<W>::I I;
  alignas(64) float base[T], ot[T];
  for (int64_t i0 = 0; i0 < s.N; i0 += T) {
    float* At = A + i0 * H;
    float* Dt = ACT == GELU ? D + i0 * H : nullptr;
    const float* xt = x + i0;
    if (K == 1 && nlo >= T) {  // one output (the common case): every lane through all j in registers
      const float* lo = lowT + (i0 & mlo);
      const float* tp = top + (i0 >> s.lob) * H;
      for (int l = 0; l < T; l += W) {
        const V xv = ld<V>(xt + l);
        V acc = splat<V>(b2[0]);
        for (int j = 0; j < H; ++j) {
          V av, dv;
          activate<ACT, V, I>(ld<V>(lo + j * nlo + l) + tp[j] + xv * wn[j], av, dv);
          st(At + j * T + l, av);
          if (ACT == GELU) st(Dt + j * T + l, dv);
          acc += w2[j] * av;
        }
        st(out + i0 + l, acc);
      }
      continue;
    }
    for (int j = 0; j < H; ++j) {
      const float* bj = base;
      if (nlo >= T) {
        bj = lowT + j * nlo + (i0 & mlo);  // the top part is added below
      } else {
        for (int l = 0; l < T; ++l) {
          const int64_t i = i0 + l;
          base[l] = top[(i >> s.lob) * H + j] + lowT[j * nlo + (i & mlo)];
        }
      }
      const float wj = wn[j], tj = nlo >= T ? top[(i0 >> s.lob) * H + j] : 0.0f;
      float* a = At + j * T;
      float* d = ACT == GELU ? Dt + j * T : nullptr;
      for (int l = 0; l < T; l += W) {
        V av, dv;
        activate<ACT, V, I>(ld<V>(bj + l) + tj + ld<V>(xt + l) * wj, av, dv);
        st(a + l, av);
        if (ACT == GELU) st(d + l, dv);
      }
      if (K == 0)
        for (int l = 0; l < T; ++l) out[(i0 + l) * H + j] = a[l];
    }
    for (int k = 0; k < K; ++k) {
      const float* wk = w2 + int64_t(k) * H;
      for (int l = 0; l < T; ++l) ot[l] = b2[k];
      for (int j = 0; j < H; ++j) {
        const float* a = At + j * T;
        const float wkj = wk[j];
        for (int l = 0; l < T; ++l) ot[l] += wkj * a[l];
      }
      if (K == 1)
        std::memcpy(out + i0, ot, sizeof(ot));
      else
        for (int l = 0; l < T; ++l) out[(i0 + l) * K + k] = ot[l];
    }
  }
}

// gx: d L / d x_i (before the post-processing's backward); the parameter gradients are added to
// gtop, glowT, gwn, gw2, gb2 (zeroed by the caller)
template <int T, int ACT>
void backward(const Shape& s, const float* gout, const float* x, const float* A, const float* D,
              const float* wn, const float* w2, float* gx, float* gtop, float* glowT, float* gwn,
              float* gw2, float* gb2) {
  const int H = s.H, K = s.K;
  const int64_t nlo = int64_t(1) << s.lob, mlo = nlo - 1;
  constexpr int Q = T < 16 ? T : 16;  // lanes of the running sums
  std::vector<float> ga_buf(size_t(H) * T), acc_wn(size_t(H) * Q, 0.0f), acc_w2(size_t(K) * H * Q, 0.0f),
      acc_b2(size_t(K) * Q, 0.0f), dt_buf(size_t(K > 0 ? K : 1) * T);
  float* ga = ga_buf.data();
  if (K == 1 && nlo >= T && T >= 16) {
    // one output: hidden units in blocks of JB, each block's running sums in registers across the
    // tile's lanes
    typedef typename Vec<Q>::V V;
    constexpr int JB = 4;
    alignas(64) float gxt[T];
    for (int64_t i0 = 0; i0 < s.N; i0 += T) {
      const float* At = A + i0 * H;
      const float* Dt = ACT == GELU ? D + i0 * H : nullptr;
      const float* dt = gout + i0;
      const float* xt = x + i0;
      float* lo = glowT + (i0 & mlo);
      float* tp = gtop + (i0 >> s.lob) * H;
      V b2v = ld<V>(acc_b2.data());
      for (int l = 0; l < T; l += Q) {
        b2v += ld<V>(dt + l);
        st(gxt + l, splat<V>(0.0f));
      }
      st(acc_b2.data(), b2v);
      for (int j0 = 0; j0 < H; j0 += JB) {
        const int jn = H - j0 < JB ? H - j0 : JB;
        V aw2[JB], awn[JB], atop[JB];
        for (int u = 0; u < JB; ++u) {
          if (u >= jn) break;
          aw2[u] = ld<V>(acc_w2.data() + (j0 + u) * Q);
          awn[u] = ld<V>(acc_wn.data() + (j0 + u) * Q);
          atop[u] = splat<V>(0.0f);
        }
        for (int l = 0; l < T; l += Q) {
          const V dk = ld<V>(dt + l), xv = ld<V>(xt + l);
          V gxv = ld<V>(gxt + l);
          for (int u = 0; u < JB; ++u) {
            if (u >= jn) break;
            const int j = j0 + u;
            const V a = ld<V>(At + j * T + l);
            aw2[u] += dk * a;
            V g = dk * w2[j];
            if (ACT == GELU)
              g *= ld<V>(Dt + j * T + l);
            else if (ACT == RELU)
              g = a > 0.0f ? g : splat<V>(0.0f);
            else if (ACT == TANH)
              g *= 1.0f - a * a;
            gxv += g * wn[j];
            awn[u] += g * xv;
            atop[u] += g;
            st(lo + j * nlo + l, ld<V>(lo + j * nlo + l) + g);
          }
          st(gxt + l, gxv);
        }
        for (int u = 0; u < JB; ++u) {
          if (u >= jn) break;
          st(acc_w2.data() + (j0 + u) * Q, aw2[u]);
          st(acc_wn.data() + (j0 + u) * Q, awn[u]);
          tp[j0 + u] += hsum(atop[u]);
        }
      }
      std::memcpy(gx + i0, gxt, sizeof(gxt));
    }
  } else {
    float* dt = dt_buf.data();
    alignas(64) float gxt[T];
    for (int64_t i0 = 0; i0 < s.N; i0 += T) {
      const float* At = A + i0 * H;
      const float* Dt = ACT == GELU ? D + i0 * H : nullptr;
      const float* xt = x + i0;
      if (K == 0) {
        for (int j = 0; j < H; ++j)
          for (int l = 0; l < T; ++l) ga[j * T + l] = gout[(i0 + l) * H + j];
      } else {
        if (K == 1)
          std::memcpy(dt, gout + i0, sizeof(float) * T);
        else
          for (int k = 0; k < K; ++k)
            for (int l = 0; l < T; ++l) dt[k * T + l] = gout[(i0 + l) * K + k];
        for (int j = 0; j < H; ++j) {
          float* g = ga + j * T;
          for (int l = 0; l < T; ++l) g[l] = 0.0f;
        }
        for (int k = 0; k < K; ++k) {
          const float* dk = dt + k * T;
          const float* wk = w2 + int64_t(k) * H;
          float* bk = acc_b2.data() + k * Q;
          for (int l0 = 0; l0 < T; l0 += Q)
            for (int q = 0; q < Q; ++q) bk[q] += dk[l0 + q];
          for (int j = 0; j < H; ++j) {
            const float* a = At + j * T;
            float* g = ga + j * T;
            float* wkj = acc_w2.data() + (int64_t(k) * H + j) * Q;
            const float w = wk[j];
            for (int l = 0; l < T; ++l) g[l] += w * dk[l];
            for (int l0 = 0; l0 < T; l0 += Q)
              for (int q = 0; q < Q; ++q) wkj[q] += dk[l0 + q] * a[l0 + q];
          }
        }
      }
      for (int l = 0; l < T; ++l) gxt[l] = 0.0f;
      for (int j = 0; j < H; ++j) {
        float* g = ga + j * T;  // becomes d L / d h
        const float* d = ACT == GELU ? Dt + j * T : nullptr;
        const float* a = At + j * T;
        const float wj = wn[j];
        float* aw = acc_wn.data() + j * Q;
        for (int l = 0; l < T; ++l) {  // act'(h): saved for gelu, else from a
          if (ACT == GELU)
            g[l] *= d[l];
          else if (ACT == RELU)
            g[l] = a[l] > 0.0f ? g[l] : 0.0f;
          else if (ACT == TANH)
            g[l] *= 1.0f - a[l] * a[l];
          gxt[l] += g[l] * wj;
        }
        for (int l0 = 0; l0 < T; l0 += Q)
          for (int q = 0; q < Q; ++q) aw[q] += g[l0 + q] * xt[l0 + q];
        if (nlo >= T) {
          float* lj = glowT + j * nlo + (i0 & mlo);
          for (int l = 0; l < T; ++l) lj[l] += g[l];
          alignas(64) float sum[Q] = {};
          for (int l0 = 0; l0 < T; l0 += Q)
            for (int q = 0; q < Q; ++q) sum[q] += g[l0 + q];
          float total = 0.0f;
          for (int q = 0; q < Q; ++q) total += sum[q];
          gtop[(i0 >> s.lob) * H + j] += total;
        } else {
          for (int l = 0; l < T; ++l) {
            const int64_t i = i0 + l;
            gtop[(i >> s.lob) * H + j] += g[l];
            glowT[j * nlo + (i & mlo)] += g[l];
          }
        }
      }
      std::memcpy(gx + i0, gxt, sizeof(gxt));
    }
  }
  auto reduce = [](const float* v) {
    double t = 0;
    for (int q = 0; q < Q; ++q) t += v[q];
    return float(t);
  };
  for (int j = 0; j < H; ++j) gwn[j] = reduce(acc_wn.data() + j * Q);
  for (int k = 0; k < K; ++k) {
    gb2[k] = reduce(acc_b2.data() + k * Q);
    for (int j = 0; j < H; ++j) gw2[k * H + j] = reduce(acc_w2.data() + (int64_t(k) * H + j) * Q);
  }
}

template <int ACT>
void backward_tile(const Shape& s, const float* gout, const float* x, const float* A, const float* D,
                   const float* wn, const float* w2, float* gx, float* gtop, float* glowT, float* gwn,
                   float* gw2, float* gb2) {
  switch (s.N >= 64 ? 64 : int(s.N)) {
    case 64: backward<64, ACT>(s, gout, x, A, D, wn, w2, gx, gtop, glowT, gwn, gw2, gb2); break;
    case 32: backward<32, ACT>(s, gout, x, A, D, wn, w2, gx, gtop, glowT, gwn, gw2, gb2); break;
    case 16: backward<16, ACT>(s, gout, x, A, D, wn, w2, gx, gtop, glowT, gwn, gw2, gb2); break;
    case 8: backward<8, ACT>(s, gout, x, A, D, wn, w2, gx, gtop, glowT, gwn, gw2, gb2); break;
    default: backward<4, ACT>(s, gout, x, A, D, wn, w2, gx, gtop, glowT, gwn, gw2, gb2); break;
  }
}

template <int T>
void forward_act(int act, const Shape& s, const float* top, const float* lowT, const float* wn,
                 const float* w2, const float* b2, const float* x, float* A, float* D, float* out) {
  switch (act) {
    case GELU: forward<T, GELU>(s, top, lowT, wn, w2, b2, x, A, D, out); break;
    case RELU: forward<T, RELU>(s, top, lowT, wn, w2, b2, x, A, D, out); break;
    case TANH: forward<T, TANH>(s, top, lowT, wn, w2, b2, x, A, D, out); break;
    default: forward<T, NONE>(s, top, lowT, wn, w2, b2, x, A, D, out); break;
  }
}


// the first layer's bits parts: top (2^hi, H) and lowT (H, 2^lob), its bias in lowT; w1 (H, n + 1)
void bit_parts(int n, int lob, int H, const float* w1, const float* b1, float* top, float* lowT) {
  const int hi = n - lob;
  const int64_t nhi = int64_t(1) << hi, nlo = int64_t(1) << lob;
  for (int64_t r = 0; r < nhi; ++r)
    for (int j = 0; j < H; ++j) {
      double t = 0;
      for (int b = 0; b < hi; ++b) {
        const float w = w1[j * (n + 1) + b];
        t += ((r >> (hi - 1 - b)) & 1) ? w : -w;
      }
      top[r * H + j] = float(t);
    }
  for (int j = 0; j < H; ++j)
    for (int64_t r = 0; r < nlo; ++r) {
      double t = b1[j];
      for (int b = 0; b < lob; ++b) {
        const float w = w1[j * (n + 1) + hi + b];
        t += ((r >> (lob - 1 - b)) & 1) ? w : -w;
      }
      lowT[j * nlo + r] = float(t);
    }
}

int log2_of(int64_t N) {
  int n = 0;
  while ((int64_t(1) << n) < N) ++n;
  return n;
}

// sum of a (times b when given), in float lanes over chunks of 1024, the chunks added in double
double dsum(const float* a, const float* b, int64_t n) {
  typedef Vec<16>::V V;
  double total = 0;
  int64_t i = 0;
  while (i + 16 <= n) {
    const int64_t end = n - i > 1024 ? i + 1024 : n;
    V acc = splat<V>(0.0f);
    if (b)
      for (; i + 16 <= end; i += 16) acc += ld<V>(a + i) * ld<V>(b + i);
    else
      for (; i + 16 <= end; i += 16) acc += ld<V>(a + i);
    total += hsum(acc);
  }
  for (; i < n; ++i) total += b ? double(a[i]) * b[i] : a[i];
  return total;
}

// dst = src - mean; returns the sum of dst^2 (float lanes over chunks of 1024, added in double)
double centre(const float* src, float mean, float* dst, int64_t n) {
  typedef Vec<16>::V V;
  double total = 0;
  int64_t i = 0;
  while (i + 16 <= n) {
    const int64_t end = n - i > 1024 ? i + 1024 : n;
    V acc = splat<V>(0.0f);
    for (; i + 16 <= end; i += 16) {
      const V c = ld<V>(src + i) - mean;
      st(dst + i, c);
      acc += c * c;
    }
    total += hsum(acc);
  }
  for (; i < n; ++i) {
    dst[i] = src[i] - mean;
    total += double(dst[i]) * dst[i];
  }
  return total;
}

// the sums of a and of a * b in one pass
void dsum2(const float* a, const float* b, int64_t n, double& sa, double& sab) {
  typedef Vec<16>::V V;
  sa = sab = 0;
  int64_t i = 0;
  while (i + 16 <= n) {
    const int64_t end = n - i > 1024 ? i + 1024 : n;
    V acc = splat<V>(0.0f), accb = splat<V>(0.0f);
    for (; i + 16 <= end; i += 16) {
      const V v = ld<V>(a + i);
      acc += v;
      accb += v * ld<V>(b + i);
    }
    sa += hsum(acc);
    sab += hsum(accb);
  }
  for (; i < n; ++i) {
    sa += a[i];
    sab += double(a[i]) * b[i];
  }
}

}  // namespace

// p (N = 2^n >= 4): probabilities; w1 (H, n + 1), b1 (H): the first layer, its low lob inputs the
// low bits; w2 (K, H), b2 (K) (unused when K == 0). Writes x (N, post-processed), slope (N, its
// d/dp), A and D (N * H each, tile order; D for gelu only) and out ((N, K), or (N, H) when K == 0).
//
// Only the first `rows` basis states (a multiple of min(64, N), at most N) are mapped: the caller uses
// no output beyond the M generated weights. The rest of out is zeroed, and map_backward takes gout as
// zero there (exactly what it is: the standardisation's gradient stops at M).
extern "C" void map_forward(const float* p, int64_t N, int64_t rows, int lob, int H, int K, int act, float kk,
                            float beta, float alpha, const float* w1, const float* b1, const float* w2,
                            const float* b2, float* x, float* slope, float* A, float* D, float* out) {
  const int n = log2_of(N);
  std::vector<float> top(size_t(N >> lob) * H), lowT(size_t(H) << lob), wn(H);
  bit_parts(n, lob, H, w1, b1, top.data(), lowT.data());
  for (int j = 0; j < H; ++j) wn[j] = w1[j * (n + 1) + n];
  const double total = N >= 16 ? features<16>(p, N, kk, beta, alpha, x, slope)
                                : features<4>(p, N, kk, beta, alpha, x, slope);
  const float mean = float(total / double(N));
  for (int64_t i = 0; i < N; ++i) x[i] -= mean;
  const Shape s{rows, lob, H, K};
  const float *tp = top.data(), *lp = lowT.data(), *wp = wn.data();
  const int64_t width = K ? K : H;
  std::memset(out + rows * width, 0, sizeof(float) * (N - rows) * width);
  switch (N >= 64 ? 64 : int(N)) {
    case 64: forward_act<64>(act, s, tp, lp, wp, w2, b2, x, A, D, out); break;
    case 32: forward_act<32>(act, s, tp, lp, wp, w2, b2, x, A, D, out); break;
    case 16: forward_act<16>(act, s, tp, lp, wp, w2, b2, x, A, D, out); break;
    case 8: forward_act<8>(act, s, tp, lp, wp, w2, b2, x, A, D, out); break;
    default: forward_act<4>(act, s, tp, lp, wp, w2, b2, x, A, D, out); break;
  }
}

// gout: (N, K), or (N, H) when K == 0, read for the first `rows` states only (zero beyond). Writes
// gp (N), gw1 (H, n + 1), gb1 (H), gw2 (K, H), gb2 (K).
extern "C" void map_backward(const float* gout, int64_t N, int64_t rows, int lob, int H, int K, int act,
                             const float* x,
                             const float* slope, const float* A, const float* D, const float* w1,
                             const float* w2, float* gp, float* gw1, float* gb1, float* gw2, float* gb2) {
  const int n = log2_of(N), hi = n - lob;
  const int64_t nhi = N >> lob, nlo = int64_t(1) << lob;
  std::vector<float> gtop(size_t(nhi) * H, 0.0f), glowT(size_t(H) * nlo, 0.0f), wn(H), gwn(H);
  for (int j = 0; j < H; ++j) wn[j] = w1[j * (n + 1) + n];
  const Shape s{rows, lob, H, K};
  float *gt = gtop.data(), *gl = glowT.data(), *gn = gwn.data();
  std::memset(gp + rows, 0, sizeof(float) * (N - rows));
  const float* wp = wn.data();
  switch (act) {
    case GELU: backward_tile<GELU>(s, gout, x, A, D, wp, w2, gp, gt, gl, gn, gw2, gb2); break;
    case RELU: backward_tile<RELU>(s, gout, x, A, D, wp, w2, gp, gt, gl, gn, gw2, gb2); break;
    case TANH: backward_tile<TANH>(s, gout, x, A, D, wp, w2, gp, gt, gl, gn, gw2, gb2); break;
    default: backward_tile<NONE>(s, gout, x, A, D, wp, w2, gp, gt, gl, gn, gw2, gb2); break;
  }
  // the bit columns: sums of +-gtop over the high rows and of +-glowT over the low ones, in double,
  // with independent sums per hidden unit j (no long chains of dependent additions)
  std::vector<double> acc(size_t(n + 2) * H, 0.0);  // rows: the n bits, then the bias
  for (int64_t r = 0; r < nhi; ++r) {
    const float* gr = gt + r * H;
    for (int b = 0; b < hi; ++b) {
      double* ab = acc.data() + size_t(b) * H;
      if ((r >> (hi - 1 - b)) & 1)
        for (int j = 0; j < H; ++j) ab[j] += gr[j];
      else
        for (int j = 0; j < H; ++j) ab[j] -= gr[j];
    }
  }
  double* bias = acc.data() + size_t(n + 1) * H;
  for (int64_t r = 0; r < nlo; ++r) {
    for (int j = 0; j < H; ++j) bias[j] += gl[j * nlo + r];
    for (int b = 0; b < lob; ++b) {
      double* ab = acc.data() + size_t(hi + b) * H;
      if ((r >> (lob - 1 - b)) & 1)
        for (int j = 0; j < H; ++j) ab[j] += gl[j * nlo + r];
      else
        for (int j = 0; j < H; ++j) ab[j] -= gl[j * nlo + r];
    }
  }
  for (int j = 0; j < H; ++j) {
    float* row = gw1 + j * (n + 1);
    for (int b = 0; b < n; ++b) row[b] = float(acc[size_t(b) * H + j]);
    row[n] = gwn[j];
    gb1[j] = float(bias[j]);
  }
  const float mean = float(dsum(gp, nullptr, N) / double(N));
  for (int64_t i = 0; i < N; ++i) gp[i] = (gp[i] - mean) * slope[i];
}

// Standardisation per generated tensor t (segments of flat, lengths numels, T of them):
// out = (w - mean_t) / std_t * ref_t gain_t + ref_t shift_t; saves centred and istd (T).
namespace {

// std_forward with the output of segment t at out[t]
void std_forward_segments(const float* flat, int T, const int64_t* numels, const float* ref, const float* gain,
                          const float* shift, float* centred, float* istd, float* const* out) {
  int64_t o = 0;
  for (int t = 0; t < T; ++t) {
    const int64_t m = numels[t];
    const float mean = float(dsum(flat + o, nullptr, m) / double(m));
    const float var = float(centre(flat + o, mean, centred + o, m) / double(m));
    istd[t] = 1.0f / std::sqrt(var + 1e-12f);
    const float scale = ref[t] * gain[t] * istd[t], off = ref[t] * shift[t];
    const float* c = centred + o;
    float* y = out[t];
    for (int64_t i = 0; i < m; ++i) y[i] = c[i] * scale + off;
    o += m;
  }
}

}  // namespace

extern "C" void std_forward(const float* flat, int T, const int64_t* numels, const float* ref,
                            const float* gain, const float* shift, float* centred, float* istd, float* out) {
  std::vector<float*> seg(T);
  int64_t o = 0;
  for (int t = 0; t < T; o += numels[t], ++t) seg[t] = out + o;
  std_forward_segments(flat, T, numels, ref, gain, shift, centred, istd, seg.data());
}

// gflat (length >= sum numels: the rest zeroed), ggain, gshift (T)
namespace {

// std_backward with the gradient of segment t at seg[t] (contiguous per segment, not across them)
void std_backward_segments(const float* const* seg, int T, const int64_t* numels, int64_t length,
                           const float* centred, const float* istd, const float* ref, const float* gain,
                           float* gflat, float* ggain, float* gshift) {
  int64_t o = 0;
  for (int t = 0; t < T; ++t) {
    const int64_t m = numels[t];
    const float* g = seg[t];
    const float* c = centred + o;
    float* gf = gflat + o;
    double s1, s2;
    dsum2(g, c, m, s1, s2);
    const float scale = ref[t] * gain[t] * istd[t];
    const float k1 = float(-scale * s1 / double(m)), k2 = float(-scale * istd[t] * istd[t] * s2 / double(m));
    for (int64_t i = 0; i < m; ++i) gf[i] = g[i] * scale + c[i] * k2 + k1;
    ggain[t] = float(ref[t] * s2 * istd[t]);
    gshift[t] = float(ref[t] * s1);
    o += m;
  }
  for (int64_t i = o; i < length; ++i) gflat[i] = 0.0f;
}

}  // namespace

extern "C" void std_backward(const float* grad, int T, const int64_t* numels, int64_t length,
                             const float* centred, const float* istd, const float* ref, const float* gain,
                             float* gflat, float* ggain, float* gshift) {
  std::vector<const float*> seg(T);
  int64_t o = 0;
  for (int t = 0; t < T; o += numels[t], ++t) seg[t] = grad + o;
  std_backward_segments(seg.data(), T, numels, length, centred, istd, ref, gain, gflat, ggain, gshift);
}

// ---------------------------------------------------------------------------------------------------
// The whole generator in one call each way (qtrain/generator_kernel.py): the ry circuit of
// ry_kernel.cpp, then map_forward and std_forward above; backward in reverse. One call instead of
// three, and no tensors between them: at ~0.3 ms of kernel work per step, the Python and torch
// calls around separate kernels cost as much as a third of it.

extern "C" {
void ry_forward_ff(const float*, int64_t, int, int, float*, int, float*, int);
void ry_forward_df(const double*, int64_t, int, int, double*, int, float*, int);
void ry_backward_ff(const float*, int64_t, int, int, const float*, int, const float*, double*, int);
void ry_backward_df(const double*, int64_t, int, int, const double*, int, const float*, double*, int);
}

struct GenShape {  // what both directions share
  int L, n, exact, stored;  // the circuit: blocks, qubits, float64 (else float32), block states kept
  int64_t rows;             // the mapping: states mapped, low-index bits, hidden width, outputs, act
  int lob, H, K, act;
  int T;                    // the standardisation: tensors, their sizes
  const int64_t* numels;
};

// angles (L n) float32; states: (L or 1) 2^n in the circuit's precision; work: probs, x, slope (2^n
// each), A and D (2^n H each), mapped (2^n K), centred (M), istd (T); out[t]: weight tensor t
extern "C" void gen_forward(const GenShape* g, const float* angles, void* states, float* probs, float kk,
                            float beta, float alpha, const float* w1, const float* b1, const float* w2,
                            const float* b2, float* x, float* slope, float* A, float* D, float* mapped,
                            const float* ref, const float* gain, const float* shift, float* centred,
                            float* istd, float* const* out) {
  const int64_t N = int64_t(1) << g->n;
  if (g->exact) {
    std::vector<double> th(angles, angles + g->L * g->n);
    ry_forward_df(th.data(), 1, g->L, g->n, static_cast<double*>(states), g->stored, probs, 1);
  } else {
    ry_forward_ff(angles, 1, g->L, g->n, static_cast<float*>(states), g->stored, probs, 1);
  }
  map_forward(probs, N, g->rows, g->lob, g->H, g->K, g->act, kk, beta, alpha, w1, b1, w2, b2, x, slope, A, D,
              mapped);
  std_forward_segments(mapped, g->T, g->numels, ref, gain, shift, centred, istd, out);
}

// seg[t]: the gradient of weight tensor t. Writes the gradients of the mapping (gw1, gb1, gw2, gb2),
// the scaling (ggain, gshift) and, when gangles is given, the angles; gflat (2^n K), gp (2^n) and
// gdouble (L n) are work space.
extern "C" void gen_backward(const GenShape* g, const float* const* seg, const float* angles, const void* states,
                             const float* x, const float* slope, const float* A, const float* D,
                             const float* w1, const float* w2, const float* ref, const float* gain,
                             const float* centred, const float* istd, float* gflat, float* gp, double* gdouble,
                             float* gw1, float* gb1, float* gw2, float* gb2, float* ggain, float* gshift,
                             float* gangles) {
  const int64_t N = int64_t(1) << g->n;
  std_backward_segments(seg, g->T, g->numels, N * g->K, centred, istd, ref, gain, gflat, ggain, gshift);
  map_backward(gflat, N, g->rows, g->lob, g->H, g->K, g->act, x, slope, A, D, w1, w2, gp, gw1, gb1, gw2, gb2);
  if (!gangles) return;
  const int P = g->L * g->n;
  if (g->exact) {
    std::vector<double> th(angles, angles + P);
    ry_backward_df(th.data(), 1, g->L, g->n, static_cast<const double*>(states), g->stored, gp, gdouble, 1);
  } else {
    ry_backward_ff(angles, 1, g->L, g->n, static_cast<const float*>(states), g->stored, gp, gdouble, 1);
  }
  for (int i = 0; i < P; ++i) gangles[i] = float(gdouble[i]);
}
