// The ry circuit's probabilities and their adjoint gradient on real state vectors (qtrain --compile).
//
// Plain C++ with no torch headers (it builds in about a second); qtrain/native_kernel.py builds it
// with one compiler call and calls the extern "C" entry points below through ctypes.
//
// Circuit: n qubits from |0...0>; per block an RY on every qubit, then the CNOT ring (0,1), (1,2),
// ..., (n-1,0). Qubit q is bit position p = n-1-q of the basis index.
// - The ring is the permutation after[j] = before[src(j)], src(j) = gray(j) ^ (j odd ? 3 << (n-2) : 0),
//   and its inverse before[i] = after[dst(i)], dst(i) = g ^ ((g & 1) << (n-1)), g = inverse gray(i).
// - Block 0 acts on |0...0>: its state is the product of (cos, sin) of every qubit.
// - A rotation layer: gates with a stride below the SIMD width are applied inside registers (a
//   permute), wider ones as pairs of vectors. States that outgrow the L1/L2-sized tile are done in
//   two kinds of passes: contiguous tiles for the low bit positions, then for the high ones the rows
//   of a column chunk copied to a small buffer (no power-of-two strides on the cache).
// - Gradient (adjoint): all RYs of a layer commute with each other and with their generators, so
//   dL/dtheta_q = sum_pairs (lam_b psi_a - lam_a psi_b) can be taken anywhere inside the layer as
//   long as psi and lam have the same gates applied (lam = psi * dL/dp: the 2 of dL/dpsi and the
//   1/2 of the generator cancel). With every block's state stored by the forward pass (small
//   states: qtrain/native_kernel.py's STORE_BYTES) it is one read-only sweep per layer, then lam
//   alone goes back through the layer and the ring; otherwise psi is un-computed, the gradient
//   accumulated in the same sweep that un-applies each gate on both.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
  static constexpr int W = 16, LW = 4;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t I __attribute__((vector_size(64)));
  static constexpr int W = 8, LW = 3;
};

template <typename V, typename T>
inline V ld(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename T, typename V>
inline void st(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename T>
inline typename Simd<T>::V shuf(const typename Simd<T>::V& v, const typename Simd<T>::I& m) {
#if defined(__clang__)
  typename Simd<T>::V r;
  for (int i = 0; i < Simd<T>::W; ++i) r[i] = v[m[i]];
  return r;
#else
  return __builtin_shuffle(v, m);
#endif
}

template <typename T>
inline T hsum(const typename Simd<T>::V& v) {
  T s = 0;
  for (int i = 0; i < Simd<T>::W; ++i) s += v[i];
  return s;
}

// tuning (measured on a 2 MB L2): states up to 2^tile_bits elements are swept whole, one gate at
// a time (they stay in L2 with their gradient); larger ones in tiles of that size, then groups of
// at most g_group_bits high positions
int g_tile_bits[2] = {16, 15};  // float, double
int g_group_bits = 6;

enum Mode { FWD = 0, BWD = 1, GRAD = 2 };

// One sweep per gate over a small buffer (in cache). Positions: local bit of each gate k, with its
// cos c[k], sin s[k]; gradient accumulated into g[k] (BWD, GRAD). FWD rotates x, BWD un-rotates x
// and l, GRAD only accumulates.
template <typename T, int MODE>
void process(T* __restrict__ x, T* __restrict__ l, int64_t len, int count, const int* pos, const T* c,
             const T* s, double* g) {
  typedef typename Simd<T>::V V;
  typedef typename Simd<T>::I I;
  constexpr int W = Simd<T>::W, LW = Simd<T>::LW;
  if (len < W) {  // tiny states: scalar
    for (int k = 0; k < count; ++k) {
      const int64_t S = int64_t(1) << pos[k];
      const T ck = c[k], sk = s[k];
      double acc = 0;
      for (int64_t base = 0; base < len; base += 2 * S)
        for (int64_t j = base; j < base + S; ++j) {
          const T xa = x[j], xb = x[j + S];
          if (MODE == FWD) {
            x[j] = ck * xa - sk * xb;
            x[j + S] = sk * xa + ck * xb;
          } else {
            const T la = l[j], lb = l[j + S];
            acc += double(lb * xa - la * xb);
            if (MODE == BWD) {
              x[j] = ck * xa + sk * xb;
              x[j + S] = ck * xb - sk * xa;
              l[j] = ck * la + sk * lb;
              l[j + S] = ck * lb - sk * la;
            }
          }
        }
      if (MODE != FWD) g[k] += acc;
    }
    return;
  }
  // gates inside a vector: one sweep for all of them
  int inner[LW], nin = 0;
  for (int k = 0; k < count; ++k)
    if (pos[k] < LW) inner[nin++] = k;
  if (nin) {
    I mask[LW];
    V sg[LW], cv[LW], sv[LW], acc[LW];
    for (int i = 0; i < nin; ++i) {
      const int k = inner[i], S = 1 << pos[k];
      for (int e = 0; e < W; ++e) {
        mask[i][e] = e ^ S;
        sg[i][e] = (e & S) ? T(1) : T(-1);
      }
      cv[i] = V{} + c[k];
      sv[i] = sg[i] * s[k];  // +-s: FWD adds it, BWD subtracts it
      acc[i] = V{};
    }
    for (int64_t j = 0; j < len; j += W) {
      V xv = ld<V>(x + j);
      if (MODE == FWD) {
        for (int i = 0; i < nin; ++i) xv = cv[i] * xv + sv[i] * shuf<T>(xv, mask[i]);
        st(x + j, xv);
      } else {
        V lv = ld<V>(l + j);
        for (int i = 0; i < nin; ++i) {
          const V xs = shuf<T>(xv, mask[i]);
          acc[i] += sg[i] * lv * xs;
          if (MODE == BWD) {
            const V ls = shuf<T>(lv, mask[i]);
            xv = cv[i] * xv - sv[i] * xs;
            lv = cv[i] * lv - sv[i] * ls;
          }
        }
        if (MODE == BWD) {
          st(x + j, xv);
          st(l + j, lv);
        }
      }
    }
    if (MODE != FWD)
      for (int i = 0; i < nin; ++i) g[inner[i]] += double(hsum<T>(acc[i]));
  }
  // wider gates: pairs of vectors, two gates per sweep where possible (four vectors)
  int wide[64], nw = 0;
  for (int k = 0; k < count; ++k)
    if (pos[k] >= LW) wide[nw++] = k;
  int i = 0;
  for (; i + 1 < nw; i += 2) {
    const int k1 = wide[i], k2 = wide[i + 1];
    const int64_t S1 = int64_t(1) << pos[k1], S2 = int64_t(1) << pos[k2];
    const int64_t lo = S1 < S2 ? S1 : S2, hi = S1 < S2 ? S2 : S1;
    const V c1 = V{} + c[k1], s1 = V{} + s[k1], c2 = V{} + c[k2], s2 = V{} + s[k2];
    V a1 = V{}, a2 = V{};
    for (int64_t bh = 0; bh < len; bh += 2 * hi)
      for (int64_t bl = bh; bl < bh + hi; bl += 2 * lo)
        for (int64_t j = bl; j < bl + lo; j += W) {
          T* p0 = x + j;
          V x00 = ld<V>(p0), x01 = ld<V>(p0 + S2), x10 = ld<V>(p0 + S1), x11 = ld<V>(p0 + S1 + S2);
          if (MODE == FWD) {
            // gate 1 (stride S1) on pairs (x00, x10), (x01, x11); then gate 2 on (x00, x01), (x10, x11)
            V t00 = c1 * x00 - s1 * x10, t10 = s1 * x00 + c1 * x10;
            V t01 = c1 * x01 - s1 * x11, t11 = s1 * x01 + c1 * x11;
            st(p0, c2 * t00 - s2 * t01);
            st(p0 + S2, s2 * t00 + c2 * t01);
            st(p0 + S1, c2 * t10 - s2 * t11);
            st(p0 + S1 + S2, s2 * t10 + c2 * t11);
          } else {
            T* q0 = l + j;
            V l00 = ld<V>(q0), l01 = ld<V>(q0 + S2), l10 = ld<V>(q0 + S1), l11 = ld<V>(q0 + S1 + S2);
            a1 += l10 * x00 - l00 * x10 + l11 * x01 - l01 * x11;
            a2 += l01 * x00 - l00 * x01 + l11 * x10 - l10 * x11;
            if (MODE == BWD) {
              V t00 = c1 * x00 + s1 * x10, t10 = c1 * x10 - s1 * x00;
              V t01 = c1 * x01 + s1 * x11, t11 = c1 * x11 - s1 * x01;
              st(p0, c2 * t00 + s2 * t01);
              st(p0 + S2, c2 * t01 - s2 * t00);
              st(p0 + S1, c2 * t10 + s2 * t11);
              st(p0 + S1 + S2, c2 * t11 - s2 * t10);
              V u00 = c1 * l00 + s1 * l10, u10 = c1 * l10 - s1 * l00;
              V u01 = c1 * l01 + s1 * l11, u11 = c1 * l11 - s1 * l01;
              st(q0, c2 * u00 + s2 * u01);
              st(q0 + S2, c2 * u01 - s2 * u00);
              st(q0 + S1, c2 * u10 + s2 * u11);
              st(q0 + S1 + S2, c2 * u11 - s2 * u10);
            }
          }
        }
    if (MODE != FWD) {
      g[k1] += double(hsum<T>(a1));
      g[k2] += double(hsum<T>(a2));
    }
  }
  for (; i < nw; ++i) {
    const int k = wide[i];
    const int64_t S = int64_t(1) << pos[k];
    const V cv = V{} + c[k], sv = V{} + s[k];
    V acc = V{};
    for (int64_t base = 0; base < len; base += 2 * S)
      for (int64_t j = base; j < base + S; j += W) {
        const V xa = ld<V>(x + j), xb = ld<V>(x + j + S);
        if (MODE == FWD) {
          st(x + j, cv * xa - sv * xb);
          st(x + j + S, sv * xa + cv * xb);
        } else {
          const V la = ld<V>(l + j), lb = ld<V>(l + j + S);
          acc += lb * xa - la * xb;
          if (MODE == BWD) {
            st(x + j, cv * xa + sv * xb);
            st(x + j + S, cv * xb - sv * xa);
            st(l + j, cv * la + sv * lb);
            st(l + j + S, cv * lb - sv * la);
          }
        }
      }
    if (MODE != FWD) g[k] += double(hsum<T>(acc));
  }
}

template <typename T>
struct Buffers {  // per thread, grown on demand, 64-byte aligned
  T* data = nullptr;
  size_t size = 0;
  T* get(size_t n) {
    if (n > size) {
      std::free(data);
      size = (n + 15) & ~size_t(15);
      data = static_cast<T*>(std::aligned_alloc(64, size * sizeof(T)));
    }
    return data;
  }
  ~Buffers() { std::free(data); }
};

// A whole layer on the state x (and l), every bit position p = 0..n-1 with c[p], s[p], g[p].
template <typename T, int MODE>
void layer(T* x, T* l, int n, const T* c, const T* s, double* g) {
  const int tile = g_tile_bits[sizeof(T) == 8];
  int pos[64];
  if (n <= tile) {
    for (int p = 0; p < n; ++p) pos[p] = p;
    process<T, MODE>(x, l, int64_t(1) << n, n, pos, c, s, g);
    return;
  }
  const int64_t len = int64_t(1) << n, tlen = int64_t(1) << tile;
  for (int p = 0; p < tile; ++p) pos[p] = p;
  for (int64_t t = 0; t < len; t += tlen)
    process<T, MODE>(x + t, MODE == FWD ? nullptr : l + t, tlen, tile, pos, c, s, g);
  // the high positions, in groups of at most g_group_bits, through a buffer of rows
  thread_local Buffers<T> bufs;
  int rest = n - tile, groups = (rest + g_group_bits - 1) / g_group_bits;
  int lo = tile;
  for (int gi = 0; gi < groups; ++gi) {
    const int h = rest / groups + (gi < rest % groups ? 1 : 0), hi = lo + h;
    int cb = tile - h;
    if (cb < Simd<T>::LW) cb = Simd<T>::LW;
    if (cb > lo) cb = lo;
    const int64_t rows = int64_t(1) << h, C = int64_t(1) << cb, blen = rows * C;
    const int64_t rstride = int64_t(1) << lo;
    T* bx = bufs.get(2 * blen);
    T* bl = bx + blen;
    for (int p = lo; p < hi; ++p) pos[p - lo] = cb + (p - lo);
    for (int64_t outer = 0; outer < len; outer += int64_t(1) << hi)
      for (int64_t col = 0; col < rstride; col += C) {
        const int64_t off = outer + col;
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(bx + r * C, x + off + r * rstride, C * sizeof(T));
          if (MODE != FWD) std::memcpy(bl + r * C, l + off + r * rstride, C * sizeof(T));
        }
        process<T, MODE>(bx, bl, blen, h, pos, c + lo, s + lo, g + lo);
        if (MODE != GRAD)
          for (int64_t r = 0; r < rows; ++r) {
            std::memcpy(x + off + r * rstride, bx + r * C, C * sizeof(T));
            if (MODE == BWD) std::memcpy(l + off + r * rstride, bl + r * C, C * sizeof(T));
          }
      }
    lo = hi;
  }
}

inline int64_t ring_src(int64_t j, int n) { return j ^ (j >> 1) ^ ((j & 1) * (int64_t(3) << (n - 2))); }
inline int64_t inverse_gray(int64_t i, int n) {
  for (int sh = 1; sh < n; sh <<= 1) i ^= i >> sh;
  return i;
}
inline int64_t ring_dst(int64_t i, int n) {
  const int64_t g = inverse_gray(i, n);
  return g ^ ((g & 1) << (n - 1));
}
inline int parity(int64_t x) { return __builtin_parityll(x); }

// The ring, out[j] = in[src(j)], handed out a vector at a time: store(j, v). For a vector j = H W + l
// (l < W), gray(j) is gray(H) W + (gray(l) ^ (H odd) W/2), and odd lanes also flip the two top bits:
// two loads of whole vectors, one permute each, one blend.
template <typename T, typename F>
inline void ring_forward(const T* __restrict__ in, int n, F&& store) {
  typedef typename Simd<T>::V V;
  typedef typename Simd<T>::I I;
  constexpr int W = Simd<T>::W, LW = Simd<T>::LW;
  const int64_t len = int64_t(1) << n;
  if (n < LW + 2) {
    for (int64_t j = 0; j < len; j += W) {
      V v;
      for (int l = 0; l < W; ++l) v[l] = (j + l < len) ? in[ring_src(j + l, n)] : T(0);
      store(j, v);
    }
    return;
  }
  I idx[2], odd;
  for (int l = 0; l < W; ++l) {
    idx[0][l] = l ^ (l >> 1);
    idx[1][l] = idx[0][l] ^ (W / 2);
    odd[l] = (l & 1) ? -1 : 0;
  }
  const int64_t top = int64_t(3) << (n - 2);
  for (int64_t H = 0; H < (len >> LW); ++H) {
    const int64_t base = (H ^ (H >> 1)) << LW;
    const I& m = idx[H & 1];
    const V a = shuf<T>(ld<V>(in + base), m), b = shuf<T>(ld<V>(in + (base ^ top)), m);
    store(H << LW, odd ? b : a);
  }
}

// The inverse ring, out[i] = in[dst(i)]: for i = H W + l, inverse_gray(i) is inverse_gray(H) W +
// (inverse_gray(l) ^ (parity(H) ? W - 1 : 0)), and lanes of odd parity(i) flip the top bit.
template <typename T, typename F>
inline void ring_inverse(const T* __restrict__ in, int n, F&& store) {
  typedef typename Simd<T>::V V;
  typedef typename Simd<T>::I I;
  constexpr int W = Simd<T>::W, LW = Simd<T>::LW;
  const int64_t len = int64_t(1) << n;
  if (n < LW + 1) {
    for (int64_t i = 0; i < len; i += W) {
      V v;
      for (int l = 0; l < W; ++l) v[l] = (i + l < len) ? in[ring_dst(i + l, n)] : T(0);
      store(i, v);
    }
    return;
  }
  I idx[2], odd[2];
  for (int l = 0; l < W; ++l) {
    idx[0][l] = inverse_gray(l, LW);
    idx[1][l] = idx[0][l] ^ (W - 1);
    odd[0][l] = parity(l) ? -1 : 0;
    odd[1][l] = ~odd[0][l];
  }
  const int64_t top = int64_t(1) << (n - 1);
  for (int64_t H = 0; H < (len >> LW); ++H) {
    const int64_t base = inverse_gray(H, n) << LW;
    const int ph = parity(H);
    const V a = shuf<T>(ld<V>(in + base), idx[ph]), b = shuf<T>(ld<V>(in + (base ^ top)), idx[ph]);
    store(H << LW, odd[ph] ? b : a);
  }
}

// cos and sin of the half angles of block b, by bit position
template <typename T>
void trig(const T* theta, int n, T* c, T* s) {
  for (int q = 0; q < n; ++q) {
    const T h = theta[q] / 2;
    c[n - 1 - q] = std::cos(h);
    s[n - 1 - q] = std::sin(h);
  }
}

// Stores a vector at out + j, or its first len - j elements for states shorter than a vector.
template <typename T>
inline void put(T* out, int64_t j, const typename Simd<T>::V& v, int64_t len) {
  if (len >= Simd<T>::W) {
    st(out + j, v);
  } else {
    for (int64_t l = 0; l < len; ++l) out[l] = v[l];
  }
}

// Block 0 on |0...0>: the product of (cos, sin) of every qubit, as a vector of the low positions
// times a scalar built by doubling for the high ones.
template <typename T>
void product_state(T* a, int n, const T* c, const T* s) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W, LW = Simd<T>::LW;
  const int64_t len = int64_t(1) << n;
  const int low = n < LW ? n : LW;
  V lv;
  for (int l = 0; l < W; ++l) {
    T v = 1;
    for (int p = 0; p < low; ++p) v *= (l >> p) & 1 ? s[p] : c[p];
    lv[l] = v;
  }
  if (n <= LW) {
    put(a, 0, lv, len);
    return;
  }
  thread_local Buffers<T> bufs;
  const int64_t hlen = len >> LW;
  T* h = bufs.get(hlen);
  h[0] = 1;
  for (int p = n - 1, m = 1; p >= LW; --p, m *= 2)  // qubit 0 (position n-1) ends most significant
    for (int64_t j = m - 1; j >= 0; --j) {
      const T v = h[j];
      h[2 * j] = v * c[p];
      h[2 * j + 1] = v * s[p];
    }
  for (int64_t H = 0; H < hlen; ++H) st(a + (H << LW), lv * h[H]);
}

// One angle set: probabilities into `probs`; into `states`, the final state before the last ring
// (stored == 0) or every block's state after its rotation layer, block after block (stored == 1:
// L states, the last one that same final state).
template <typename T, typename O>
void forward_row(const T* theta, int L, int n, T* states, int stored, O* probs) {
  typedef typename Simd<T>::V V;
  const int64_t len = int64_t(1) << n;
  T* state = stored ? states + (L - 1) * len : states;
  thread_local Buffers<T> bufs;
  T* tmp = stored ? nullptr : bufs.get(len);
  T c[64], s[64];
  // ping-pong so that the last block's output lands in `state`
  T* a = stored ? states : ((L - 1) % 2 == 0) ? state : tmp;
  T* b = a == state ? tmp : state;
  trig(theta, n, c, s);
  product_state(a, n, c, s);
  for (int blk = 1; blk < L; ++blk) {
    if (stored) b = states + blk * len;
    ring_forward<T>(a, n, [&](int64_t j, const V& v) { put(b, j, v, len); });
    trig(theta + blk * n, n, c, s);
    layer<T, FWD>(b, nullptr, n, c, s, nullptr);
    T* t = a;
    a = b;
    b = t;
  }
  ring_forward<T>(state, n, [&](int64_t j, const V& v) {
    const V sq = v * v;
    for (int l = 0; l < Simd<T>::W && j + l < len; ++l) probs[j + l] = O(sq[l]);
  });
}

// The angles' gradient. With every block's state stored (stored == 1) psi is read, not un-computed:
// per block one read-only gradient sweep of psi and lam, then lam alone is taken back through the
// layer (RY(-theta)) and the ring. Without (stored == 0) both are un-computed together.
template <typename T, typename O>
void backward_row(const T* theta, int L, int n, const T* states, int stored, const O* grad_p, double* grad) {
  typedef typename Simd<T>::V V;
  const int64_t len = int64_t(1) << n;
  const T* state = stored ? states + (L - 1) * len : states;
  thread_local Buffers<T> bufs;
  T* psi = bufs.get(4 * len + 16);
  T* lam = psi + len;
  T* psi2 = lam + len;
  T* lam2 = psi2 + len;
  T c[64], s[64];
  double g[64];
  // lam = dL/dpsi / 2 = psi dL/dp, taken back through the last ring
  for (int64_t i = 0; i < len; ++i) psi2[i] = T(grad_p[i]);
  ring_inverse<T>(psi2, n, [&](int64_t i, const V& v) {
    if (len >= Simd<T>::W) {
      st(lam + i, v * ld<V>(state + i));
    } else {
      for (int64_t l = 0; l < len; ++l) lam[l] = v[l] * state[l];
    }
  });
  if (stored) {
    for (int blk = L - 1; blk >= 0; --blk) {
      trig(theta + blk * n, n, c, s);
      for (int p = 0; p < n; ++p) g[p] = 0;
      layer<T, GRAD>(const_cast<T*>(states + blk * len), lam, n, c, s, g);  // GRAD writes neither
      if (blk > 0) {
        for (int p = 0; p < n; ++p) s[p] = -s[p];
        layer<T, FWD>(lam, nullptr, n, c, s, nullptr);
        ring_inverse<T>(lam, n, [&](int64_t i, const V& v) { put(lam2, i, v, len); });
        T* t = lam;
        lam = lam2;
        lam2 = t;
      }
      for (int q = 0; q < n; ++q) grad[blk * n + q] = g[n - 1 - q];
    }
    return;
  }
  std::memcpy(psi, state, len * sizeof(T));
  for (int blk = L - 1; blk >= 0; --blk) {
    trig(theta + blk * n, n, c, s);
    for (int p = 0; p < n; ++p) g[p] = 0;
    if (blk == 0) {
      layer<T, GRAD>(psi, lam, n, c, s, g);
    } else {
      layer<T, BWD>(psi, lam, n, c, s, g);
      ring_inverse<T>(psi, n, [&](int64_t i, const V& v) { put(psi2, i, v, len); });
      ring_inverse<T>(lam, n, [&](int64_t i, const V& v) { put(lam2, i, v, len); });
      T* t = psi;
      psi = psi2;
      psi2 = t;
      t = lam;
      lam = lam2;
      lam2 = t;
    }
    for (int q = 0; q < n; ++q) grad[blk * n + q] = g[n - 1 - q];
  }
}

// Rows (angle sets) split over `threads` std::threads when there is enough work to pay for them.
template <typename F>
void rows(int64_t B, int n, int threads, F&& fn) {
  if (threads > B) threads = int(B);
  if (threads <= 1 || (B << n) < (int64_t(1) << 15)) {
    fn(int64_t(0), B);
    return;
  }
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back([&, t] { fn(B * t / threads, B * (t + 1) / threads); });
  fn(int64_t(0), B / threads);
  for (auto& th : pool) th.join();
}

}  // namespace

#define QT_ENTRY(SUFFIX, T, O)                                                                            \
  extern "C" void ry_forward_##SUFFIX(const T* theta, int64_t B, int L, int n, T* states, int stored,  \
                                      O* probs, int threads) {                                          \
    const int64_t len = int64_t(1) << n, per = stored ? L * len : len;                                  \
    rows(B, n, threads, [&](int64_t r0, int64_t r1) {                                                   \
      thread_local Buffers<T> scratch;                                                                  \
      for (int64_t r = r0; r < r1; ++r) {                                                               \
        T* st = states ? states + r * per : scratch.get(per);                                           \
        forward_row<T, O>(theta + r * L * n, L, n, st, stored, probs + r * len);                        \
      }                                                                                                 \
    });                                                                                                 \
  }                                                                                                     \
  extern "C" void ry_backward_##SUFFIX(const T* theta, int64_t B, int L, int n, const T* states,        \
                                       int stored, const O* grad_p, double* grad, int threads) {        \
    const int64_t len = int64_t(1) << n, per = stored ? L * len : len;                                  \
    rows(B, n, threads, [&](int64_t r0, int64_t r1) {                                                   \
      for (int64_t r = r0; r < r1; ++r)                                                                 \
        backward_row<T, O>(theta + r * L * n, L, n, states + r * per, stored, grad_p + r * len,         \
                           grad + r * L * n);                                                           \
    });                                                                                                 \
  }

QT_ENTRY(ff, float, float)
QT_ENTRY(dd, double, double)
QT_ENTRY(df, double, float)

extern "C" void ry_tune(int tile_float, int tile_double, int group_bits) {
  if (tile_float > 0) g_tile_bits[0] = tile_float;
  if (tile_double > 0) g_tile_bits[1] = tile_double;
  if (group_bits > 0) g_group_bits = group_bits;
}
