/* Muon's Newton-Schulz iteration on the host backend (keras/src/optimizers/muon.py,
 * zeropower_via_newtonschulz5), in plain loops: each matrix product element is the sum over k in
 * ascending order, of float32 products, accumulated in double and rounded once, so the host's
 * products are as close to the exact sums as float32 allows (XLA's and cuBLAS's float32 sums,
 * in their own order, differ from it by a few ulps). The element-wise scalings round in float32
 * as Keras's ops do. */
#include <stdint.h>

#include "internal.h"

/* out (r x r) = in in^T for a matrix in (r x c). */
static void gram(const float *in, int64_t r, int64_t c, float *out) {
  for (int64_t i = 0; i < r; i++)
    for (int64_t j = 0; j < r; j++) {
      double sum = 0.0;
      for (int64_t k = 0; k < c; k++) sum += (double)(in[i * c + k] * in[j * c + k]);
      out[i * r + j] = (float)sum;
    }
}

/* B = b A + (c A) A for the r x r matrix A: Keras's temp_b = b * temp_a + c * temp_a @ temp_a. */
static void polynomial(const float *a_mat, int64_t r, float b, float c, float *b_mat) {
  for (int64_t i = 0; i < r; i++)
    for (int64_t j = 0; j < r; j++) {
      double sum = 0.0;
      for (int64_t k = 0; k < r; k++) sum += (double)((c * a_mat[i * r + k]) * a_mat[k * r + j]);
      b_mat[i * r + j] = b * a_mat[i * r + j] + (float)sum;
    }
}

/* y (r x c) = a x + B x. */
static void combine(const float *b_mat, const float *x, int64_t r, int64_t c, float a, float *y) {
  for (int64_t i = 0; i < r; i++)
    for (int64_t j = 0; j < c; j++) {
      double sum = 0.0;
      for (int64_t k = 0; k < r; k++) sum += (double)(b_mat[i * r + k] * x[k * c + j]);
      y[i * c + j] = a * x[i * c + j] + (float)sum;
    }
}

float *cuoptim_host_newton_schulz(const cuoptimRuleParams *p, float *x, float *y, float *a_mat, float *b_mat,
                                  int64_t r, int64_t c) {
  for (int32_t step = 0; step < p->muon_ns_steps; step++) {
    gram(x, r, c, a_mat);
    polynomial(a_mat, r, p->muon_b, p->muon_c, b_mat);
    combine(b_mat, x, r, c, p->muon_a, y);
    float *t = x;
    x = y;
    y = t;
  }
  return x;
}
