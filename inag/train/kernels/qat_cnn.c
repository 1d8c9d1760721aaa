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
 * its columns from a table of the training set's input codes (cnet_table).
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
 * their column strips 16 floats wide: qat_mlp.c's GEMM kernels instantiated for 16 lanes
 * (32 registers here, so 8 rows x 2 vectors of accumulators), and its 8-wide ones take the
 * columns left over. The MLP kernels keep their own (8-wide) summation order, so their numbers
 * do not change. */
#if defined(__AVX512F__)
VEC_TYPES(16, 16)
INLINE v16f splat16(float x) { return (v16f){0} + x; }
/* 16 wide: the block's maximum starts at 0 and is folded into the 8 lanes of *e->max. */
INLINE v16f max_start16(const v8f *acc) { (void)acc; return splat16(0.f); }
INLINE void max_end16(v8f *acc, v16f m) {
  v8f lo = {m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]};
  v8f hi = {m[8], m[9], m[10], m[11], m[12], m[13], m[14], m[15]};
  *acc = vmax(*acc, vmax(lo, hi));
}
GEMM_KERNELS(16, 16, 8)
#endif

/* A Matmul (see affine_mm): 16 columns at a time where AVX-512 is there, then matmul8. */
static int matmul_wide(int R, int T, int N, const float *A, long ar, long at, const float *B,
                       long ldb, const float *bias, float *C, long ldc, const Epi *e) {
  int j = 0;
#if defined(__AVX512F__)
  j = matmul16(R, T, N, A, ar, at, B, ldb, bias, C, ldc, e);
  if (j == N) return j;
#endif
  Epi er;
  if (e) epi_at(e, &er, j);
  return j + matmul8(R, T, N - j, A, ar, at, B + j, ldb, bias ? bias + j : 0, C + j, ldc,
                     e ? &er : 0);
}

/* qat_mlp.c's affine and grad_w on the wide GEMM. */
static void affine_w(int R, int K, int N, const float *A, const float *W, const float *WT,
                     const float *bias, float *C, const Epi *e) {
  affine_mm(matmul_wide, R, K, N, A, W, WT, bias, C, e);
}

static void grad_w_w(int R, int K, int N, const float *A, const float *dZ, float *gW,
                     float *tmp) {
  grad_w_mm(matmul_wide, R, K, N, A, dZ, gW, tmp);
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
  float *cols0;     /* unit 0's column matrix of the minibatch, gathered from table, or NULL:
                     * im2col */
  int8_t *table;    /* unit 0's columns of the whole training set as input codes (cnet_table) */
  float table_scale; /* the input scale s_x of those codes */
  float *pred, *dpred;
  float *scratch;
  int *iscratch;
} CNet;

static long lmax(long a, long b) { return a > b ? a : b; }

static void cnet_free(CNet *n) {
  free(n->w_off); free(n->b_off); free(n->tile); free(n->out); free(n->mask); free(n->idx);
  free(n->scratch); free(n->iscratch); free(n->cols0); free(n->table);
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
  float *p = param_buffers(n->scratch, off, &n->wq, &n->wqT, &n->grad, &n->m, &n->v);
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

/* The column matrix of samples [n0, n0 + nt) of an NHWC input: one row per output position,
 * (ky, kx, ci) per row, walked a kernel row ky at a time, of which the columns [kx0, kx1) lie
 * inside the input (none where ky is in the padding). adjoint = 0 (im2col): src is the input, dst
 * the column matrix, zeros where the kernel reaches into the padding. adjoint = 1 (col2im_add):
 * src is the column matrix, added into the input dst (padding positions are dropped). Always
 * inlined with a constant adjoint: each direction is its own loop nest. */
INLINE void im2col_walk(const Unit *u, int n0, int nt, const float *src, float *dst,
                        int adjoint) {
  int k = u->k, H = u->h, W = u->w, C = u->cin;
  long row = (long)k * C, c = 0; /* c: the row's offset in the column matrix */
  for (int n = n0; n < n0 + nt; n++) {
    long an = (long)n * H * W * C;
    for (int oy = 0; oy < u->oh; oy++)
      for (int ox = 0; ox < u->ow; ox++) {
        int x0 = ox * u->s - u->pad;
        int kx0 = x0 < 0 ? -x0 : 0, kx1 = x0 + k > W ? W - x0 : k;
        for (int ky = 0; ky < k; ky++, c += row) {
          int iy = oy * u->s - u->pad + ky;
          int padding = iy < 0 || iy >= H || kx1 <= kx0;
          long lo = (long)kx0 * C, hi = (long)kx1 * C;
          long at = an + ((long)iy * W + x0 + kx0) * C; /* input offset of column lo */
          /* plain loops, not memcpy/memset: the runs are short (k * cin floats; 1 channel
           * at the input), where a libc call costs more than the copy */
          if (adjoint) {
            if (padding) continue;
            float *d = dst + at;
            const float *s = src + c + lo;
            for (long i = 0; i < hi - lo; i++) d[i] += s[i];
            continue;
          }
          float *d = dst + c;
          if (padding) {
            for (long i = 0; i < row; i++) d[i] = 0.f;
            continue;
          }
          const float *s = src + at;
          for (long i = 0; i < lo; i++) d[i] = 0.f;
          for (long i = lo; i < hi; i++) d[i] = s[i - lo];
          for (long i = hi; i < row; i++) d[i] = 0.f;
        }
      }
  }
}

/* cols = the column matrix of samples [n0, n0 + nt) of the NHWC input a. */
static void im2col(const Unit *u, const float *a, int n0, int nt, float *cols) {
  im2col_walk(u, n0, nt, a, cols, 0);
}

/* da += col2im(dcols): the adjoint of im2col. */
static void col2im_add(const Unit *u, const float *dcols, int n0, int nt, float *da) {
  im2col_walk(u, n0, nt, dcols, da, 1);
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
static void cnet_forward(void *self, const float *params, float *act_max, int *seen,
                         float act_ema, float s_x, const float *x, int b, int train, int quant) {
  CNet *n = self;
  float s_in = s_x;
  const float *a = x;
  for (int l = 0; l < n->L; l++) {
    const Unit *u = n->u + l;
    int K = u_fan(u), N = u->cout;
    unit_weights(params, n->w_off[l], n->b_off[l], K, N, n->w_qmax[l], s_in, quant, n->wq,
                 n->wqT);
    const float *Wq = n->wq + n->w_off[l], *bq = n->wq + n->b_off[l];
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
    s_in = unit_output(l, &mv, act_max, seen, act_ema, n->a_qmax[l], s_in, z, mk, sz, train,
                       quant);
    if (pooled) maxpool(u, b, z, mk, n->out[l], n->idx[l]);
    a = n->out[l];
  }
}

/* Gradients of every parameter for the minibatch x (after cnet_forward). */
static void cnet_backward(void *self, const float *x, int b) {
  CNet *n = self;
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

/* Unit 0 reads the training set, the same images every epoch: where it needs im2col, its
 * column matrix is built once for every sample (count of x, NHWC), as the int8 input codes
 * (every input is code * s_x, checked here), and a minibatch's rows are gathered from it and
 * scaled (cnet_gather), one contiguous block per sample, instead of being rebuilt from short
 * kernel rows in every forward and backward pass. (float)code * s_x is the very float the
 * input holds, so the numbers are the same either way; a table too large (PRECOLS_BYTES) is
 * not built, nor one of inputs that are not codes: unit 0 runs im2col then. */
static void cnet_table(CNet *n, const float *x, int count, float s_x, int b_max) {
  const Unit *u = n->u;
  long per0 = u_pos(u) * u_fan(u);
  if (!n->tile[0] || (long)count * per0 > PRECOLS_BYTES) return;
  int8_t *table = malloc((size_t)count * per0);
  float *cols0 = malloc(sizeof(float) * b_max * per0);
  int ok = table && cols0;
  for (int i = 0; ok && i < count; i++) {
    im2col(u, x, i, 1, cols0);
    for (long j = 0; j < per0; j++) {
      float q = rintf(cols0[j] / s_x);
      ok &= fabsf(q) <= 127.f && q * s_x == cols0[j];
      table[(long)i * per0 + j] = (int8_t)q;
    }
  }
  if (!ok) { free(table); free(cols0); return; }
  n->table = table;
  n->cols0 = cols0;
  n->table_scale = s_x;
}

/* Model.gather: with a table, unit 0's columns of training samples idx[0, b) only. */
static int cnet_gather(void *self, const int *idx, int b) {
  CNet *n = self;
  if (!n->table) return 0;
  long per0 = u_pos(n->u) * u_fan(n->u);
  for (int i = 0; i < b; i++) {
    const int8_t *t = n->table + (long)idx[i] * per0;
    float *c = n->cols0 + i * per0;
    for (long j = 0; j < per0; j++) c[j] = (float)t[j] * n->table_scale;
  }
  return 1;
}

static Model cnet_model(CNet *n) {
  return (Model){n, cnet_forward, cnet_backward, cnet_gather, n->L, n->u[n->L - 1].cout,
                 u_in(n->u), n->n_params, n->grad, n->m, n->v, n->pred, n->dpred};
}

/* Train one CNN; the arguments are inag_qat_train's, with `units` (L x 12 ints, see Unit)
 * in place of the widths, x in NHWC and params in this file's layout. Returns -1, the
 * 0-based epoch of a non-finite loss, or -2 if memory ran out. */
int inag_qat_train_cnn(int L, const int *units, const int *w_qmax, const int *a_qmax,
                       float *params, float *act_max, float s_x, const float *x,
                       const float *y_reg, const int64_t *y_cls, int n, const int *perm,
                       int epochs, int bsz, const float *lr, long quant_start, float act_ema,
                       float wd, float *epoch_loss) {
  CNet net;
  int status = -2, b_max = bsz < n ? bsz : n;
  if (!cnet_init(&net, L, (const Unit *)units, w_qmax, a_qmax, b_max)) {
    cnet_table(&net, x, n, s_x, b_max);
    status = train_loop(cnet_model(&net), params, act_max, s_x, x, y_reg, y_cls, n, perm,
                        epochs, bsz, lr, quant_start, act_ema, wd, epoch_loss);
  }
  cnet_free(&net);
  return status;
}

/* Quantized inference of a trained CNN on n samples of x (NHWC): out is n x classes. */
int inag_qat_predict_cnn(int L, const int *units, const int *w_qmax, const int *a_qmax,
                         const float *params, const float *act_max, float s_x, const float *x,
                         int n, int bsz, float *out) {
  CNet net;
  int status = -2;
  if (!cnet_init(&net, L, (const Unit *)units, w_qmax, a_qmax, bsz < n ? bsz : n))
    status = predict_loop(cnet_model(&net), params, act_max, s_x, x, n, bsz, out);
  cnet_free(&net);
  return status;
}
