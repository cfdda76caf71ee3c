/* Muon's Newton-Schulz iteration on the host backend (keras/src/optimizers/muon.py,
 * zeropower_via_newtonschulz5), in plain loops: each matrix product element is the sum over k in
 * ascending order, of float32 products, accumulated in double and rounded once, so the host's
 * products are as close to the exact sums as float32 allows (XLA's and cuBLAS's float32 sums,
 * in their own order, differ from it by a few ulps). The element-wise scalings round in float32
 * as Keras's ops do.
 *
 * Speed without changing a bit: a row of a product is formed TILE columns at a time, each column
 * in its own double, all of them walking k in ascending order together; the innermost loop runs
 * over the columns (contiguous in the right-hand matrix), so the compiler vectorizes it, and no
 * column's sum waits on another's additions. The Gram matrix is symmetric bit for bit (a product
 * of two floats does not depend on their order), so its lower triangle is copied from the upper.
 * Large products share their rows among the host backend's threads; each element is one thread's
 * work, so the result never depends on the number of threads. */
#include <stddef.h>
#include <stdint.h>

#include "internal.h"

#define TILE 256 /* columns of a product row summed side by side (2 KiB of doubles) */

/* acc[j] = the sum over k ascending of (double)((scale * lhs_row[k]) * rhs[k * cols + j]), for j
 * in [0, width): one tile of a row of (scale lhs) rhs. scale is 1 where the product has none
 * (1 * x is x exactly). */
static void row_tile(const float *lhs_row, float scale, const float *rhs, int64_t inner, int64_t cols, int64_t width,
                     double *acc) {
  for (int64_t j = 0; j < width; j++) acc[j] = 0.0;
  for (int64_t k = 0; k < inner; k++) {
    const float l = scale * lhs_row[k];
    const float *rk = rhs + k * cols;
    for (int64_t j = 0; j < width; j++) acc[j] += (double)(l * rk[j]);
  }
}

/* One product of the iteration, its rows shared among the threads: rows [first, last) of
 * (scale lhs) rhs (lhs: rows x inner, rhs: inner x cols), each element then written as
 * keep * base[i][j] + sum (keep == 0: the sum alone). Gram: only j >= i is summed. */
typedef struct {
  const float *lhs, *rhs, *base;
  float *out;
  int64_t rows, inner, cols;
  float scale, keep;
  int upper; /* the Gram matrix: only its upper triangle */
} Product;

static void product_rows(const Product *pr, int64_t first, int64_t last) {
  double acc[TILE];
  for (int64_t i = first; i < last; i++)
    for (int64_t j0 = pr->upper ? i : 0; j0 < pr->cols; j0 += TILE) {
      int64_t width = pr->cols - j0 < TILE ? pr->cols - j0 : TILE;
      row_tile(pr->lhs + i * pr->inner, pr->scale, pr->rhs + j0, pr->inner, pr->cols, width, acc);
      float *out = pr->out + i * pr->cols + j0;
      if (pr->base == NULL) {
        for (int64_t j = 0; j < width; j++) out[j] = (float)acc[j];
      } else {
        const float *base = pr->base + i * pr->cols + j0;
        for (int64_t j = 0; j < width; j++) out[j] = pr->keep * base[j] + (float)acc[j];
      }
    }
}

/* Worker w of n takes rows in interleaved blocks of 4 (the Gram matrix's rows shrink). Every
 * element is computed by one thread in the same order whatever the number of threads. */
static void product_task(void *context, int worker, int workers) {
  const Product *pr = context;
  for (int64_t i = 4 * (int64_t)worker; i < pr->rows; i += 4 * (int64_t)workers)
    product_rows(pr, i, i + 4 < pr->rows ? i + 4 : pr->rows);
}

/* Products below this many multiply-adds run on the calling thread alone: waking the others
 * would cost about as much. */
#define PARALLEL_MIN_PRODUCTS ((int64_t)1 << 20)

static void run_product(const Product *pr, int threads) {
  int64_t work = pr->rows * pr->inner * pr->cols;
  cuoptim_host_run(work < PARALLEL_MIN_PRODUCTS ? 1 : threads, product_task, (void *)pr);
}

/* out (r x r) = in in^T for a matrix in (r x c); in_t (c x r) receives in's transpose, so that
 * the columns of in^T are contiguous. Only j >= i is summed; the rest is copied. */
static void gram(const float *in, int64_t r, int64_t c, float *in_t, float *out, int threads) {
  for (int64_t i = 0; i < r; i++)
    for (int64_t k = 0; k < c; k++) in_t[k * r + i] = in[i * c + k];
  const Product pr = {in, in_t, NULL, out, r, c, r, 1.0f, 0.0f, 1};
  run_product(&pr, threads);
  for (int64_t i = 1; i < r; i++)
    for (int64_t j = 0; j < i; j++) out[i * r + j] = out[j * r + i];
}

/* B = b A + (c A) A for the r x r matrix A: Keras's temp_b = b * temp_a + c * temp_a @ temp_a. */
static void polynomial(const float *a_mat, int64_t r, float b, float c, float *b_mat, int threads) {
  const Product pr = {a_mat, a_mat, a_mat, b_mat, r, r, r, c, b, 0};
  run_product(&pr, threads);
}

/* y (r x c) = a x + B x. */
static void combine(const float *b_mat, const float *x, int64_t r, int64_t c, float a, float *y, int threads) {
  const Product pr = {b_mat, x, x, y, r, r, c, 1.0f, a, 0};
  run_product(&pr, threads);
}

float *cuoptim_host_newton_schulz(const cuoptimRuleParams *p, float *x, float *y, float *a_mat, float *b_mat,
                                  int64_t r, int64_t c, int threads) {
  for (int32_t step = 0; step < p->muon_ns_steps; step++) {
    gram(x, r, c, y, a_mat, threads); /* y is free until combine writes it */
    polynomial(a_mat, r, p->muon_b, p->muon_c, b_mat, threads);
    combine(b_mat, x, r, c, p->muon_a, y, threads);
    float *t = x;
    x = y;
    y = t;
  }
  return x;
}
