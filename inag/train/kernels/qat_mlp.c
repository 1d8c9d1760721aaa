/* Fused quantization-aware training of one MLP: INAG's "c" trainer engine.
 *
 * One call trains one candidate for the whole run (every epoch and minibatch): fake-quantized
 * forward, straight-through backward and Adam, with the exact rules of inag/trainer.py's torch
 * engine and export/quant.py (Jacob et al. 2017, integer-arithmetic-only inference):
 *   weights  per-tensor symmetric: s_w = max|W| / (2^(b-1)-1), codes clamp(floor(W/s_w + .5))
 *   biases   at s_in * s_w, codes floor(b / s_b + .5)
 *   outputs  unsigned: s_a = EMA(max z) / (2^b - 1), codes clamp(floor(z/s_a + .5), 0, 2^b-1)
 *   gradient straight through the rounding; zero where an activation code was clamped
 * Why C: the nets are small (widths 2..64, minibatch 256), so in PyTorch the per-op cost and
 * the elementwise passes between the matmuls dominate. Here the matmuls are register-blocked
 * micro-kernels written with GCC vector extensions, the elementwise work runs over data that is
 * still in cache, and there is no per-op dispatch at all. The caller runs many nets in parallel
 * (one per thread; ctypes releases the GIL), and a net's result cannot depend on the others.
 *
 * Build: cc -O3 -march=native -fno-math-errno -fno-trapping-math -shared -fPIC (inag/kernels).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef float v8fu __attribute__((vector_size(32), aligned(4), may_alias)); /* unaligned */
#define VL 8
#define INLINE static inline __attribute__((always_inline))

INLINE v8f ld(const float *p) { return *(const v8fu *)p; }
INLINE void st(float *p, v8f v) { *(v8fu *)p = v; }
INLINE v8f splat(float x) { return (v8f){x, x, x, x, x, x, x, x}; }

INLINE v8f vmax(v8f a, v8f b) {
  v8i gt = a > b; /* lanes all-ones where a is larger (vector ?: is C++ only) */
  return (v8f)(((v8i)a & gt) | ((v8i)b & ~gt));
}

/* What happens to a matmul result on its way out of the registers, so that no separate pass
 * over memory is needed: multiply by a 0/1 mask (the input gradient), track the largest
 * element (the activation range), apply ReLU and write its 0/1 derivative (float warm-up). */
typedef struct {
  const float *mask; /* C *= mask (same layout as C) */
  v8f *max;          /* lanes of *max = max(*max, elements of C); fold the lanes at the end */
  float *relu_mask;  /* C = max(C, 0) and relu_mask = (C > 0) */
} Epi;

/* C[r, 0:NV*8] = bias + sum_t A(r, t) * B[t, 0:NV*8] for the RB rows r0 .. r0 + RB - 1.
 * A(r, t) = A[r * ar + t * at]: ar = lda, at = 1 is a row-major A; ar = 1, at = lda reads A
 * transposed (the weight gradient A^T dZ). The RB x NV accumulators, NV B vectors and one
 * broadcast stay in the 16 vector registers. An FMA has a latency of ~4-5 cycles and two
 * issue each cycle, so it takes >= 8-10 independent accumulators to keep the units busy:
 * hence 6 rows x 2 vectors (12) and 8 rows x 1 vector (8), not the 2 x 1 a naive loop has. */
INLINE void block(int NV, int RB, int r0, int T, const float *A, long ar, long at,
                  const float *B, long ldb, const float *bias, float *C, long ldc,
                  const Epi *e) {
  v8f c[8][2];
#pragma GCC unroll 8
  for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) c[q][v] = bias ? ld(bias + VL * v) : splat(0.f);
  const float *a = A + r0 * ar;
  int t = 0;
  if (RB * NV <= 4) {
    /* few accumulators (a remainder block): a second set for odd t doubles the independent
     * FMA chains, which is what bounds these blocks over the long T of a weight gradient */
    v8f d[4][2];
#pragma GCC unroll 8
    for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) d[q][v] = splat(0.f);
    for (; t + 1 < T; t += 2) {
      const float *b = B + t * ldb;
      v8f bv[2], bw[2];
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) {
        bv[v] = ld(b + VL * v);
        bw[v] = ld(b + ldb + VL * v);
      }
#pragma GCC unroll 8
      for (int q = 0; q < RB; q++) {
        v8f x = splat(a[q * ar + t * at]), y = splat(a[q * ar + (t + 1) * at]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) {
          c[q][v] += x * bv[v];
          d[q][v] += y * bw[v];
        }
      }
    }
#pragma GCC unroll 8
    for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) c[q][v] += d[q][v];
  }
  for (; t < T; t++) {
    const float *b = B + t * ldb;
    v8f bv[2];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) bv[v] = ld(b + VL * v);
#pragma GCC unroll 8
    for (int q = 0; q < RB; q++) {
      v8f x = splat(a[q * ar + t * at]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) c[q][v] += x * bv[v];
    }
  }
  if (e) {
    if (e->mask)
#pragma GCC unroll 8
      for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) c[q][v] *= ld(e->mask + (r0 + q) * ldc + VL * v);
    if (e->max) {
      v8f m = *e->max;
#pragma GCC unroll 8
      for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) m = vmax(c[q][v], m);
      *e->max = m;
    }
    if (e->relu_mask)
#pragma GCC unroll 8
      for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) {
          v8i pos = c[q][v] > splat(0.f);
          st(e->relu_mask + (r0 + q) * ldc + VL * v, (v8f)(pos & (v8i)splat(1.f)));
          c[q][v] = (v8f)(pos & (v8i)c[q][v]);
        }
  }
#pragma GCC unroll 8
  for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) st(C + (r0 + q) * ldc + VL * v, c[q][v]);
}

/* Rows [0, R) of an NV-vector-wide column strip, RB rows at a time, then the remainder. */
#define STRIP(NV, RB)                                                                       \
  static void strip##NV(int R, int T, const float *A, long ar, long at, const float *B,     \
                        long ldb, const float *bias, float *C, long ldc, const Epi *e) {    \
    int r = 0;                                                                              \
    for (; r + RB <= R; r += RB) block(NV, RB, r, T, A, ar, at, B, ldb, bias, C, ldc, e);      \
    switch (R - r) {                                                                        \
      case 7: block(NV, 7, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 6: block(NV, 6, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 5: block(NV, 5, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 4: block(NV, 4, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 3: block(NV, 3, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 2: block(NV, 2, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 1: block(NV, 1, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      default: break;                                                                       \
    }                                                                                       \
  }
STRIP(2, 6)
STRIP(1, 8)

/* Columns [0, N - N % 8) of C[R x N] = bias + A(R x T) @ B[T x N] (A strided as in `block`,
 * B and C with leading dimensions ldb, ldc); returns the first column left undone. */
static Epi epi_at(const Epi *e, Epi *out, int j) {
  *out = *e;
  if (out->mask) out->mask += j;
  if (out->relu_mask) out->relu_mask += j;
  return *out;
}

static int matmul_vec(int R, int T, int N, const float *A, long ar, long at, const float *B,
                      long ldb, const float *bias, float *C, long ldc, const Epi *e) {
  int j = 0;
  Epi ej;
  for (; j + 2 * VL <= N; j += 2 * VL) {
    if (e) epi_at(e, &ej, j);
    strip2(R, T, A, ar, at, B + j, ldb, bias ? bias + j : 0, C + j, ldc, e ? &ej : 0);
  }
  if (j + VL <= N) {
    if (e) epi_at(e, &ej, j);
    strip1(R, T, A, ar, at, B + j, ldb, bias ? bias + j : 0, C + j, ldc, e ? &ej : 0);
    j += VL;
  }
  return j;
}

#if defined(__clang__)
#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUF(a, b, ...) __builtin_shuffle(a, b, (v8i){__VA_ARGS__})
#endif

/* (sum of a[0], ..., sum of a[7]): eight horizontal sums as one vector, in 3 shuffle stages
 * instead of 8 x 7 scalar adds. */
INLINE v8f hsum8(const v8f *a) {
  v8f t[4], u[2];
  for (int i = 0; i < 4; i++)
    t[i] = SHUF(a[2 * i], a[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
           SHUF(a[2 * i], a[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  for (int i = 0; i < 2; i++)
    u[i] = SHUF(t[2 * i], t[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           SHUF(t[2 * i], t[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return SHUF(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11) + SHUF(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* C[r, q] = bias[q] + A[r, :] . M[q, :] for q in [q0, Q): A is R x T and M is Q x T, both
 * row-major, so the dot products run along contiguous memory, 8 lanes at a time, 8 rows at
 * once (8 independent accumulators, one hsum8). The narrow columns (widths 1, 2, 4, the
 * regression head and the tail of 10 classes) take this path. */
static void dots(int R, int T, int q0, int Q, const float *A, const float *M, const float *bias,
                 float *C) {
  int T8 = T / VL * VL;
  for (int q = q0; q < Q; q++) {
    const float *m = M + (long)q * T;
    float b0 = bias ? bias[q] : 0.f;
    int r = 0;
    if (T8)
      for (; r + VL <= R; r += VL) {
        v8f acc[VL];
        for (int i = 0; i < VL; i++) acc[i] = splat(0.f);
        for (int t = 0; t < T8; t += VL) {
          v8f mv = ld(m + t);
          for (int i = 0; i < VL; i++) acc[i] += ld(A + (long)(r + i) * T + t) * mv;
        }
        v8f s = hsum8(acc) + splat(b0);
        for (int i = 0; i < VL; i++) {
          float x = s[i];
          for (int t = T8; t < T; t++) x += A[(long)(r + i) * T + t] * m[t];
          C[(long)(r + i) * Q + q] = x;
        }
      }
    switch (T) { /* tiny T: straight-line code per row instead of a loop per row */
      case 1: for (; r < R; r++) C[(long)r * Q + q] = b0 + A[r] * m[0]; break;
      case 2:
        for (; r < R; r++) C[(long)r * Q + q] = b0 + A[2L * r] * m[0] + A[2L * r + 1] * m[1];
        break;
      case 4:
        for (; r < R; r++) {
          const float *a = A + 4L * r;
          C[(long)r * Q + q] = b0 + ((a[0] * m[0] + a[1] * m[1]) + (a[2] * m[2] + a[3] * m[3]));
        }
        break;
      default:
        for (; r < R; r++) {
          const float *a = A + (long)r * T;
          float x = b0;
          for (int t = 0; t < T; t++) x += a[t] * m[t];
          C[(long)r * Q + q] = x;
        }
    }
  }
}

/* out[N x K] = in[K x N]^T, 8 x 8 tiles through registers, then the ragged edges. */
static void transpose(int K, int N, const float *in, float *out) {
  int k = 0;
  for (; k + VL <= K; k += VL) {
    int j = 0;
    for (; j + VL <= N; j += VL) {
      v8f r[VL];
      for (int i = 0; i < VL; i++) r[i] = ld(in + (long)(k + i) * N + j);
      /* 8x8 transpose: interleave pairs, then quads, then 128-bit halves */
      v8f t[VL], u[VL];
      for (int i = 0; i < VL; i += 2) {
        t[i] = SHUF(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = SHUF(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
      }
      for (int i = 0; i < VL; i += 4)
        for (int h = 0; h < 2; h++) {
          u[i + h] = SHUF(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
          u[i + h + 2] = SHUF(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
      for (int i = 0; i < 4; i++) { /* u[i] holds columns c and c + 4, c = 0, 2, 1, 3 */
        int c = i == 1 ? 2 : i == 2 ? 1 : i;
        st(out + (long)(j + c) * K + k, SHUF(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11));
        st(out + (long)(j + c + 4) * K + k, SHUF(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15));
      }
    }
    for (; j < N; j++)
      for (int i = 0; i < VL; i++) out[(long)j * K + k + i] = in[(long)(k + i) * N + j];
  }
  for (; k < K; k++)
    for (int j = 0; j < N; j++) out[(long)j * K + k] = in[(long)k * N + j];
}

/* C[R x N] = bias + A[R x K] @ W[K x N]; WT = W^T serves the columns past the last multiple
 * of 8. The forward pass (W = weights) and the input gradient (W = weights^T) both use it. */
static void affine(int R, int K, int N, const float *A, const float *W, const float *WT,
                   const float *bias, float *C, const Epi *e) {
  int j = matmul_vec(R, K, N, A, K, 1, W, N, bias, C, N, e);
  if (j == N) return;
  dots(R, K, j, N, A, WT, bias, C);
  if (!e) return;
  for (int r = 0; r < R; r++) /* the same epilogue on the narrow columns */
    for (int q = j; q < N; q++) {
      long i = (long)r * N + q;
      if (e->mask) C[i] *= e->mask[i];
      if (e->max && C[i] > (*e->max)[0]) (*e->max)[0] = C[i];
      if (e->relu_mask) {
        e->relu_mask[i] = C[i] > 0.f ? 1.f : 0.f;
        C[i] = C[i] > 0.f ? C[i] : 0.f;
      }
    }
}

/* gW[K x N] = A[R x K]^T @ dZ[R x N]. The columns past the last multiple of 8 are computed
 * transposed (gW^T rows = dZ columns^T @ A, vectorized along K) into tmp, then placed. */
static void grad_w(int R, int K, int N, const float *A, const float *dZ, float *gW, float *tmp) {
  int j = matmul_vec(K, R, N, A, 1, K, dZ, N, 0, gW, N, NULL);
  if (j == N) return;
  int nt = N - j;
  int k = matmul_vec(nt, R, K, dZ + j, 1, N, A, K, 0, tmp, K, NULL);
  for (int q = 0; q < nt; q++)
    for (int kk = k; kk < K; kk++) { /* both narrow: 4 chains, see colsum */
      float s[4] = {0.f, 0.f, 0.f, 0.f};
      int i = 0;
      for (; i + 4 <= R; i += 4)
        for (int u = 0; u < 4; u++)
          s[u] += dZ[(long)(i + u) * N + j + q] * A[(long)(i + u) * K + kk];
      for (; i < R; i++) s[0] += dZ[(long)i * N + j + q] * A[(long)i * K + kk];
      tmp[(long)q * K + kk] = (s[0] + s[1]) + (s[2] + s[3]);
    }
  for (int q = 0; q < nt; q++)
    for (int kk = 0; kk < K; kk++) gW[(long)kk * N + j + q] = tmp[(long)q * K + kk];
}

/* gb[0:N] = sum over the R rows of dZ[R x N]: the bias gradient, accumulated in registers. */
static void colsum(int R, int N, const float *dZ, float *gb) {
  int j = 0;
  for (; j + 2 * VL <= N; j += 2 * VL) {
    v8f s[4] = {splat(0.f), splat(0.f), splat(0.f), splat(0.f)};
    int i = 0;
    for (; i + 1 < R; i += 2)
      for (int u = 0; u < 4; u++) s[u] += ld(dZ + (long)(i + u / 2) * N + j + VL * (u % 2));
    for (; i < R; i++)
      for (int u = 0; u < 2; u++) s[u] += ld(dZ + (long)i * N + j + VL * u);
    st(gb + j, s[0] + s[2]);
    st(gb + j + VL, s[1] + s[3]);
  }
  if (j + VL <= N) {
    v8f s[2] = {splat(0.f), splat(0.f)};
    int i = 0;
    for (; i + 1 < R; i += 2)
      for (int u = 0; u < 2; u++) s[u] += ld(dZ + (long)(i + u) * N + j);
    if (i < R) s[0] += ld(dZ + (long)i * N + j);
    st(gb + j, s[0] + s[1]);
    j += VL;
  }
  if (j == N) return;
  if (j == 0 && VL % N == 0) {
    /* N = 1, 2, 4 (the regression head, narrow layers): the R x N block is contiguous and
     * lane l of a vector always holds column l % N, so sum vectors, then fold the lanes */
    long n = (long)R * N, i = 0;
    v8f s[4] = {splat(0.f), splat(0.f), splat(0.f), splat(0.f)};
    for (; i + 4 * VL <= n; i += 4 * VL)
      for (int u = 0; u < 4; u++) s[u] += ld(dZ + i + u * VL);
    for (; i + VL <= n; i += VL) s[0] += ld(dZ + i);
    v8f t = (s[0] + s[1]) + (s[2] + s[3]);
    for (int q = 0; q < N; q++) gb[q] = 0.f;
    for (int l = 0; l < VL; l++) gb[l % N] += t[l];
    for (; i < n; i++) gb[i % N] += dZ[i];
    return;
  }
  for (; j < N; j++) { /* 4 chains: a scalar sum is bound by the add latency */
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    int i = 0;
    for (; i + 4 <= R; i += 4)
      for (int u = 0; u < 4; u++) acc[u] += dZ[(long)(i + u) * N + j];
    for (; i < R; i++) acc[0] += dZ[(long)i * N + j];
    gb[j] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  }
}

static float round_half_up(float x) { return floorf(x + 0.5f); }
INLINE float fmax_(float a, float b) { return a > b ? a : b; }
INLINE float fmin_(float a, float b) { return a < b ? a : b; }

/* Per-tensor symmetric weight fake quantization and bias quantization at s_in * s_w. */
static void quant_unit(const float *w, const float *b, int n_w, int n_b, int qmax, float s_in,
                       float *wq, float *bq) {
  float amax = 0.f;
  for (int i = 0; i < n_w; i++) amax = fmax_(amax, fabsf(w[i]));
  float s_w = amax > 0.f ? amax / (float)qmax : 1.f;
  for (int i = 0; i < n_w; i++) {
    float q = round_half_up(w[i] / s_w);
    q = fmin_(fmax_(q, -(float)qmax), (float)qmax);
    wq[i] = q * s_w;
  }
  float s_b = s_in * s_w;
  for (int i = 0; i < n_b; i++) bq[i] = round_half_up(b[i] / s_b) * s_b;
}

/* A net's shapes and its scratch memory for one minibatch size. */
typedef struct {
  int L;                /* units (hidden layers + head) */
  const int *w;         /* widths, L + 1 entries: input, hidden..., output */
  const int *w_qmax;    /* per unit */
  const int *a_qmax;    /* per hidden layer */
  long *w_off, *b_off;  /* offsets of W_l (in x out, row-major) and b_l in params */
  long n_params;
  float *wq, *wqT;      /* fake-quantized parameters (params layout) and W^T per unit */
  float **y, **mask, **dy; /* per hidden layer: activations (bsz x w), STE mask, gradient */
  float *pred, *dpred;  /* head output and its gradient (bsz x out) */
  float *grad, *m, *v;  /* Adam */
  float *tmp;           /* grad_w's transposed columns: up to 8 x widest layer */
  float *scratch;
} Net;

static int net_init(Net *n, int L, const int *w, const int *w_qmax, const int *a_qmax,
                    int bsz) {
  memset(n, 0, sizeof *n);
  n->L = L; n->w = w; n->w_qmax = w_qmax; n->a_qmax = a_qmax;
  n->w_off = malloc(sizeof(long) * L);
  n->b_off = malloc(sizeof(long) * L);
  n->y = calloc(L, sizeof(float *));
  n->mask = calloc(L, sizeof(float *));
  n->dy = calloc(L, sizeof(float *));
  if (!n->w_off || !n->b_off || !n->y || !n->mask || !n->dy) return -1;
  long off = 0, act = 0;
  for (int l = 0; l < L; l++) {
    n->w_off[l] = off; off += (long)w[l] * w[l + 1];
    n->b_off[l] = off; off += w[l + 1];
    if (l < L - 1) act += (long)bsz * w[l + 1];
  }
  n->n_params = off;
  long out = (long)bsz * w[L];
  int widest = 0;
  for (int l = 0; l <= L; l++) widest = w[l] > widest ? w[l] : widest;
  long total = 5 * off + 3 * act + 2 * out + (long)VL * widest;
  n->scratch = calloc(total, sizeof(float));
  if (!n->scratch) return -1;
  float *p = n->scratch;
  n->wq = p; p += off;
  n->wqT = p; p += off;
  n->grad = p; p += off;
  n->m = p; p += off;
  n->v = p; p += off;
  for (int l = 0; l < L - 1; l++) {
    long sz = (long)bsz * w[l + 1];
    n->y[l] = p; p += sz;
    n->mask[l] = p; p += sz;
    n->dy[l] = p; p += sz;
  }
  n->pred = p; p += out;
  n->dpred = p; p += out;
  n->tmp = p;
  return 0;
}

static void net_free(Net *n) {
  free(n->w_off); free(n->b_off); free(n->y); free(n->mask); free(n->dy); free(n->scratch);
}

/* Forward pass of `bsz` rows of x. train: update the activation ranges (EMA of the max);
 * quant: fake quantization on (else float weights and plain ReLU, the warm-up). */
static void forward(Net *n, const float *params, float *act_max, int *seen, float act_ema,
                    float s_x, const float *x, int bsz, int train, int quant) {
  const int *w = n->w;
  float s_in = s_x;
  const float *a = x;
  for (int l = 0; l < n->L; l++) {
    int K = w[l], N = w[l + 1];
    const float *W = params + n->w_off[l], *b = params + n->b_off[l];
    float *Wq = n->wq + n->w_off[l], *bq = n->wq + n->b_off[l];
    if (quant) {
      quant_unit(W, b, K * N, N, n->w_qmax[l], s_in, Wq, bq);
    } else {
      memcpy(Wq, W, sizeof(float) * K * N);
      memcpy(bq, b, sizeof(float) * N);
    }
    transpose(K, N, Wq, n->wqT + n->w_off[l]);
    const float *WqT = n->wqT + n->w_off[l];
    int head = l == n->L - 1;
    float *z = head ? n->pred : n->y[l];
    if (head) {
      affine(bsz, K, N, a, Wq, WqT, bq, z, NULL);
      break;
    }
    long sz = (long)bsz * N;
    float *mask = n->mask[l];
    v8f mv = splat(0.f); /* the activation range statistic: max(0, max z), on the way out */
    Epi e = {NULL, train ? &mv : NULL, quant ? NULL : mask};
    affine(bsz, K, N, a, Wq, WqT, bq, z, train || !quant ? &e : NULL);
    if (train) {
      float m = 0.f;
      for (int l = 0; l < VL; l++) m = mv[l] > m ? mv[l] : m;
      act_max[l] = seen[l] ? act_ema * act_max[l] + (1.f - act_ema) * m : m;
      seen[l] = 1;
    }
    if (quant) {
      float qa = (float)n->a_qmax[l];
      float s_a = act_max[l] > 0.f ? act_max[l] / qa : 1.f;
      for (long i = 0; i < sz; i++) {
        float q = round_half_up(z[i] / s_a);
        float c = fmin_(fmax_(q, 0.f), qa);
        mask[i] = q == c ? 1.f : 0.f;
        z[i] = c * s_a;
      }
      s_in = s_a;
    }
    a = z;
  }
}

/* Mean loss of the minibatch (head outputs p) and its gradient w.r.t. p (into dpred). */
static float loss_grad(const float *p, const float *yr, const int64_t *yc, const int *idx,
                       int bsz, int classes, float *dpred) {
  float loss = 0.f; /* float32, like torch: a sum past FLT_MAX is a divergence there too */
  if (!yc) {
    for (int i = 0; i < bsz; i++) {
      float d = p[i] - yr[idx[i]];
      loss += d * d;
      dpred[i] = d * (2.f / (float)bsz);
    }
    return loss / (float)bsz;
  }
  for (int i = 0; i < bsz; i++) {
    const float *r = p + (long)i * classes;
    float mx = r[0];
    for (int c = 1; c < classes; c++) mx = fmax_(mx, r[c]);
    float s = 0.f;
    for (int c = 0; c < classes; c++) s += expf(r[c] - mx);
    float lse = mx + logf(s);
    int t = (int)yc[idx[i]];
    loss += lse - r[t];
    for (int c = 0; c < classes; c++)
      dpred[(long)i * classes + c] = (expf(r[c] - lse) - (c == t ? 1.f : 0.f)) / (float)bsz;
  }
  return loss / (float)bsz;
}

/* Gradients of every parameter for the minibatch `x` (after `forward`). */
static void backward(Net *n, const float *x, int bsz) {
  const int *w = n->w;
  const float *dz = n->dpred;
  for (int l = n->L - 1; l >= 0; l--) {
    int K = w[l], N = w[l + 1];
    const float *a = l == 0 ? x : n->y[l - 1];
    float *gW = n->grad + n->w_off[l], *gb = n->grad + n->b_off[l];
    grad_w(bsz, K, N, a, dz, gW, n->tmp);
    colsum(bsz, N, dz, gb);
    if (l == 0) break;
    float *da = n->dy[l - 1];
    Epi e = {n->mask[l - 1], NULL, NULL};
    affine(bsz, N, K, dz, n->wqT + n->w_off[l], n->wq + n->w_off[l], NULL, da, &e);
    dz = da;
  }
}

/* torch.optim.Adam's update of n_params parameters (the MLP and the CNN kernels share it). */
static void adam_update(long n_params, float *params, const float *g, float *m, float *v,
                        long step, float lr, float wd) {
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  float bc1 = 1.f - powf(b1, (float)step);
  float bc2_sqrt = sqrtf(1.f - powf(b2, (float)step));
  for (long i = 0; i < n_params; i++) {
    float gi = g[i] + (wd != 0.f ? wd * params[i] : 0.f);
    m[i] += (gi - m[i]) * (1.f - b1);
    v[i] = v[i] * b2 + (1.f - b2) * gi * gi;
    params[i] -= lr / bc1 * (m[i] / (sqrtf(v[i]) / bc2_sqrt + eps));
  }
}

/* Train one net. params (W_0, b_0, W_1, b_1, ...; W as in x out) hold the initialization and
 * come back trained; act_max (L - 1) comes back with the ranges. perm holds each epoch's
 * sample order (epochs x n), lr each optimizer step's rate; quantization starts at step
 * quant_start. epoch_loss receives each epoch's mean loss. Returns -1, or the 0-based epoch
 * of a non-finite loss (the net stops there), or -2 if memory ran out. */
int inag_qat_train(int L, const int *w, const int *w_qmax, const int *a_qmax, float *params,
                   float *act_max, float s_x, const float *x, const float *y_reg,
                   const int64_t *y_cls, int n, const int *perm, int epochs, int bsz,
                   const float *lr, long quant_start, float act_ema, float wd,
                   float *epoch_loss) {
  Net net;
  int b_max = bsz < n ? bsz : n;
  if (net_init(&net, L, w, w_qmax, a_qmax, b_max)) { net_free(&net); return -2; }
  int *seen = calloc(L, sizeof(int));
  float *xb = malloc(sizeof(float) * (long)b_max * w[0]);
  if (!seen || !xb) { net_free(&net); free(seen); free(xb); return -2; }
  int d_in = w[0], classes = w[L];
  long step = 0;
  int status = -1;
  for (int e = 0; e < epochs && status == -1; e++) {
    const int *order = perm + (long)e * n;
    double total = 0.0;
    for (int s0 = 0; s0 < n; s0 += bsz) {
      int b = n - s0 < bsz ? n - s0 : bsz;
      for (int i = 0; i < b; i++)
        memcpy(xb + (long)i * d_in, x + (long)order[s0 + i] * d_in, sizeof(float) * d_in);
      int quant = step >= quant_start;
      forward(&net, params, act_max, seen, act_ema, s_x, xb, b, 1, quant);
      float loss = loss_grad(net.pred, y_reg, y_cls, order + s0, b, classes, net.dpred);
      if (!isfinite(loss)) { status = e; break; }
      backward(&net, xb, b);
      step++;
      adam_update(net.n_params, params, net.grad, net.m, net.v, step, lr[step - 1], wd);
      total += (double)loss * b;
    }
    epoch_loss[e] = (float)(total / n);
  }
  net_free(&net);
  free(seen);
  free(xb);
  return status;
}

/* Quantized inference of a trained net on n rows of x: out is n x w[L]. */
int inag_qat_predict(int L, const int *w, const int *w_qmax, const int *a_qmax,
                     const float *params, const float *act_max, float s_x, const float *x,
                     int n, int bsz, float *out) {
  Net net;
  int b_max = bsz < n ? bsz : n;
  if (net_init(&net, L, w, w_qmax, a_qmax, b_max)) { net_free(&net); return -2; }
  int *seen = calloc(L, sizeof(int));
  float *am = malloc(sizeof(float) * L);
  if (!seen || !am) { net_free(&net); free(seen); free(am); return -2; }
  memcpy(am, act_max, sizeof(float) * (L - 1));
  int c = w[L];
  for (int s0 = 0; s0 < n; s0 += bsz) {
    int b = n - s0 < bsz ? n - s0 : bsz;
    forward(&net, params, am, seen, 0.f, s_x, x + (long)s0 * w[0], b, 0, 1);
    memcpy(out + (long)s0 * c, net.pred, sizeof(float) * (long)b * c);
  }
  net_free(&net);
  free(seen);
  free(am);
  return 0;
}
