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
 * of two floats does not depend on their order), so its lower triangle is copied from the upper. */
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

/* out (r x r) = in in^T for a matrix in (r x c); in_t (c x r) receives in's transpose, so that
 * the columns of in^T are contiguous. Only j >= i is summed. */
static void gram(const float *in, int64_t r, int64_t c, float *in_t, float *out) {
  double acc[TILE];
  for (int64_t i = 0; i < r; i++)
    for (int64_t k = 0; k < c; k++) in_t[k * r + i] = in[i * c + k];
  for (int64_t i = 0; i < r; i++)
    for (int64_t j0 = i; j0 < r; j0 += TILE) {
      int64_t width = r - j0 < TILE ? r - j0 : TILE;
      row_tile(in + i * c, 1.0f, in_t + j0, c, r, width, acc);
      for (int64_t j = 0; j < width; j++) out[i * r + j0 + j] = (float)acc[j];
    }
  for (int64_t i = 1; i < r; i++)
    for (int64_t j = 0; j < i; j++) out[i * r + j] = out[j * r + i];
}

/* B = b A + (c A) A for the r x r matrix A: Keras's temp_b = b * temp_a + c * temp_a @ temp_a. */
static void polynomial(const float *a_mat, int64_t r, float b, float c, float *b_mat) {
  double acc[TILE];
  for (int64_t i = 0; i < r; i++)
    for (int64_t j0 = 0; j0 < r; j0 += TILE) {
      int64_t width = r - j0 < TILE ? r - j0 : TILE;
      row_tile(a_mat + i * r, c, a_mat + j0, r, r, width, acc);
      for (int64_t j = 0; j < width; j++) b_mat[i * r + j0 + j] = b * a_mat[i * r + j0 + j] + (float)acc[j];
    }
}

/* y (r x c) = a x + B x. */
static void combine(const float *b_mat, const float *x, int64_t r, int64_t c, float a, float *y) {
  double acc[TILE];
  for (int64_t i = 0; i < r; i++)
    for (int64_t j0 = 0; j0 < c; j0 += TILE) {
      int64_t width = c - j0 < TILE ? c - j0 : TILE;
      row_tile(b_mat + i * r, 1.0f, x + j0, r, c, width, acc);
      for (int64_t j = 0; j < width; j++) y[i * c + j0 + j] = a * x[i * c + j0 + j] + (float)acc[j];
    }
}

float *cuoptim_host_newton_schulz(const cuoptimRuleParams *p, float *x, float *y, float *a_mat, float *b_mat,
                                  int64_t r, int64_t c) {
  for (int32_t step = 0; step < p->muon_ns_steps; step++) {
    gram(x, r, c, y, a_mat); /* y is free until combine writes it */
    polynomial(a_mat, r, p->muon_b, p->muon_c, b_mat);
    combine(b_mat, x, r, c, p->muon_a, y);
    float *t = x;
    x = y;
    y = t;
  }
  return x;
}
