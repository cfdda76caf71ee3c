/* What both model implementations share: shapes, the spiral data set, the random generator, the
 * initial parameters and the error message. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mlp.h"

static const double pi = 3.14159265358979323846;

size_t mlp_kernel_count(const mlp_shape_t *shape, int layer) {
  return (size_t)shape->sizes[layer] * (size_t)shape->sizes[layer + 1];
}

size_t mlp_bias_count(const mlp_shape_t *shape, int layer) { return (size_t)shape->sizes[layer + 1]; }

size_t mlp_param_count(const mlp_shape_t *shape) {
  size_t total = 0;
  for (int l = 0; l < shape->num_layers; l++) total += mlp_kernel_count(shape, l) + mlp_bias_count(shape, l);
  return total;
}

static char last_error[512];

int mlp_fail(const char *format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(last_error, sizeof last_error, format, args);
  va_end(args);
  return -1;
}

const char *mlp_last_error(void) { return last_error; }

/* splitmix64 (Steele, Lea, Flood 2014): every seed is a good seed, and streams derived by mixing
 * the seed with a stream number do not overlap in practice. */
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

mlp_rng_t mlp_rng(uint64_t seed, uint64_t stream) {
  mlp_rng_t rng = {mix64(seed) ^ mix64(stream + 0x9e3779b97f4a7c15ULL)};
  return rng;
}

uint64_t mlp_rng_next(mlp_rng_t *rng) {
  rng->state += 0x9e3779b97f4a7c15ULL;
  return mix64(rng->state);
}

double mlp_rng_uniform(mlp_rng_t *rng) { return (double)(mlp_rng_next(rng) >> 11) * 0x1.0p-53; }

/* Box-Muller; the second value is dropped so that the state stays one number. */
double mlp_rng_normal(mlp_rng_t *rng) {
  double u = 1.0 - mlp_rng_uniform(rng); /* (0, 1]: log(u) is finite */
  double v = mlp_rng_uniform(rng);
  return sqrt(-2.0 * log(u)) * cos(2.0 * pi * v);
}

void mlp_shuffle(int32_t *order, int n, mlp_rng_t *rng) {
  for (int i = 0; i < n; i++) order[i] = i;
  for (int i = n - 1; i > 0; i--) {
    int j = (int)(mlp_rng_next(rng) % (uint64_t)(i + 1));
    int32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
}

void mlp_init_params(const mlp_shape_t *shape, float *params, uint64_t seed) {
  mlp_rng_t rng = mlp_rng(seed, 2);
  float *p = params;
  for (int l = 0; l < shape->num_layers; l++) {
    double limit = sqrt(6.0 / (double)(shape->sizes[l] + shape->sizes[l + 1]));
    for (size_t i = 0; i < mlp_kernel_count(shape, l); i++) *p++ = (float)((2.0 * mlp_rng_uniform(&rng) - 1.0) * limit);
    for (size_t i = 0; i < mlp_bias_count(shape, l); i++) *p++ = 0.0f;
  }
}

static int alloc_split(mlp_split_t *split, int n, int dim, int classes) {
  split->n = n;
  split->dim = dim;
  split->classes = classes;
  split->x = malloc((size_t)n * (size_t)dim * sizeof *split->x);
  split->y = malloc((size_t)n * sizeof *split->y);
  if (!split->x || !split->y) return mlp_fail("out of memory for %d points", n);
  return 0;
}

/* Each arm starts away from the centre (where all arms would meet and no class could be told
 * apart) and turns 1.25 times. */
int mlp_make_spirals(mlp_dataset_t *data, int points, int classes, double noise, double test_fraction,
                     uint64_t seed) {
  memset(data, 0, sizeof *data);
  int test = (int)lround(points * test_fraction);
  if (classes < 2 || classes > MLP_MAX_CLASSES)
    return mlp_fail("--classes %d: must lie in [2, %d]", classes, MLP_MAX_CLASSES);
  if (points < 2 * classes || points > 10000000)
    return mlp_fail("--points %d: must lie in [%d, 10000000] (two per class at least)", points, 2 * classes);
  if (!(test_fraction > 0.0 && test_fraction < 1.0) || test < 1 || test >= points)
    return mlp_fail("--test-fraction %g: leaves no training or no test point of %d", test_fraction, points);
  if (!(noise >= 0.0 && noise <= 10.0)) return mlp_fail("--noise %g: must lie in [0, 10]", noise);

  mlp_split_t all;
  int status = alloc_split(&all, points, 2, classes);
  int32_t *order = malloc((size_t)points * sizeof *order);
  if (status == 0 && !order) status = mlp_fail("out of memory for %d points", points);
  if (status == 0) status = alloc_split(&data->train, points - test, 2, classes);
  if (status == 0) status = alloc_split(&data->test, test, 2, classes);
  if (status == 0) {
    mlp_rng_t rng = mlp_rng(seed, 0);
    for (int i = 0; i < points; i++) {
      int c = i % classes;
      double t = (double)(i / classes) / (double)((points + classes - 1) / classes);
      double r = 0.15 + 0.85 * t;
      double theta = 2.0 * pi * ((double)c / classes + 1.25 * t);
      all.x[2 * i] = (float)(r * cos(theta) + noise * mlp_rng_normal(&rng));
      all.x[2 * i + 1] = (float)(r * sin(theta) + noise * mlp_rng_normal(&rng));
      all.y[i] = c;
    }
    mlp_rng_t split_rng = mlp_rng(seed, 1);
    mlp_shuffle(order, points, &split_rng);
    for (int i = 0; i < points; i++) {
      mlp_split_t *to = i < points - test ? &data->train : &data->test;
      int k = i < points - test ? i : i - (points - test);
      memcpy(&to->x[2 * k], &all.x[2 * order[i]], 2 * sizeof(float));
      to->y[k] = all.y[order[i]];
    }
  }
  free(all.x);
  free(all.y);
  free(order);
  if (status != 0) mlp_free_dataset(data);
  return status;
}

void mlp_free_dataset(mlp_dataset_t *data) {
  free(data->train.x);
  free(data->train.y);
  free(data->test.x);
  free(data->test.y);
  memset(data, 0, sizeof *data);
}
