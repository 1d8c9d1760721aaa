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

#define INLINE static inline __attribute__((always_inline))

/* The vector types of W floats, v<W>f, v<W>i and v<W>fu (unaligned), and their helpers ld<S>,
 * st<S>, vmax<S>: S is "" for the 8 lanes of AVX2 here, "16" for AVX-512's (qat_cnn.c). */
#define VEC_TYPES(W, S)                                                                           \
  typedef float v##W##f __attribute__((vector_size(4 * W)));                                      \
  typedef int v##W##i __attribute__((vector_size(4 * W)));                                        \
  typedef float v##W##fu __attribute__((vector_size(4 * W), aligned(4), may_alias));              \
  INLINE v##W##f ld##S(const float *p) { return *(const v##W##fu *)p; }                           \
  INLINE void st##S(float *p, v##W##f v) { *(v##W##fu *)p = v; }                                  \
  INLINE v##W##f vmax##S(v##W##f a, v##W##f b) {                                                  \
    v##W##i gt = a > b; /* lanes all-ones where a is larger (vector ?: is C++ only) */            \
    return (v##W##f)(((v##W##i)a & gt) | ((v##W##i)b & ~gt));                                     \
  }
VEC_TYPES(8, )
#define VL 8
INLINE v8f splat(float x) { return (v8f){x, x, x, x, x, x, x, x}; }

/* What happens to a matmul result on its way out of the registers, so that no separate pass
 * over memory is needed: multiply by a 0/1 mask (the input gradient), track the largest
 * element (the activation range), apply ReLU and write its 0/1 derivative (float warm-up). */
typedef struct {
  const float *mask; /* C *= mask (same layout as C) */
  v8f *max;          /* lanes of *max = max(*max, elements of C); fold the lanes at the end */
  float *relu_mask;  /* C = max(C, 0) and relu_mask = (C > 0) */
} Epi;

/* The epilogue of the columns from j on. */
static Epi epi_at(const Epi *e, Epi *out, int j) {
  *out = *e;
  if (out->mask) out->mask += j;
  if (out->relu_mask) out->relu_mask += j;
  return *out;
}

/* ------------------------------------------------------------------ register-blocked GEMM
 * GEMM_KERNELS(W, S, RB2) defines, for vectors of W floats (helpers suffixed S):
 *
 * blockW: C[r, 0:NV*W] = bias + sum_t A(r, t) * B[t, 0:NV*W] for the RB rows r0 .. r0 + RB - 1.
 * A(r, t) = A[r * ar + t * at]: ar = lda, at = 1 is a row-major A; ar = 1, at = lda reads A
 * transposed (the weight gradient A^T dZ). The RB x NV accumulators, NV B vectors and one
 * broadcast stay in the vector registers (16 with AVX2, 32 with AVX-512). An FMA has a latency
 * of ~4-5 cycles and two issue each cycle, so it takes >= 8-10 independent accumulators to keep
 * the units busy: hence RB2 rows x 2 vectors and 8 rows x 1 vector, not the 2 x 1 a naive loop
 * has. A block of few accumulators (a remainder block) takes a second set for odd t, which
 * doubles the independent FMA chains that bound it over the long T of a weight gradient.
 *
 * stripW_NV: rows [0, R) of an NV-vector-wide column strip, RB rows at a time, then the rest.
 *
 * matmulW: columns [0, N - N % W) of C[R x N] = bias + A(R x T) @ B[T x N] (A strided as in
 * blockW, B and C with leading dimensions ldb, ldc); returns the first column left undone.
 *
 * One definition for both widths, so both sum in the same order; how a block's maximum starts
 * from and goes back to the 8 lanes of *e->max is the width's max_startW / max_endW. */
#define ROWS _Pragma("GCC unroll 8")
#define VECS _Pragma("GCC unroll 2")
#define STRIP(W, NV, RB)                                                                          \
  static void strip##W##_##NV(int R, int T, const float *A, long ar, long at, const float *B,     \
                              long ldb, const float *bias, float *C, long ldc, const Epi *e) {    \
    int r = 0;                                                                                    \
    for (; r + RB <= R; r += RB) block##W(NV, RB, r, T, A, ar, at, B, ldb, bias, C, ldc, e);      \
    switch (R - r) {                                                                              \
      case 7: block##W(NV, 7, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 6: block##W(NV, 6, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 5: block##W(NV, 5, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 4: block##W(NV, 4, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 3: block##W(NV, 3, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 2: block##W(NV, 2, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      case 1: block##W(NV, 1, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                   \
      default: break;                                                                             \
    }                                                                                             \
  }
#define GEMM_KERNELS(W, S, RB2)                                                                   \
  INLINE void block##W(int NV, int RB, int r0, int T, const float *A, long ar, long at,           \
                       const float *B, long ldb, const float *bias, float *C, long ldc,           \
                       const Epi *e) {                                                            \
    v##W##f c[8][2];                                                                              \
    ROWS for (int q = 0; q < RB; q++)                                                             \
      VECS for (int v = 0; v < NV; v++) c[q][v] = bias ? ld##S(bias + W * v) : splat##S(0.f);     \
    const float *a = A + r0 * ar;                                                                 \
    int t = 0;                                                                                    \
    if (RB * NV <= 4) {                                                                           \
      v##W##f d[4][2];                                                                            \
      ROWS for (int q = 0; q < RB; q++)                                                           \
        VECS for (int v = 0; v < NV; v++) d[q][v] = splat##S(0.f);                                \
      for (; t + 1 < T; t += 2) {                                                                 \
        const float *b = B + t * ldb;                                                             \
        v##W##f bv[2], bw[2];                                                                     \
        VECS for (int v = 0; v < NV; v++) {                                                       \
          bv[v] = ld##S(b + W * v);                                                               \
          bw[v] = ld##S(b + ldb + W * v);                                                         \
        }                                                                                         \
        ROWS for (int q = 0; q < RB; q++) {                                                       \
          v##W##f x = splat##S(a[q * ar + t * at]), y = splat##S(a[q * ar + (t + 1) * at]);       \
          VECS for (int v = 0; v < NV; v++) {                                                     \
            c[q][v] += x * bv[v];                                                                 \
            d[q][v] += y * bw[v];                                                                 \
          }                                                                                       \
        }                                                                                         \
      }                                                                                           \
      ROWS for (int q = 0; q < RB; q++)                                                           \
        VECS for (int v = 0; v < NV; v++) c[q][v] += d[q][v];                                     \
    }                                                                                             \
    for (; t < T; t++) {                                                                          \
      const float *b = B + t * ldb;                                                               \
      v##W##f bv[2];                                                                              \
      VECS for (int v = 0; v < NV; v++) bv[v] = ld##S(b + W * v);                                 \
      ROWS for (int q = 0; q < RB; q++) {                                                         \
        v##W##f x = splat##S(a[q * ar + t * at]);                                                 \
        VECS for (int v = 0; v < NV; v++) c[q][v] += x * bv[v];                                   \
      }                                                                                           \
    }                                                                                             \
    if (e) {                                                                                      \
      if (e->mask)                                                                                \
        ROWS for (int q = 0; q < RB; q++)                                                         \
          VECS for (int v = 0; v < NV; v++) c[q][v] *= ld##S(e->mask + (r0 + q) * ldc + W * v);   \
      if (e->max) {                                                                               \
        v##W##f m = max_start##W(e->max);                                                         \
        ROWS for (int q = 0; q < RB; q++)                                                         \
          VECS for (int v = 0; v < NV; v++) m = vmax##S(c[q][v], m);                              \
        max_end##W(e->max, m);                                                                    \
      }                                                                                           \
      if (e->relu_mask)                                                                           \
        ROWS for (int q = 0; q < RB; q++)                                                         \
          VECS for (int v = 0; v < NV; v++) {                                                     \
            v##W##i pos = c[q][v] > splat##S(0.f);                                                \
            st##S(e->relu_mask + (r0 + q) * ldc + W * v,                                          \
                  (v##W##f)(pos & (v##W##i)splat##S(1.f)));                                       \
            c[q][v] = (v##W##f)(pos & (v##W##i)c[q][v]);                                          \
          }                                                                                       \
    }                                                                                             \
    ROWS for (int q = 0; q < RB; q++)                                                             \
      VECS for (int v = 0; v < NV; v++) st##S(C + (r0 + q) * ldc + W * v, c[q][v]);               \
  }                                                                                               \
  STRIP(W, 2, RB2)                                                                                \
  STRIP(W, 1, 8)                                                                                  \
  static int matmul##W(int R, int T, int N, const float *A, long ar, long at, const float *B,     \
                       long ldb, const float *bias, float *C, long ldc, const Epi *e) {           \
    int j = 0;                                                                                    \
    Epi ej;                                                                                       \
    for (; j + 2 * W <= N; j += 2 * W) {                                                          \
      if (e) epi_at(e, &ej, j);                                                                   \
      strip##W##_2(R, T, A, ar, at, B + j, ldb, bias ? bias + j : 0, C + j, ldc, e ? &ej : 0);    \
    }                                                                                             \
    if (j + W <= N) {                                                                             \
      if (e) epi_at(e, &ej, j);                                                                   \
      strip##W##_1(R, T, A, ar, at, B + j, ldb, bias ? bias + j : 0, C + j, ldc, e ? &ej : 0);    \
      j += W;                                                                                     \
    }                                                                                             \
    return j;                                                                                     \
  }

/* 8 wide: the block's maximum runs through *e->max itself. */
INLINE v8f max_start8(const v8f *acc) { return *acc; }
INLINE void max_end8(v8f *acc, v8f m) { *acc = m; }
GEMM_KERNELS(8, , 6)

/* A GEMM as matmul8 (or qat_cnn.c's matmul_wide), for affine_mm and grad_w_mm. */
typedef int Matmul(int R, int T, int N, const float *A, long ar, long at, const float *B,
                   long ldb, const float *bias, float *C, long ldc, const Epi *e);

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

/* C[R x N] = bias + A[R x K] @ W[K x N] by the GEMM mm; WT = W^T serves the columns mm leaves
 * (past the last multiple of 8). The forward pass (W = weights) and the input gradient
 * (W = weights^T) both use it: `affine` with matmul8, qat_cnn.c's affine_w 16 wide. */
INLINE void affine_mm(Matmul *mm, int R, int K, int N, const float *A, const float *W,
                      const float *WT, const float *bias, float *C, const Epi *e) {
  int j = mm(R, K, N, A, K, 1, W, N, bias, C, N, e);
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

static void affine(int R, int K, int N, const float *A, const float *W, const float *WT,
                   const float *bias, float *C, const Epi *e) {
  affine_mm(matmul8, R, K, N, A, W, WT, bias, C, e);
}

/* gW[K x N] = A[R x K]^T @ dZ[R x N] by the GEMM mm. The columns mm leaves (past the last
 * multiple of 8) are computed transposed (gW^T rows = dZ columns^T @ A, vectorized along K)
 * into tmp, then placed. `grad_w` with matmul8, qat_cnn.c's grad_w_w 16 wide. */
INLINE void grad_w_mm(Matmul *mm, int R, int K, int N, const float *A, const float *dZ,
                      float *gW, float *tmp) {
  int j = mm(K, R, N, A, 1, K, dZ, N, 0, gW, N, NULL);
  if (j == N) return;
  int nt = N - j;
  int k = mm(nt, R, K, dZ + j, 1, N, A, K, 0, tmp, K, NULL);
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

static void grad_w(int R, int K, int N, const float *A, const float *dZ, float *gW, float *tmp) {
  grad_w_mm(matmul8, R, K, N, A, dZ, gW, tmp);
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

/* Unit l's weights (K x N, at w_off in params) and biases (at b_off) as its forward pass uses
 * them, into wq (params layout): fake-quantized at input scale s_in (quant), else as they are
 * (the float warm-up); their transpose into wqT (at w_off). */
static void unit_weights(const float *params, long w_off, long b_off, int K, int N, int w_qmax,
                         float s_in, int quant, float *wq, float *wqT) {
  const float *W = params + w_off, *b = params + b_off;
  float *Wq = wq + w_off, *bq = wq + b_off;
  if (quant) {
    quant_unit(W, b, K * N, N, w_qmax, s_in, Wq, bq);
  } else {
    memcpy(Wq, W, sizeof(float) * K * N);
    memcpy(bq, b, sizeof(float) * N);
  }
  transpose(K, N, Wq, wqT + w_off);
}

/* The rest of hidden unit l's forward pass once its output z (sz floats) is computed, with
 * the range statistic *mv (lanes of max(0, max z)) kept on the way out if train: the range
 * act_max[l] (its first value, then an EMA), and with quant, z fake-quantized in place to
 * 0 .. a_qmax and its STE mask. Returns the next unit's input scale. */
static float unit_output(int l, const v8f *mv, float *act_max, int *seen, float act_ema,
                         int a_qmax, float s_in, float *z, float *mask, long sz, int train,
                         int quant) {
  if (train) {
    float m = 0.f;
    for (int i = 0; i < VL; i++) m = (*mv)[i] > m ? (*mv)[i] : m;
    act_max[l] = seen[l] ? act_ema * act_max[l] + (1.f - act_ema) * m : m;
    seen[l] = 1;
  }
  if (!quant) return s_in;
  float qa = (float)a_qmax;
  float s_a = act_max[l] > 0.f ? act_max[l] / qa : 1.f;
  for (long i = 0; i < sz; i++) {
    float q = round_half_up(z[i] / s_a);
    float c = fmin_(fmax_(q, 0.f), qa);
    mask[i] = q == c ? 1.f : 0.f;
    z[i] = c * s_a;
  }
  return s_a;
}

/* The buffers of n_params floats every net has (Net, qat_cnn.c's CNet), carved from p in this
 * order: fake-quantized parameters, W^T per unit, the gradient, Adam's m and v. Returns p past
 * them. */
static float *param_buffers(float *p, long n_params, float **wq, float **wqT, float **grad,
                            float **m, float **v) {
  *wq = p; p += n_params;
  *wqT = p; p += n_params;
  *grad = p; p += n_params;
  *m = p; p += n_params;
  *v = p; p += n_params;
  return p;
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
  float *p = param_buffers(n->scratch, off, &n->wq, &n->wqT, &n->grad, &n->m, &n->v);
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
static void forward(void *self, const float *params, float *act_max, int *seen, float act_ema,
                    float s_x, const float *x, int bsz, int train, int quant) {
  Net *n = self;
  const int *w = n->w;
  float s_in = s_x;
  const float *a = x;
  for (int l = 0; l < n->L; l++) {
    int K = w[l], N = w[l + 1];
    unit_weights(params, n->w_off[l], n->b_off[l], K, N, n->w_qmax[l], s_in, quant, n->wq,
                 n->wqT);
    const float *Wq = n->wq + n->w_off[l], *bq = n->wq + n->b_off[l];
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
    s_in = unit_output(l, &mv, act_max, seen, act_ema, n->a_qmax[l], s_in, z, mask, sz, train,
                       quant);
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
static void backward(void *self, const float *x, int bsz) {
  Net *n = self;
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

/* A net as the training and inference loops below see it (a Net here, a CNet in qat_cnn.c):
 * its passes, which take the net as self, and what the loops read and update of it. */
typedef struct {
  void *self;
  /* Forward pass of b samples of x. train: update the activation ranges (EMA of the max);
   * quant: fake quantization on (else float weights and plain ReLU, the warm-up). */
  void (*forward)(void *self, const float *params, float *act_max, int *seen, float act_ema,
                  float s_x, const float *x, int b, int train, int quant);
  /* Gradients of every parameter for the minibatch x (after forward). */
  void (*backward)(void *self, const float *x, int b);
  /* The minibatch of training samples idx[0, b) where the net reads it itself (returns 1;
   * NULL or 0: train_loop copies their rows of x into the forward pass's input). */
  int (*gather)(void *self, const int *idx, int b);
  int L, classes;       /* units, head outputs */
  long d_in, n_params;  /* floats of one input sample, of the parameters */
  float *grad, *m, *v;  /* Adam */
  float *pred, *dpred;  /* head output and its gradient */
} Model;

/* Train one net: see inag_qat_train, whose arguments past the net's shapes these are. */
static int train_loop(Model md, float *params, float *act_max, float s_x, const float *x,
                      const float *y_reg, const int64_t *y_cls, int n, const int *perm,
                      int epochs, int bsz, const float *lr, long quant_start, float act_ema,
                      float wd, float *epoch_loss) {
  int b_max = bsz < n ? bsz : n;
  int *seen = calloc(md.L, sizeof(int));
  float *xb = malloc(sizeof(float) * b_max * md.d_in);
  long step = 0;
  int status = seen && xb ? -1 : -2;
  for (int e = 0; e < epochs && status == -1; e++) {
    const int *order = perm + (long)e * n;
    double total = 0.0;
    for (int s0 = 0; s0 < n; s0 += bsz) {
      int b = n - s0 < bsz ? n - s0 : bsz;
      if (!md.gather || !md.gather(md.self, order + s0, b))
        for (int i = 0; i < b; i++)
          memcpy(xb + i * md.d_in, x + order[s0 + i] * md.d_in, sizeof(float) * md.d_in);
      int quant = step >= quant_start;
      md.forward(md.self, params, act_max, seen, act_ema, s_x, xb, b, 1, quant);
      float loss = loss_grad(md.pred, y_reg, y_cls, order + s0, b, md.classes, md.dpred);
      if (!isfinite(loss)) { status = e; break; }
      md.backward(md.self, xb, b);
      step++;
      adam_update(md.n_params, params, md.grad, md.m, md.v, step, lr[step - 1], wd);
      total += (double)loss * b;
    }
    epoch_loss[e] = (float)(total / n);
  }
  free(seen);
  free(xb);
  return status;
}

/* Quantized inference of a trained net on n samples of x: out is n x md.classes. */
static int predict_loop(Model md, const float *params, const float *act_max, float s_x,
                        const float *x, int n, int bsz, float *out) {
  int *seen = calloc(md.L, sizeof(int));
  float *am = malloc(sizeof(float) * md.L);
  if (!seen || !am) { free(seen); free(am); return -2; }
  memcpy(am, act_max, sizeof(float) * (md.L - 1));
  int c = md.classes;
  for (int s0 = 0; s0 < n; s0 += bsz) {
    int b = n - s0 < bsz ? n - s0 : bsz;
    md.forward(md.self, params, am, seen, 0.f, s_x, x + s0 * md.d_in, b, 0, 1);
    memcpy(out + (long)s0 * c, md.pred, sizeof(float) * (long)b * c);
  }
  free(seen);
  free(am);
  return 0;
}

static Model net_model(Net *n) {
  return (Model){n, forward, backward, NULL, n->L, n->w[n->L], n->w[0], n->n_params,
                 n->grad, n->m, n->v, n->pred, n->dpred};
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
  int status = -2;
  if (!net_init(&net, L, w, w_qmax, a_qmax, bsz < n ? bsz : n))
    status = train_loop(net_model(&net), params, act_max, s_x, x, y_reg, y_cls, n, perm,
                        epochs, bsz, lr, quant_start, act_ema, wd, epoch_loss);
  net_free(&net);
  return status;
}

/* Quantized inference of a trained net on n rows of x: out is n x w[L]. */
int inag_qat_predict(int L, const int *w, const int *w_qmax, const int *a_qmax,
                     const float *params, const float *act_max, float s_x, const float *x,
                     int n, int bsz, float *out) {
  Net net;
  int status = -2;
  if (!net_init(&net, L, w, w_qmax, a_qmax, bsz < n ? bsz : n))
    status = predict_loop(net_model(&net), params, act_max, s_x, x, n, bsz, out);
  net_free(&net);
  return status;
}
