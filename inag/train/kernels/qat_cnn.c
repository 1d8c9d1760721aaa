/* Fused quantization-aware training of one CNN: the conv path of INAG's "c" trainer engine.
 *
 * Same contract as qat_mlp.c (included below, so both engines share its GEMM micro-kernels,
 * quantization, loss and Adam): one call trains one net for the whole run, nothing in it
 * depends on other nets, the caller runs one net per thread. The rules are those of
 * inag/train/trainer.py's PlainQATCNN and export/quant.py, unit by unit:
 *   conv     'same' zero padding (k / 2), stride s, per-tensor symmetric fake-quantized weights,
 *            bias at s_in * s_w; output range an EMA of the batch max of the conv output;
 *            activations fake-quantized to 0 .. 2^b - 1 (ReLU folded in), STE inside the range
 *   pool     floor p x p max-pool (window = stride = p) after the fake quantization; the
 *            gradient goes to the first maximum of a window in row-major order (torch's rule)
 *   dense    a 1x1 conv on a 1x1 map: the flattened feature map is its input
 *
 * Layout: feature maps are NHWC, so a dense unit after a conv reads the map flattened in
 * (h, w, c) order (the caller permutes that unit's weight rows from the export's (c, h, w)),
 * and conv weights are (k, k, cin) x cout matrices: im2col rows of one output position are
 * (ky, kx, ci) with ci contiguous, copied from the NHWC input a kernel row at a time.
 *
 * Convolution = im2col + the register-blocked GEMMs of qat_mlp.c (affine, grad_w; 16 floats
 * wide where AVX-512 is there, see below), a tile of samples at a time so the column matrix
 * (<= TILE_FLOATS floats) stays in L2:
 *   forward   Z_tile = cols(A_tile) @ Wq + b           (epilogue: range max, ReLU mask)
 *   backward  gW += cols(A_tile)^T @ dZ_tile; dA += col2im(dZ_tile @ Wq^T)
 * A 1x1 stride-1 conv and a dense unit read their input as is (no copy), and unit 0 gathers
 * its columns from a table of the training set's input codes (inag_qat_train_cnn).
 * Why im2col and not a direct convolution, measured (perf, 16 sampled digits CNNs x 2
 * restarts, one thread, ~100 useful GFLOP/s): the GEMMs take 68 % of the kernel's time,
 * im2col + col2im 14 % (17-21 % before unit 0's table), the max-pool 7 %. A direct
 * convolution could at best save those 14 %, and would need its own micro-kernels per
 * (kernel, stride) shape, where the GEMMs are shared and tuned already. The tile size barely
 * matters (16K, 64K, 256K floats: within the run-to-run noise).
 *
 * The tile size depends only on the unit's shape and the minibatch size, so every summation
 * order is fixed by the net alone: a net's result is bit for bit independent of its chunk,
 * its companions and the thread count.
 */
#include "qat_mlp.c"

/* ------------------------------------------------------------------ 16-wide GEMM (AVX-512)
 * Where the CPU has AVX-512 (the library is built with -march=native), the CNN GEMMs run
 * their column strips 16 floats wide: the same blocking as qat_mlp.c's `block` (RB rows x NV
 * vectors of accumulators, B vectors and one broadcast in registers; 32 registers here), and
 * qat_mlp.c's 8-wide kernels take the columns left over. The MLP kernels keep their own
 * (8-wide) summation order, so their numbers do not change. */
#if defined(__AVX512F__)
typedef float v16f __attribute__((vector_size(64)));
typedef float v16fu __attribute__((vector_size(64), aligned(4), may_alias));
typedef int v16i __attribute__((vector_size(64)));
#define VW 16
INLINE v16f ld16(const float *p) { return *(const v16fu *)p; }
INLINE void st16(float *p, v16f v) { *(v16fu *)p = v; }
INLINE v16f splat16(float x) { return (v16f){0} + x; }
INLINE v16f vmax16(v16f a, v16f b) {
  v16i gt = a > b;
  return (v16f)(((v16i)a & gt) | ((v16i)b & ~gt));
}

INLINE void block16(int NV, int RB, int r0, int T, const float *A, long ar, long at,
                    const float *B, long ldb, const float *bias, float *C, long ldc,
                    const Epi *e) {
  v16f c[8][2];
#pragma GCC unroll 8
  for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) c[q][v] = bias ? ld16(bias + VW * v) : splat16(0.f);
  const float *a = A + r0 * ar;
  int t = 0;
  if (RB * NV <= 4) { /* a remainder block: a second set of accumulators for odd t */
    v16f d[4][2];
#pragma GCC unroll 8
    for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) d[q][v] = splat16(0.f);
    for (; t + 1 < T; t += 2) {
      const float *b = B + t * ldb;
      v16f bv[2], bw[2];
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) {
        bv[v] = ld16(b + VW * v);
        bw[v] = ld16(b + ldb + VW * v);
      }
#pragma GCC unroll 8
      for (int q = 0; q < RB; q++) {
        v16f x = splat16(a[q * ar + t * at]), y = splat16(a[q * ar + (t + 1) * at]);
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
    v16f bv[2];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) bv[v] = ld16(b + VW * v);
#pragma GCC unroll 8
    for (int q = 0; q < RB; q++) {
      v16f x = splat16(a[q * ar + t * at]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) c[q][v] += x * bv[v];
    }
  }
  if (e) {
    if (e->mask)
#pragma GCC unroll 8
      for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) c[q][v] *= ld16(e->mask + (r0 + q) * ldc + VW * v);
    if (e->max) {
      v16f m = splat16(0.f);
#pragma GCC unroll 8
      for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) m = vmax16(c[q][v], m);
      v8f lo = {m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]};
      v8f hi = {m[8], m[9], m[10], m[11], m[12], m[13], m[14], m[15]};
      *e->max = vmax(*e->max, vmax(lo, hi));
    }
    if (e->relu_mask)
#pragma GCC unroll 8
      for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) {
          v16i pos = c[q][v] > splat16(0.f);
          st16(e->relu_mask + (r0 + q) * ldc + VW * v, (v16f)(pos & (v16i)splat16(1.f)));
          c[q][v] = (v16f)(pos & (v16i)c[q][v]);
        }
  }
#pragma GCC unroll 8
  for (int q = 0; q < RB; q++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) st16(C + (r0 + q) * ldc + VW * v, c[q][v]);
}

#define STRIP16(NV, RB)                                                                     \
  static void strip16_##NV(int R, int T, const float *A, long ar, long at, const float *B,  \
                           long ldb, const float *bias, float *C, long ldc, const Epi *e) { \
    int r = 0;                                                                              \
    for (; r + RB <= R; r += RB) block16(NV, RB, r, T, A, ar, at, B, ldb, bias, C, ldc, e);  \
    switch (R - r) {                                                                        \
      case 7: block16(NV, 7, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                 \
      case 6: block16(NV, 6, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                 \
      case 5: block16(NV, 5, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                 \
      case 4: block16(NV, 4, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                 \
      case 3: block16(NV, 3, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                 \
      case 2: block16(NV, 2, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                 \
      case 1: block16(NV, 1, r, T, A, ar, at, B, ldb, bias, C, ldc, e); break;                 \
      default: break;                                                                       \
    }                                                                                       \
  }
STRIP16(2, 8)
STRIP16(1, 8)
#endif

/* matmul_vec, 16 columns at a time where AVX-512 is there: columns [0, returned) done. */
static int matmul_wide(int R, int T, int N, const float *A, long ar, long at, const float *B,
                       long ldb, const float *bias, float *C, long ldc, const Epi *e) {
  int j = 0;
#if defined(__AVX512F__)
  Epi ej;
  for (; j + 2 * VW <= N; j += 2 * VW) {
    if (e) epi_at(e, &ej, j);
    strip16_2(R, T, A, ar, at, B + j, ldb, bias ? bias + j : 0, C + j, ldc, e ? &ej : 0);
  }
  if (j + VW <= N) {
    if (e) epi_at(e, &ej, j);
    strip16_1(R, T, A, ar, at, B + j, ldb, bias ? bias + j : 0, C + j, ldc, e ? &ej : 0);
    j += VW;
  }
  if (j == N) return j;
  Epi er;
  if (e) epi_at(e, &er, j);
  return j + matmul_vec(R, T, N - j, A, ar, at, B + j, ldb, bias ? bias + j : 0, C + j, ldc,
                        e ? &er : 0);
#else
  return matmul_vec(R, T, N, A, ar, at, B, ldb, bias, C, ldc, e) + j;
#endif
}

/* qat_mlp.c's affine and grad_w on the wide GEMM (the same code otherwise). */
static void affine_w(int R, int K, int N, const float *A, const float *W, const float *WT,
                     const float *bias, float *C, const Epi *e) {
  int j = matmul_wide(R, K, N, A, K, 1, W, N, bias, C, N, e);
  if (j == N) return;
  dots(R, K, j, N, A, WT, bias, C);
  if (!e) return;
  for (int r = 0; r < R; r++)
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

static void grad_w_w(int R, int K, int N, const float *A, const float *dZ, float *gW,
                     float *tmp) {
  int j = matmul_wide(K, R, N, A, 1, K, dZ, N, 0, gW, N, NULL);
  if (j == N) return;
  int nt = N - j;
  int k = matmul_wide(nt, R, K, dZ + j, 1, N, A, K, 0, tmp, K, NULL);
  for (int q = 0; q < nt; q++)
    for (int kk = k; kk < K; kk++) {
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

/* One unit's shapes as the trainer passes them (12 ints): input (h, w, cin), conv output
 * (oh, ow, cout), kernel k, stride s, padding pad, pool window, pooled size (ph, pw). */
typedef struct {
  int cin, h, w, cout, k, s, pad, oh, ow, pool, ph, pw;
} Unit;

#define TILE_FLOATS 65536
#define PRECOLS_BYTES (64L << 20) /* unit 0's column table of the training set (int8 codes) */

INLINE long u_in(const Unit *u) { return (long)u->h * u->w * u->cin; }
INLINE long u_pos(const Unit *u) { return (long)u->oh * u->ow; }
INLINE long u_out(const Unit *u) { return (long)u->ph * u->pw * u->cout; }
INLINE int u_fan(const Unit *u) { return u->k * u->k * u->cin; }

typedef struct {
  int L;
  const Unit *u;
  const int *w_qmax, *a_qmax;
  long *w_off, *b_off, n_params;
  int *tile;        /* samples per im2col tile, per unit; 0: the unit reads its input as is */
  float *wq, *wqT, *grad, *m, *v;
  float **out;      /* hidden unit l: output after the pool (NHWC) = unit l + 1's input */
  float **mask;     /* hidden unit without a pool: STE (or ReLU) mask, shaped like out */
  int **idx;        /* pooled unit: per output, where its max sits in the conv output, or -1
                     * where the gradient stops (code clamped, or ReLU off in the warm-up) */
  float *pre;       /* a pooled unit's conv output before the pool (shared scratch) */
  float *dz;        /* dL/d(conv output) of the unit being differentiated; the pre-pool mask
                     * of a pooled unit in the forward pass */
  float *g;         /* dL/d(unit output), written by the next unit's backward */
  float *cols, *dcols, *gtmp, *tmp;
  const float *cols0; /* unit 0's column matrix of the minibatch, gathered from a table of the
                       * whole training set (see inag_qat_train_cnn), or NULL: im2col */
  float *pred, *dpred;
  float *scratch;
  int *iscratch;
} CNet;

static long lmax(long a, long b) { return a > b ? a : b; }

static void cnet_free(CNet *n) {
  free(n->w_off); free(n->b_off); free(n->tile); free(n->out); free(n->mask); free(n->idx);
  free(n->scratch); free(n->iscratch);
}

static int cnet_init(CNet *n, int L, const Unit *u, const int *w_qmax, const int *a_qmax,
                     int bsz) {
  memset(n, 0, sizeof *n);
  n->L = L; n->u = u; n->w_qmax = w_qmax; n->a_qmax = a_qmax;
  n->w_off = malloc(sizeof(long) * L);
  n->b_off = malloc(sizeof(long) * L);
  n->tile = calloc(L, sizeof(int));
  n->out = calloc(L, sizeof(float *));
  n->mask = calloc(L, sizeof(float *));
  n->idx = calloc(L, sizeof(int *));
  if (!n->w_off || !n->b_off || !n->tile || !n->out || !n->mask || !n->idx) return -1;
  long off = 0, acts = 0, masks = 0, idxs = 0, pre = 0, dz = 0, g = 0, cols = 0, wk = 0, fan = 0;
  for (int l = 0; l < L; l++) {
    const Unit *x = u + l;
    long K = u_fan(x), conv = (long)bsz * u_pos(x) * x->cout;
    n->w_off[l] = off; off += K * x->cout;
    n->b_off[l] = off; off += x->cout;
    fan = lmax(fan, K);
    wk = lmax(wk, K * x->cout);
    dz = lmax(dz, conv);
    if (conv > 2147483647L) return -1; /* pool indices are ints (maps beyond ~8 GB) */
    if (l > 0) g = lmax(g, (long)bsz * u_in(x));
    if (l < L - 1) {
      acts += (long)bsz * u_out(x);
      if (x->pool > 1) {
        idxs += (long)bsz * u_out(x);
        pre = lmax(pre, conv);
      } else {
        masks += conv;
      }
    }
    if (!(x->k == 1 && x->s == 1)) {
      long per = u_pos(x) * K, t = TILE_FLOATS / per;
      t = t < 1 ? 1 : t > bsz ? bsz : t;
      n->tile[l] = (int)t;
      cols = lmax(cols, t * per);
    }
  }
  n->n_params = off;
  long outsz = (long)bsz * u[L - 1].cout;
  long total = 5 * off + acts + masks + pre + dz + g + 2 * cols + wk + (long)VL * fan + 2 * outsz;
  n->scratch = calloc(total, sizeof(float));
  n->iscratch = calloc(idxs > 0 ? idxs : 1, sizeof(int));
  if (!n->scratch || !n->iscratch) return -1;
  float *p = n->scratch;
  n->wq = p; p += off;
  n->wqT = p; p += off;
  n->grad = p; p += off;
  n->m = p; p += off;
  n->v = p; p += off;
  int *q = n->iscratch;
  for (int l = 0; l < L - 1; l++) {
    n->out[l] = p; p += (long)bsz * u_out(u + l);
    if (u[l].pool > 1) {
      n->idx[l] = q; q += (long)bsz * u_out(u + l);
    } else {
      n->mask[l] = p; p += (long)bsz * u_pos(u + l) * u[l].cout;
    }
  }
  n->pre = p; p += pre;
  n->dz = p; p += dz;
  n->g = p; p += g;
  n->cols = p; p += cols;
  n->dcols = p; p += cols;
  n->gtmp = p; p += wk;
  n->tmp = p; p += (long)VL * fan;
  n->pred = p; p += outsz;
  n->dpred = p;
  return 0;
}

/* Rows of the column matrix for samples [n0, n0 + nt) of the NHWC input a: one row per output
 * position, (ky, kx, ci) per row, zeros where the kernel reaches into the padding. */
static void im2col(const Unit *u, const float *a, int n0, int nt, float *cols) {
  int k = u->k, H = u->h, W = u->w, C = u->cin;
  long row = (long)k * C;
  float *c = cols;
  for (int n = n0; n < n0 + nt; n++) {
    const float *an = a + (long)n * H * W * C;
    for (int oy = 0; oy < u->oh; oy++)
      for (int ox = 0; ox < u->ow; ox++) {
        int x0 = ox * u->s - u->pad;
        int kx0 = x0 < 0 ? -x0 : 0, kx1 = x0 + k > W ? W - x0 : k;
        for (int ky = 0; ky < k; ky++, c += row) {
          int iy = oy * u->s - u->pad + ky;
          /* plain loops, not memcpy/memset: the runs are short (k * cin floats; 1 channel
           * at the input), where a libc call costs more than the copy */
          if (iy < 0 || iy >= H || kx1 <= kx0) {
            for (long i = 0; i < row; i++) c[i] = 0.f;
            continue;
          }
          long lo = (long)kx0 * C, hi = (long)kx1 * C;
          const float *src = an + ((long)iy * W + x0 + kx0) * C;
          for (long i = 0; i < lo; i++) c[i] = 0.f;
          for (long i = lo; i < hi; i++) c[i] = src[i - lo];
          for (long i = hi; i < row; i++) c[i] = 0.f;
        }
      }
  }
}

/* da += col2im(dcols): the adjoint of im2col (padding positions are dropped). */
static void col2im_add(const Unit *u, const float *dcols, int n0, int nt, float *da) {
  int k = u->k, H = u->h, W = u->w, C = u->cin;
  long row = (long)k * C;
  const float *c = dcols;
  for (int n = n0; n < n0 + nt; n++) {
    float *dn = da + (long)n * H * W * C;
    for (int oy = 0; oy < u->oh; oy++)
      for (int ox = 0; ox < u->ow; ox++) {
        int x0 = ox * u->s - u->pad;
        int kx0 = x0 < 0 ? -x0 : 0, kx1 = x0 + k > W ? W - x0 : k;
        for (int ky = 0; ky < k; ky++, c += row) {
          int iy = oy * u->s - u->pad + ky;
          if (iy < 0 || iy >= H || kx1 <= kx0) continue;
          float *d = dn + ((long)iy * W + x0 + kx0) * C;
          const float *s = c + (long)kx0 * C;
          long len = (long)(kx1 - kx0) * C;
          for (long i = 0; i < len; i++) d[i] += s[i];
        }
      }
  }
}

/* The column matrix of samples [s0, s0 + nt) of unit l's input a. */
static const float *unit_cols(const CNet *n, int l, const float *a, int s0, int nt) {
  if (l == 0 && n->cols0) return n->cols0 + (long)s0 * u_pos(n->u) * u_fan(n->u);
  im2col(n->u + l, a, s0, nt, n->cols);
  return n->cols;
}

/* z = conv(a) + bias over b samples (epilogue e on the way out of the registers). */
static void conv_forward(const CNet *n, int l, const float *a, int b, const float *Wq,
                         const float *WqT, const float *bq, float *z, const Epi *e) {
  const Unit *u = n->u + l;
  int K = u_fan(u), N = u->cout, T = n->tile[l];
  long pos = u_pos(u);
  if (!T) {
    affine_w((int)(b * pos), K, N, a, Wq, WqT, bq, z, e);
    return;
  }
  for (int s0 = 0; s0 < b; s0 += T) {
    int nt = b - s0 < T ? b - s0 : T;
    const float *A = unit_cols(n, l, a, s0, nt);
    Epi et;
    if (e) {
      et = *e;
      if (et.relu_mask) et.relu_mask += s0 * pos * N;
    }
    affine_w((int)(nt * pos), K, N, A, Wq, WqT, bq, z + s0 * pos * N, e ? &et : NULL);
  }
}

/* gW = dL/dW and, if da, da = dL/d(input), from dz = dL/d(conv output). */
static void conv_backward(const CNet *n, int l, const float *a, int b, const float *dz,
                          float *gW, float *da) {
  const Unit *u = n->u + l;
  int K = u_fan(u), N = u->cout, T = n->tile[l];
  long pos = u_pos(u);
  const float *Wq = n->wq + n->w_off[l], *WqT = n->wqT + n->w_off[l];
  if (!T) {
    grad_w_w((int)(b * pos), K, N, a, dz, gW, n->tmp);
    if (da) affine_w((int)(b * pos), N, K, dz, WqT, Wq, NULL, da, NULL);
    return;
  }
  if (da) memset(da, 0, sizeof(float) * b * u_in(u));
  for (int s0 = 0; s0 < b; s0 += T) {
    int nt = b - s0 < T ? b - s0 : T;
    int R = (int)(nt * pos);
    const float *dzt = dz + s0 * pos * N;
    const float *A = unit_cols(n, l, a, s0, nt);
    if (s0 == 0) {
      grad_w_w(R, K, N, A, dzt, gW, n->tmp);
    } else {
      grad_w_w(R, K, N, A, dzt, n->gtmp, n->tmp);
      for (long i = 0; i < (long)K * N; i++) gW[i] += n->gtmp[i];
    }
    if (da) {
      affine_w(R, N, K, dzt, WqT, Wq, NULL, n->dcols, NULL);
      col2im_add(u, n->dcols, s0, nt, da);
    }
  }
}

/* Floor p x p max-pool of y (b, oh, ow, c) into out (b, ph, pw, c); idx holds each output's
 * source position (the first maximum of its window in row-major order), or -1 where the
 * pre-pool mask is 0 there. */
static void maxpool(const Unit *u, int b, const float *restrict y, const float *restrict mk,
                    float *restrict out, int *restrict idx) {
  int p = u->pool, C = u->cout;
  for (int n = 0; n < b; n++)
    for (int py = 0; py < u->ph; py++)
      for (int px = 0; px < u->pw; px++) {
        long o = (((long)n * u->ph + py) * u->pw + px) * C;
        int base = (int)((((long)n * u->oh + (long)py * p) * u->ow + (long)px * p) * C);
        float *restrict ov = out + o;
        int *restrict ix = idx + o;
        for (int c = 0; c < C; c++) {
          ov[c] = y[base + c];
          ix[c] = base + c;
        }
        for (int dy = 0; dy < p; dy++)
          for (int dx = 0; dx < p; dx++) {
            if (!dy && !dx) continue;
            int off = base + (dy * u->ow + dx) * C;
            for (int c = 0; c < C; c++) { /* selects, not branches: vectorized over c */
              float v = y[off + c];
              int better = v > ov[c];
              ov[c] = better ? v : ov[c];
              ix[c] = better ? off + c : ix[c];
            }
          }
        for (int c = 0; c < C; c++) ix[c] = mk[ix[c]] == 0.f ? -1 : ix[c];
      }
}

/* Forward pass of b samples of x (NHWC); as qat_mlp.c's forward, unit by unit. */
static void cnet_forward(CNet *n, const float *params, float *act_max, int *seen, float act_ema,
                         float s_x, const float *x, int b, int train, int quant) {
  float s_in = s_x;
  const float *a = x;
  for (int l = 0; l < n->L; l++) {
    const Unit *u = n->u + l;
    int K = u_fan(u), N = u->cout;
    const float *W = params + n->w_off[l], *bias = params + n->b_off[l];
    float *Wq = n->wq + n->w_off[l], *bq = n->wq + n->b_off[l];
    if (quant) {
      quant_unit(W, bias, K * N, N, n->w_qmax[l], s_in, Wq, bq);
    } else {
      memcpy(Wq, W, sizeof(float) * K * N);
      memcpy(bq, bias, sizeof(float) * N);
    }
    transpose(K, N, Wq, n->wqT + n->w_off[l]);
    const float *WqT = n->wqT + n->w_off[l];
    if (l == n->L - 1) {
      conv_forward(n, l, a, b, Wq, WqT, bq, n->pred, NULL);
      break;
    }
    int pooled = u->pool > 1;
    float *z = pooled ? n->pre : n->out[l];
    float *mk = pooled ? n->dz : n->mask[l];
    long sz = (long)b * u_pos(u) * N;
    v8f mv = splat(0.f);
    Epi e = {NULL, train ? &mv : NULL, quant ? NULL : mk};
    conv_forward(n, l, a, b, Wq, WqT, bq, z, train || !quant ? &e : NULL);
    if (train) {
      float m = 0.f;
      for (int i = 0; i < VL; i++) m = mv[i] > m ? mv[i] : m;
      act_max[l] = seen[l] ? act_ema * act_max[l] + (1.f - act_ema) * m : m;
      seen[l] = 1;
    }
    if (quant) {
      float qa = (float)n->a_qmax[l];
      float s_a = act_max[l] > 0.f ? act_max[l] / qa : 1.f;
      for (long i = 0; i < sz; i++) {
        float q = round_half_up(z[i] / s_a);
        float c = fmin_(fmax_(q, 0.f), qa);
        mk[i] = q == c ? 1.f : 0.f;
        z[i] = c * s_a;
      }
      s_in = s_a;
    }
    if (pooled) maxpool(u, b, z, mk, n->out[l], n->idx[l]);
    a = n->out[l];
  }
}

/* Gradients of every parameter for the minibatch x (after cnet_forward). */
static void cnet_backward(CNet *n, const float *x, int b) {
  for (int l = n->L - 1; l >= 0; l--) {
    const Unit *u = n->u + l;
    int N = u->cout;
    long conv = (long)b * u_pos(u) * N;
    const float *dz = n->dpred;
    if (l < n->L - 1) {
      float *d = n->dz;
      if (u->pool > 1) {
        const int *idx = n->idx[l];
        long m = (long)b * u_out(u);
        memset(d, 0, sizeof(float) * conv);
        for (long i = 0; i < m; i++)
          if (idx[i] >= 0) d[idx[i]] = n->g[i];
      } else {
        const float *mk = n->mask[l];
        for (long i = 0; i < conv; i++) d[i] = n->g[i] * mk[i];
      }
      dz = d;
    }
    colsum((int)(b * u_pos(u)), N, dz, n->grad + n->b_off[l]);
    /* dz is read before g is overwritten: the input gradient goes to g */
    conv_backward(n, l, l == 0 ? x : n->out[l - 1], b, dz, n->grad + n->w_off[l],
                  l > 0 ? n->g : NULL);
  }
}

/* Train one CNN; the arguments are inag_qat_train's, with `units` (L x 12 ints, see Unit)
 * in place of the widths, x in NHWC and params in this file's layout. Returns -1, the
 * 0-based epoch of a non-finite loss, or -2 if memory ran out. */
int inag_qat_train_cnn(int L, const int *units, const int *w_qmax, const int *a_qmax,
                       float *params, float *act_max, float s_x, const float *x,
                       const float *y_reg, const int64_t *y_cls, int n, const int *perm,
                       int epochs, int bsz, const float *lr, long quant_start, float act_ema,
                       float wd, float *epoch_loss) {
  const Unit *u = (const Unit *)units;
  CNet net;
  int b_max = bsz < n ? bsz : n;
  if (cnet_init(&net, L, u, w_qmax, a_qmax, b_max)) { cnet_free(&net); return -2; }
  long d_in = u_in(u);
  int *seen = calloc(L, sizeof(int));
  float *xb = malloc(sizeof(float) * b_max * d_in);
  if (!seen || !xb) { cnet_free(&net); free(seen); free(xb); return -2; }
  int classes = u[L - 1].cout;
  /* Unit 0 reads the training set, the same images every epoch: where it needs im2col, its
   * column matrix is built once for every sample, as the int8 input codes (every input is
   * code * s_x, checked here), and a minibatch's rows are gathered from it and scaled, one
   * contiguous block per sample, instead of being rebuilt from short kernel rows in every
   * forward and backward pass. (float)code * s_x is the very float the input holds, so the
   * numbers are the same either way; a table too large (PRECOLS_BYTES) is not built. */
  long per0 = u_pos(u) * u_fan(u);
  int8_t *table = NULL;
  float *cols0 = NULL;
  if (net.tile[0] && (long)n * per0 <= PRECOLS_BYTES) {
    table = malloc((size_t)n * per0);
    cols0 = malloc(sizeof(float) * b_max * per0);
    int ok = table && cols0;
    for (int i = 0; ok && i < n; i++) {
      im2col(u, x, i, 1, cols0);
      for (long j = 0; j < per0; j++) {
        float q = rintf(cols0[j] / s_x);
        ok &= fabsf(q) <= 127.f && q * s_x == cols0[j];
        table[(long)i * per0 + j] = (int8_t)q;
      }
    }
    if (!ok) { free(table); free(cols0); table = NULL; cols0 = NULL; } /* im2col instead */
  }
  long step = 0;
  int status = -1;
  for (int e = 0; e < epochs && status == -1; e++) {
    const int *order = perm + (long)e * n;
    double total = 0.0;
    for (int s0 = 0; s0 < n; s0 += bsz) {
      int b = n - s0 < bsz ? n - s0 : bsz;
      if (cols0) { /* unit 0 reads its columns only */
        for (int i = 0; i < b; i++) {
          const int8_t *t = table + (long)order[s0 + i] * per0;
          float *c = cols0 + i * per0;
          for (long j = 0; j < per0; j++) c[j] = (float)t[j] * s_x;
        }
      } else
        for (int i = 0; i < b; i++)
          memcpy(xb + i * d_in, x + (long)order[s0 + i] * d_in, sizeof(float) * d_in);
      net.cols0 = cols0;
      int quant = step >= quant_start;
      cnet_forward(&net, params, act_max, seen, act_ema, s_x, xb, b, 1, quant);
      float loss = loss_grad(net.pred, y_reg, y_cls, order + s0, b, classes, net.dpred);
      if (!isfinite(loss)) { status = e; break; }
      cnet_backward(&net, xb, b);
      step++;
      adam_update(net.n_params, params, net.grad, net.m, net.v, step, lr[step - 1], wd);
      total += (double)loss * b;
    }
    epoch_loss[e] = (float)(total / n);
  }
  cnet_free(&net);
  free(seen);
  free(xb);
  free(table);
  free(cols0);
  return status;
}

/* Quantized inference of a trained CNN on n samples of x (NHWC): out is n x classes. */
int inag_qat_predict_cnn(int L, const int *units, const int *w_qmax, const int *a_qmax,
                         const float *params, const float *act_max, float s_x, const float *x,
                         int n, int bsz, float *out) {
  const Unit *u = (const Unit *)units;
  CNet net;
  int b_max = bsz < n ? bsz : n;
  if (cnet_init(&net, L, u, w_qmax, a_qmax, b_max)) { cnet_free(&net); return -2; }
  int *seen = calloc(L, sizeof(int));
  float *am = malloc(sizeof(float) * L);
  if (!seen || !am) { cnet_free(&net); free(seen); free(am); return -2; }
  memcpy(am, act_max, sizeof(float) * (L - 1));
  int c = u[L - 1].cout;
  long d_in = u_in(u);
  for (int s0 = 0; s0 < n; s0 += bsz) {
    int b = n - s0 < bsz ? n - s0 : bsz;
    cnet_forward(&net, params, am, seen, 0.f, s_x, x + (long)s0 * d_in, b, 0, 1);
    memcpy(out + (long)s0 * c, net.pred, sizeof(float) * (long)b * c);
  }
  cnet_free(&net);
  free(seen);
  free(am);
  return 0;
}
