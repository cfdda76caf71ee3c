/*
 * test_cuda.c — the CUDA backend gives the results of the host backend (the reference).
 *
 * Every test runs one problem on CUOPTIM_BACKEND_HOST and on CUOPTIM_BACKEND_CUDA and compares all
 * that the API lets a caller observe: the parameters, every optimizer state entry
 * (cuoptimGetWeightCount/Info/Weights: names, sizes, values), cuoptimGetIterations,
 * cuoptimGetLearningRate, the dynamic loss scale and the weight-decay decision per variable.
 *
 * The problem (run_problem): variables of 1, 3, 4095, 65537 and 100001 elements (not multiples of
 * the block, the 4-wide vectors or the 8192-element chunk), deterministic pseudo-random parameters
 * and gradients of magnitudes 1e-3 .. 6 (never zero), about six steps. Every caller buffer sits in a
 * pool between guard bands filled with 0xff bytes (NaN in every dtype): a kernel that reads outside
 * a buffer pulls NaN into the results, one that writes outside is caught by the guard check, and the
 * gradients must come back unmodified.
 *
 * Tolerance: |cuda - host| <= RTOL * |host| + atol, RTOL = 1e-6.
 *   Where the backends may legitimately differ, the difference comes from a per-step scalar a few
 *   float32 ulps apart: device powf/cosf/logf against glibc's in bias corrections, Nadam's
 *   momentum schedule and learning-rate schedules, or the (fixed but different) order in which the
 *   double-precision sums behind clipnorm, global_clipnorm and Lamb's trust ratio are added. Such a
 *   scalar scales a whole update or a whole gradient.
 *   - Parameters (magnitude 1e-3 .. 6): atol = 1e-7. A few ulps (< 1e-6 relative) of at most six
 *     updates of at most ~0.05 each stay below 1e-7 even for a parameter that cancelled to ~0,
 *     while a wrong rule, a skipped element or a wrong step moves a parameter by a whole update
 *     (>= 1e-5 here).
 *   - State entries: atol = 1e-7 x the entry's largest magnitude. A fixed atol would leave small
 *     entries unchecked (Adam's velocity of 1e-3-sized gradients is ~1e-9) and mean nothing for
 *     large ones (Ftrl's linear reaches ~1e3); an element of an entry that cancelled to ~0 keeps an
 *     error of the order of the entry's scale times those few ulps.
 *   - Integer counters, the loss scale (a power of two times the initial one) and the variable
 *     names/sizes: exact.
 * Bitwise: optimizers whose step uses only +, -, *, /, sqrt and comparisons (SGD, RMSprop, Adagrad,
 * Adadelta, Lion, Ftrl with learning_rate_power 0), with a constant or piecewise-constant learning
 * rate and no norm-based clipping, must agree bit for bit: the same IEEE float32 operations in the
 * same order on both sides (host C with -ffp-contract=off, kernels with -fmad=false, correctly
 * rounded division and sqrtf on both). Those tests run with MATCH_BITWISE.
 *
 * Without a usable CUDA device every test calls cr_skip.
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "launch.h" /* the check of the fast square root and division */
#include "testutil.h"
#ifdef CUOPTIM_TEST_EMULATED_DEVICE
#include "control.h" /* which update kernels ran */
#endif

/* ---- checks ------------------------------------------------------------------------------------ */

#define NEED_GPU()                                                                 \
  do {                                                                             \
    if (!test_has_gpu()) cr_skip("no usable CUDA device: CUDA backend test skipped"); \
  } while (0)

#define RTOL 1e-6
#define PARAM_ATOL 1e-7
#define STATE_ATOL_RELATIVE 1e-7

enum { MATCH_CLOSE = 0, MATCH_BITWISE = 1 };

/* ---- data: deterministic pseudo-random values, float16/bfloat16 ------------------------------- */

static const char *dtype_text(cuoptimDtype_t dtype) {
  return dtype == CUOPTIM_FLOAT16 ? "float16" : dtype == CUOPTIM_BFLOAT16 ? "bfloat16" : "float32";
}

static float load_element(const void *base, cuoptimDtype_t dtype, size_t i) {
  if (dtype == CUOPTIM_FLOAT32) {
    float f;
    memcpy(&f, (const char *)base + i * 4, 4);
    return f;
  }
  uint16_t h;
  memcpy(&h, (const char *)base + i * 2, 2);
  return dtype == CUOPTIM_FLOAT16 ? test_from_half(h) : test_from_bfloat16(h);
}

static uint16_t load_bits16(const void *base, size_t i) {
  uint16_t h;
  memcpy(&h, (const char *)base + i * 2, 2);
  return h;
}

static int half_is_nan(cuoptimDtype_t dtype, uint16_t h) {
  return dtype == CUOPTIM_FLOAT16 ? (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) : (h & 0x7f80u) == 0x7f80u && (h & 0x7fu);
}

/* Distance in units in the last place between two 16-bit floats of the same type (sign-magnitude
 * mapped to a line; +0 and -0 coincide). */
static int half_ulps(uint16_t a, uint16_t b) {
  int ia = (a & 0x8000u) ? -(int)(a & 0x7fffu) : (int)(a & 0x7fffu);
  int ib = (b & 0x8000u) ? -(int)(b & 0x7fffu) : (int)(b & 0x7fffu);
  return ia > ib ? ia - ib : ib - ia;
}

/* ---- the problem ------------------------------------------------------------------------------- */

typedef struct {
  int num_vars;
  const size_t *sizes;       /* elements of each variable */
  const char *const *names;  /* NULL: "t00000", "t00001", ... */
  cuoptimDtype_t param_dtype, grad_dtype;
  int steps;
  int offset;                /* elements from an aligned address to every buffer; -1: variable k at k % 4 */
  uint64_t seed;
  const char *exclude;       /* cuoptimExcludeFromWeightDecay regex, or NULL */
  int partial;               /* each step gives gradients to some variables only (see has_gradient) */
  int inf_step, nan_step;    /* the step whose gradients hold +inf / NaN, or -1 */
  int finalize;              /* cuoptimFinalizeVariableValues after the steps (read before and after) */
  int default_stream;        /* the legacy default stream instead of a created non-blocking stream */
  const int64_t (*shapes)[2]; /* NULL, or per variable rows x cols (rows 0: registered without a shape) */
  const int *ranks;          /* NULL: every variable of rank 1 (cuoptimAddVariable) */
  const int64_t (*dims)[3];  /* with ranks: each variable's shape (cuoptimAddVariableWithShape) */
  int edge_values;           /* some elements' gradients always 0, tiny, subnormal or large (edge_gradient) */
} problem_t;

static const size_t STANDARD_SIZES[5] = {1, 3, 4095, 65537, 100001};
static const char *const STANDARD_NAMES[5] = {"dense/bias", "dense/kernel", "conv/bias", "conv/kernel",
                                              "embedding/embeddings"};
/* Gradient magnitude per variable (index % 5): with clipnorm 1 the 65537-element variable (norm
 * ~0.5) is not clipped while the 4095- and 100001-element ones (norms ~120 and ~600) are. */
static const float GRAD_FACTOR[5] = {1.0f, 0.3f, 1.0f, 0.001f, 1.0f};

static problem_t standard_problem(void) {
  problem_t p;
  memset(&p, 0, sizeof p);
  p.num_vars = 5;
  p.sizes = STANDARD_SIZES;
  p.names = STANDARD_NAMES;
  p.param_dtype = p.grad_dtype = CUOPTIM_FLOAT32;
  p.steps = 6;
  p.seed = 20240611;
  p.inf_step = p.nan_step = -1;
  return p;
}

static void name_of(const problem_t *pb, int k, char *buffer, size_t size) {
  if (pb->names)
    snprintf(buffer, size, "%s", pb->names[k]);
  else
    snprintf(buffer, size, "t%05d", k);
}

static size_t offset_of(const problem_t *pb, int k) { return pb->offset >= 0 ? (size_t)pb->offset : (size_t)(k % 4); }

static float param_value(const problem_t *pb, int k, size_t i) {
  return test_pseudo_random(pb->seed, ((uint64_t)k << 20) | 0xfffffu, i);
}

/* The variable whose gradient holds +inf on inf_step (NaN goes into the last variable's last
 * element, in the scalar tail of the update kernel). */
static int inf_variable(const problem_t *pb) { return pb->num_vars > 3 ? 3 : 0; }

/* With edge_values, the gradient of some elements at every step: 0 (whole 4-element vectors of
 * zeros as well as lone ones), 1e-30 (its square is 0 in float32), a subnormal, or 1e15. Their
 * square roots and divisions take operands outside the range of the fixed kernels' fast
 * sequences (cuda/rules.h), so those elements are computed again with the IEEE operations, while
 * their neighbours stay on the fast path. Returns 1 and *g for such an element. */
static int edge_gradient(size_t i, float *g) {
  if (i % 97 < 8 || i % 89 == 3) *g = 0.0f;
  else if (i % 131 == 5) *g = 1e-30f;
  else if (i % 173 == 7) *g = -1e-40f;
  else if (i % 251 == 9) *g = 1e15f;
  else return 0;
  return 1;
}

static float grad_value(const problem_t *pb, int k, int step, size_t i) {
  if (step == pb->inf_step && k == inf_variable(pb) && i == pb->sizes[k] / 2) return INFINITY;
  if (step == pb->nan_step && k == pb->num_vars - 1 && i == pb->sizes[k] - 1) return NAN;
  float edge;
  if (pb->edge_values && edge_gradient(i, &edge)) return edge;
  return test_pseudo_random(pb->seed, ((uint64_t)k << 20) | (uint64_t)step, i) * GRAD_FACTOR[k % 5];
}

static int has_gradient(const problem_t *pb, int k, int step) { return !pb->partial || (k + step) % 3 != 0; }

/* Poisoned elements before and after every buffer. */
#define GUARD 64

/* Places every variable in a pool (element indices, the same for parameters and gradients): a
 * guard band, the offset, the variable, a guard band, rounded up to 64 elements so that with
 * offset 0 every buffer starts on a 128-byte (16-bit types) or 256-byte (float32) boundary of a
 * cudaMalloc'd pool. Returns the pool's size in elements. */
static size_t layout_pool(const problem_t *pb, size_t *start) {
  size_t cursor = 0;
  for (int k = 0; k < pb->num_vars; k++) {
    start[k] = cursor + GUARD + offset_of(pb, k);
    cursor = (start[k] + pb->sizes[k] + GUARD + 63) / 64 * 64;
  }
  return cursor;
}

/* The gradient list of a step: with `partial`, variables without a gradient are left out on even
 * steps and listed with grad = NULL (Keras's None) on odd ones, where the list also runs backwards. */
static int gradient_list(const problem_t *pb, int step, const unsigned char *grad_pool, const size_t *start,
                         cuoptimGradient_t *list) {
  const size_t es = test_dtype_bytes(pb->grad_dtype);
  int m = 0;
  for (int j = 0; j < pb->num_vars; j++) {
    int k = (pb->partial && step % 2) ? pb->num_vars - 1 - j : j;
    cuoptimGradient_t g;
    memset(&g, 0, sizeof g);
    g.variable = k;
    g.dtype = pb->grad_dtype;
    if (has_gradient(pb, k, step))
      g.grad = grad_pool + start[k] * es;
    else if (step % 2)
      g.grad = NULL;
    else
      continue;
    list[m++] = g;
  }
  return m;
}

/* ---- running a problem ------------------------------------------------------------------------- */

typedef struct {
  int num_vars;
  const size_t *sizes;
  cuoptimDtype_t param_dtype;
  unsigned char **params; /* raw elements of each variable after the steps */
  unsigned char **finals; /* after cuoptimFinalizeVariableValues, or NULL */
  int num_weights;
  cuoptimWeightInfo_t *infos;
  double **weights;
  int64_t iterations;
  float learning_rate;
  int has_loss_scale;
  float loss_scale;
  int *uses_weight_decay;
} result_t;

static void free_result(result_t *r) {
  for (int k = 0; k < r->num_vars; k++) {
    free(r->params[k]);
    if (r->finals) free(r->finals[k]);
  }
  free(r->params);
  free(r->finals);
  for (int i = 0; i < r->num_weights; i++) free(r->weights[i]);
  free(r->weights);
  free(r->infos);
  free(r->uses_weight_decay);
  memset(r, 0, sizeof *r);
}

static const char *backend_text(cuoptimBackend_t backend) {
  return backend == CUOPTIM_BACKEND_CUDA ? "CUDA" : "host";
}

/* Every byte of the pool outside the variables still holds the 0xff poison. */
static void expect_guards_intact(const unsigned char *bytes, size_t pool_elements, size_t es, const problem_t *pb,
                                 const size_t *start, const char *what, cuoptimBackend_t backend) {
  size_t bad = 0, first = 0, position = 0;
  for (int k = 0; k <= pb->num_vars; k++) {
    size_t end = k < pb->num_vars ? start[k] : pool_elements;
    for (size_t b = position * es; b < end * es; b++)
      if (bytes[b] != 0xff) {
        if (!bad) first = b;
        bad++;
      }
    if (k < pb->num_vars) position = start[k] + pb->sizes[k];
  }
  cr_expect_eq(bad, 0, "%s backend: %zu guard bytes around the %s buffers were overwritten (first at byte %zu)",
               backend_text(backend), bad, what, first);
}

/* Copies a pool of the backend into host memory, after the optimizer's work is done. */
static void read_pool(cuoptimBackend_t backend, unsigned char *dst, const unsigned char *pool, size_t bytes,
                      cudaStream_t stream) {
  if (backend == CUOPTIM_BACKEND_CUDA) {
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaMemcpy(dst, pool, bytes, cudaMemcpyDeviceToHost));
  } else {
    memcpy(dst, pool, bytes);
  }
}

static unsigned char **split_variables(const problem_t *pb, const unsigned char *bytes, const size_t *start) {
  const size_t es = test_dtype_bytes(pb->param_dtype);
  unsigned char **out = calloc((size_t)pb->num_vars, sizeof *out);
  cr_assert(out);
  for (int k = 0; k < pb->num_vars; k++) {
    out[k] = malloc(pb->sizes[k] * es);
    cr_assert(out[k]);
    memcpy(out[k], bytes + start[k] * es, pb->sizes[k] * es);
  }
  return out;
}

/* Runs `pb` with `cfg` on `backend` (device 0) and collects everything observable. */
static void run_problem(const cuoptimConfig_t *cfg, cuoptimBackend_t backend, const problem_t *pb, result_t *out) {
  const int cuda = backend == CUOPTIM_BACKEND_CUDA;
  const int n = pb->num_vars;
  const size_t pes = test_dtype_bytes(pb->param_dtype), ges = test_dtype_bytes(pb->grad_dtype);
  size_t *start = malloc((size_t)n * sizeof *start);
  cuoptimGradient_t *list = malloc((size_t)n * sizeof *list);
  cr_assert(start && list);
  const size_t pool_elements = layout_pool(pb, start);
  const size_t param_bytes = pool_elements * pes, grad_bytes = pool_elements * ges;

  /* Host images of the two pools: 0xff everywhere but the variables. */
  unsigned char *param_image = malloc(param_bytes), *grad_image = malloc(grad_bytes);
  unsigned char *readback = malloc(param_bytes > grad_bytes ? param_bytes : grad_bytes);
  cr_assert(param_image && grad_image && readback);
  memset(param_image, 0xff, param_bytes);
  memset(grad_image, 0xff, grad_bytes);
  for (int k = 0; k < n; k++)
    for (size_t i = 0; i < pb->sizes[k]; i++)
      test_store_element(param_image + start[k] * pes, pb->param_dtype, i, param_value(pb, k, i));

  /* The pools themselves, memory of the backend. */
  unsigned char *param_pool = NULL, *grad_pool = NULL;
  cudaStream_t stream = NULL;
  if (cuda) {
    CUDA_OK(cudaSetDevice(0));
    CUDA_OK(cudaMalloc((void **)&param_pool, param_bytes));
    CUDA_OK(cudaMalloc((void **)&grad_pool, grad_bytes));
    CUDA_OK(cudaMemcpy(param_pool, param_image, param_bytes, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(grad_pool, grad_image, grad_bytes, cudaMemcpyHostToDevice));
    if (!pb->default_stream) CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  } else {
    param_pool = malloc(param_bytes);
    grad_pool = malloc(grad_bytes);
    cr_assert(param_pool && grad_pool);
    memcpy(param_pool, param_image, param_bytes);
    memcpy(grad_pool, grad_image, grad_bytes);
  }

  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, cfg, backend, 0));
  if (pb->exclude) OK(cuoptimExcludeFromWeightDecay(opt, pb->exclude));
  for (int k = 0; k < n; k++) {
    char name[64];
    name_of(pb, k, name, sizeof name);
    cuoptimVariable_t variable = -1;
    if (pb->shapes && pb->shapes[k][0] > 0)
      OK(cuoptimAddVariableWithShape(opt, name, param_pool + start[k] * pes, pb->param_dtype, 2, pb->shapes[k],
                                     &variable));
    else if (pb->ranks)
      OK(cuoptimAddVariableWithShape(opt, name, param_pool + start[k] * pes, pb->param_dtype, pb->ranks[k],
                                     pb->dims[k], &variable));
    else
      OK(cuoptimAddVariable(opt, name, param_pool + start[k] * pes, pb->param_dtype, pb->sizes[k], &variable));
    cr_assert_eq(variable, k, "variable %d registered as %d", k, (int)variable);
  }

  for (int step = 0; step < pb->steps; step++) {
    for (int k = 0; k < n; k++)
      if (has_gradient(pb, k, step))
        for (size_t i = 0; i < pb->sizes[k]; i++)
          test_store_element(grad_image + start[k] * ges, pb->grad_dtype, i, grad_value(pb, k, step, i));
    if (cuda) {
      /* Ordered after the previous step on the same stream; the synchronize lets the image be
       * rewritten for the next step. */
      CUDA_OK(cudaMemcpyAsync(grad_pool, grad_image, grad_bytes, cudaMemcpyHostToDevice, stream));
      CUDA_OK(cudaStreamSynchronize(stream));
    } else {
      memcpy(grad_pool, grad_image, grad_bytes);
    }
    int m = gradient_list(pb, step, grad_pool, start, list);
    OK(cuoptimApplyGradients(opt, m, list, stream));
  }
  OK(cuoptimSynchronize(opt));

  memset(out, 0, sizeof *out);
  out->num_vars = n;
  out->sizes = pb->sizes;
  out->param_dtype = pb->param_dtype;

  read_pool(backend, readback, param_pool, param_bytes, stream);
  expect_guards_intact(readback, pool_elements, pes, pb, start, "parameter", backend);
  out->params = split_variables(pb, readback, start);

  read_pool(backend, readback, grad_pool, grad_bytes, stream);
  cr_expect(memcmp(readback, grad_image, grad_bytes) == 0, "%s backend: the gradient buffers were modified",
            backend_text(backend));

  if (pb->finalize) {
    OK(cuoptimFinalizeVariableValues(opt, stream));
    read_pool(backend, readback, param_pool, param_bytes, stream);
    expect_guards_intact(readback, pool_elements, pes, pb, start, "parameter (after finalize)", backend);
    out->finals = split_variables(pb, readback, start);
  }

  OK(cuoptimGetWeightCount(opt, &out->num_weights));
  out->infos = calloc((size_t)out->num_weights, sizeof *out->infos);
  out->weights = calloc((size_t)out->num_weights, sizeof *out->weights);
  cr_assert(out->num_weights == 0 || (out->infos && out->weights));
  for (int i = 0; i < out->num_weights; i++) {
    OK(cuoptimGetWeightInfo(opt, i, &out->infos[i]));
    out->weights[i] = malloc(out->infos[i].count * sizeof(double));
    cr_assert(out->weights[i]);
    OK(cuoptimGetWeights(opt, i, out->weights[i], out->infos[i].count));
  }
  OK(cuoptimGetIterations(opt, &out->iterations));
  OK(cuoptimGetLearningRate(opt, &out->learning_rate));
  out->has_loss_scale = cfg->dynamic_loss_scale;
  if (cfg->dynamic_loss_scale) OK(cuoptimGetLossScale(opt, &out->loss_scale));
  out->uses_weight_decay = calloc((size_t)n, sizeof *out->uses_weight_decay);
  cr_assert(out->uses_weight_decay);
  for (int k = 0; k < n; k++) OK(cuoptimUsesWeightDecay(opt, k, &out->uses_weight_decay[k]));

  OK(cuoptimDestroy(opt));
  if (cuda) {
    CUDA_OK(cudaFree(param_pool));
    CUDA_OK(cudaFree(grad_pool));
    if (stream) CUDA_OK(cudaStreamDestroy(stream));
  } else {
    free(param_pool);
    free(grad_pool);
  }
  free(param_image);
  free(grad_image);
  free(readback);
  free(list);
  free(start);
}

/* ---- comparing ----------------------------------------------------------------------------------- */

static int identical(double a, double b) {
  if (isnan(a) && isnan(b)) return 1;
  return memcmp(&a, &b, sizeof a) == 0;
}

static int close_enough(double got, double want, double rtol, double atol) {
  if (isnan(got) || isnan(want)) return isnan(got) && isnan(want);
  if (isinf(got) || isinf(want)) return got == want;
  return fabs(got - want) <= atol + rtol * fabs(want);
}

static double largest_magnitude(const double *v, size_t n) {
  double m = 0.0;
  for (size_t i = 0; i < n; i++)
    if (isfinite(v[i]) && fabs(v[i]) > m) m = fabs(v[i]);
  return m;
}

/* Elements of got[] (CUDA) that miss want[] (host); logs the first and the worst. */
static size_t compare_values(const char *label, const char *what, const double *got, const double *want, size_t n,
                             int bitwise, double atol) {
  size_t bad = 0, first = 0, worst = 0;
  double worst_error = -1.0;
  for (size_t i = 0; i < n; i++) {
    if (bitwise ? identical(got[i], want[i]) : close_enough(got[i], want[i], RTOL, atol)) continue;
    if (!bad) first = i;
    bad++;
    double error = fabs(got[i] - want[i]);
    if (isnan(error)) error = INFINITY;
    if (error > worst_error) {
      worst_error = error;
      worst = i;
    }
  }
  if (bad)
    cr_log_error("%s: %s: %zu of %zu elements differ (%s); first [%zu] cuda %.9g host %.9g; worst [%zu] cuda %.9g "
                 "host %.9g",
                 label, what, bad, n, bitwise ? "bitwise" : "tolerance", first, got[first], want[first], worst,
                 got[worst], want[worst]);
  return bad;
}

/* One variable's parameters: float32 by value, 16-bit types by ulps (0 when bitwise, else 1). */
static size_t compare_params(const char *label, const char *what, const unsigned char *got, const unsigned char *want,
                             size_t n, cuoptimDtype_t dtype, int bitwise) {
  if (dtype == CUOPTIM_FLOAT32) {
    double *g = malloc(n * sizeof *g), *w = malloc(n * sizeof *w);
    cr_assert(g && w);
    for (size_t i = 0; i < n; i++) {
      g[i] = load_element(got, dtype, i);
      w[i] = load_element(want, dtype, i);
    }
    size_t bad = compare_values(label, what, g, w, n, bitwise, PARAM_ATOL);
    free(g);
    free(w);
    return bad;
  }
  const int allowed = bitwise ? 0 : 1;
  size_t bad = 0, first = 0;
  int worst = 0;
  for (size_t i = 0; i < n; i++) {
    uint16_t a = load_bits16(got, i), b = load_bits16(want, i);
    int ok = (half_is_nan(dtype, a) || half_is_nan(dtype, b)) ? half_is_nan(dtype, a) && half_is_nan(dtype, b)
                                                               : half_ulps(a, b) <= allowed;
    if (ok) continue;
    if (!bad) first = i;
    bad++;
    int d = half_ulps(a, b);
    if (d > worst) worst = d;
  }
  if (bad)
    cr_log_error("%s: %s (%s): %zu of %zu elements more than %d ulp apart (worst %d ulp); first [%zu] cuda 0x%04x "
                 "(%.6g) host 0x%04x (%.6g)",
                 label, what, dtype_text(dtype), bad, n, allowed, worst, first, load_bits16(got, first),
                 load_element(got, dtype, first), load_bits16(want, first), load_element(want, dtype, first));
  return bad;
}

/* Asserts that `got` (CUDA, or a second run) matches `want` (host, or a first run). */
static void compare_results(const result_t *got, const result_t *want, int bitwise, const char *label) {
  size_t bad = 0;
  char what[256];
  cr_assert_eq(got->num_vars, want->num_vars, "%s: variable counts differ", label);
  if (got->iterations != want->iterations) {
    cr_log_error("%s: cuoptimGetIterations: cuda %lld host %lld", label, (long long)got->iterations,
                 (long long)want->iterations);
    bad++;
  }
  if (bitwise ? !identical(got->learning_rate, want->learning_rate)
              : !close_enough(got->learning_rate, want->learning_rate, RTOL, 0.0)) {
    cr_log_error("%s: cuoptimGetLearningRate: cuda %.9g host %.9g", label, got->learning_rate, want->learning_rate);
    bad++;
  }
  if (got->has_loss_scale && got->loss_scale != want->loss_scale) {
    cr_log_error("%s: cuoptimGetLossScale: cuda %.9g host %.9g", label, got->loss_scale, want->loss_scale);
    bad++;
  }
  for (int k = 0; k < got->num_vars; k++) {
    if (got->uses_weight_decay[k] != want->uses_weight_decay[k]) {
      cr_log_error("%s: cuoptimUsesWeightDecay(%d): cuda %d host %d", label, k, got->uses_weight_decay[k],
                   want->uses_weight_decay[k]);
      bad++;
    }
    snprintf(what, sizeof what, "parameters of variable %d", k);
    bad += compare_params(label, what, got->params[k], want->params[k], got->sizes[k], got->param_dtype, bitwise);
    if (got->finals && want->finals) {
      snprintf(what, sizeof what, "parameters of variable %d after cuoptimFinalizeVariableValues", k);
      bad += compare_params(label, what, got->finals[k], want->finals[k], got->sizes[k], got->param_dtype, bitwise);
    }
  }
  cr_assert_eq(got->num_weights, want->num_weights, "%s: cuoptimGetWeightCount: cuda %d host %d", label,
               got->num_weights, want->num_weights);
  for (int i = 0; i < got->num_weights; i++) {
    const cuoptimWeightInfo_t *a = &got->infos[i], *b = &want->infos[i];
    if (strcmp(a->name, b->name) != 0 || a->count != b->count || a->is_integer != b->is_integer) {
      cr_log_error("%s: state entry %d: cuda \"%s\" (%zu, integer %d), host \"%s\" (%zu, integer %d)", label, i, a->name,
                   a->count, a->is_integer, b->name, b->count, b->is_integer);
      bad++;
      continue;
    }
    snprintf(what, sizeof what, "state entry %d \"%s\"", i, a->name);
    if (a->is_integer)
      bad += compare_values(label, what, got->weights[i], want->weights[i], a->count, MATCH_BITWISE, 0.0);
    else
      bad += compare_values(label, what, got->weights[i], want->weights[i], a->count, bitwise,
                            STATE_ATOL_RELATIVE * largest_magnitude(want->weights[i], b->count));
  }
  cr_assert_eq(bad, 0, "%s: %zu mismatches between the two runs (details in the log above)", label, bad);
}


/* The reference run must have moved the parameters: otherwise agreement proves nothing. */
static void expect_progress(const problem_t *pb, const result_t *host, const char *label) {
  const size_t es = test_dtype_bytes(pb->param_dtype);
  size_t changed = 0;
  unsigned char initial[4];
  for (int k = 0; k < pb->num_vars; k++)
    for (size_t i = 0; i < pb->sizes[k]; i++) {
      test_store_element(initial, pb->param_dtype, 0, param_value(pb, k, i));
      if (memcmp(initial, host->params[k] + i * es, es) != 0) changed++;
    }
  cr_assert_gt(changed, 0, "%s: the host run changed no parameter: the comparison would prove nothing", label);
}

/* Runs `pb` on both backends and asserts they agree (within the tolerance; bit for bit as well
 * with MATCH_BITWISE). */
static void check_matches_host(const cuoptimConfig_t *cfg, const problem_t *pb, int bitwise, const char *label) {
  NEED_GPU();
  OK(cuoptimConfigValidate(cfg));
  result_t host, cuda;
  run_problem(cfg, CUOPTIM_BACKEND_HOST, pb, &host);
  expect_progress(pb, &host, label);
  run_problem(cfg, CUOPTIM_BACKEND_CUDA, pb, &cuda);
  compare_results(&cuda, &host, MATCH_CLOSE, label);
  if (bitwise) compare_results(&cuda, &host, MATCH_BITWISE, label);
  free_result(&host);
  free_result(&cuda);
}

static void check_standard(const cuoptimConfig_t *cfg, int bitwise, const char *label) {
  problem_t p = standard_problem();
  check_matches_host(cfg, &p, bitwise, label);
}

/* The value of the state entry called `name` (first element). */
static double weight_named(const result_t *r, const char *name) {
  for (int i = 0; i < r->num_weights; i++)
    if (strcmp(r->infos[i].name, name) == 0) return r->weights[i][0];
  cr_assert_fail("no state entry \"%s\"", name);
  return NAN;
}

/* ---- every optimizer ------------------------------------------------------------------------------- */

Test(cuda_optimizers, sgd_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  check_standard(&c, MATCH_BITWISE, "SGD");
}

Test(cuda_optimizers, sgd_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  check_standard(&c, MATCH_BITWISE, "SGD momentum");
}

Test(cuda_optimizers, sgd_nesterov_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.nesterov = 1;
  check_standard(&c, MATCH_BITWISE, "SGD nesterov");
}

Test(cuda_optimizers, rmsprop_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_RMSPROP);
  check_standard(&c, MATCH_BITWISE, "RMSprop");
}

Test(cuda_optimizers, rmsprop_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_RMSPROP);
  c.momentum = 0.5;
  check_standard(&c, MATCH_BITWISE, "RMSprop momentum");
}

Test(cuda_optimizers, rmsprop_centered_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_RMSPROP);
  c.centered = 1;
  check_standard(&c, MATCH_BITWISE, "RMSprop centered");
}

Test(cuda_optimizers, rmsprop_centered_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_RMSPROP);
  c.centered = 1;
  c.momentum = 0.3;
  check_standard(&c, MATCH_BITWISE, "RMSprop centered momentum");
}

Test(cuda_optimizers, adagrad_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAGRAD);
  check_standard(&c, MATCH_BITWISE, "Adagrad");
}

Test(cuda_optimizers, adadelta_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADADELTA);
  c.learning_rate.initial_learning_rate = 1.0; /* Adadelta's steps are ~1e-3 of lr: make them visible */
  check_standard(&c, MATCH_BITWISE, "Adadelta");
}

Test(cuda_optimizers, adam_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  check_standard(&c, MATCH_CLOSE, "Adam");
}

Test(cuda_optimizers, adam_amsgrad_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.amsgrad = 1;
  check_standard(&c, MATCH_CLOSE, "Adam amsgrad");
}

Test(cuda_optimizers, adamw_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAMW);
  c.weight_decay = 0.05;
  check_standard(&c, MATCH_CLOSE, "AdamW");
}

Test(cuda_optimizers, adamw_amsgrad_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAMW);
  c.amsgrad = 1;
  check_standard(&c, MATCH_CLOSE, "AdamW amsgrad");
}

Test(cuda_optimizers, adamax_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAMAX);
  check_standard(&c, MATCH_CLOSE, "Adamax");
}

Test(cuda_optimizers, nadam_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_NADAM);
  check_standard(&c, MATCH_CLOSE, "Nadam");
}

Test(cuda_optimizers, lion_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_LION);
  check_standard(&c, MATCH_BITWISE, "Lion");
}

Test(cuda_optimizers, lamb_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  check_standard(&c, MATCH_CLOSE, "Lamb");
}

static cuoptimConfig_t ftrl_config(void) {
  cuoptimConfig_t c = test_config(CUOPTIM_FTRL);
  c.learning_rate.initial_learning_rate = 0.05;
  c.l1_regularization_strength = 0.01;
  c.l2_regularization_strength = 0.02;
  c.l2_shrinkage_regularization_strength = 0.03;
  c.beta = 0.1;
  return c;
}

/* learning_rate_power -0.5: the rule calls powf per element, on the device and in glibc. */
Test(cuda_optimizers, ftrl_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = ftrl_config();
  check_standard(&c, MATCH_CLOSE, "Ftrl");
}

/* learning_rate_power 0: powf(n, -0) = 1 exactly, so l1, l2, shrinkage and beta are checked bit
 * for bit without the powf of the default power. */
Test(cuda_optimizers, ftrl_learning_rate_power_zero_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = ftrl_config();
  c.learning_rate_power = 0.0;
  check_standard(&c, MATCH_BITWISE, "Ftrl learning_rate_power 0");
}

/* ---- every feature --------------------------------------------------------------------------------- */

/* The fixed update kernels' fast square roots and divisions, and their way back to sqrtf and '/'
 * (cuda/rules.h): gradients with zeros, tiny, subnormal and large elements among ordinary ones
 * give the host's results. Bit for bit for the rules without a power in their scalars everywhere,
 * and for all of them on the emulated device (the same libm on both sides). ScheduleFreeAdamW has
 * no fixed kernel: its generic kernel, with sqrtf and '/' throughout, faces the same values. */
#ifdef CUOPTIM_TEST_EMULATED_DEVICE
#define EDGE_MATCH MATCH_BITWISE
#else
#define EDGE_MATCH MATCH_CLOSE
#endif
static void check_edge_values(cuoptimOptimizerKind_t kind, int bitwise, const char *label) {
  cuoptimConfig_t c = test_config(kind);
  problem_t p = standard_problem();
  p.edge_values = 1;
  check_matches_host(&c, &p, bitwise, label);
}

/* On this device the fast sequences are sqrtf and '/' wherever their checks pass: on a GPU every
 * 32-bit pattern as a square root's operand and as a dividend (over two divisors each, one of
 * every exponent, one at the dividend's); on the emulated device a sample (its approximations are
 * the host's, which tests/test_fast_math.c covers). */
Test(cuda_optimizers, fast_square_root_and_division_are_ieee_on_this_device) {
  NEED_GPU();
#ifdef CUOPTIM_TEST_EMULATED_DEVICE
  const uint64_t first = 0x3e800000u, count = 1u << 18;
#else
  const uint64_t first = 0, count = 1ull << 32;
#endif
  unsigned *mismatches = NULL, found[2] = {1, 1};
  cr_assert_eq(cudaMalloc((void **)&mismatches, sizeof found), cudaSuccess);
  cr_assert_eq(cudaMemset(mismatches, 0, sizeof found), cudaSuccess);
  cr_assert_eq(cuoptim_launch_check_fast_math(first, count, mismatches, NULL), (int)cudaSuccess);
  cr_assert_eq(cudaMemcpy(found, mismatches, sizeof found, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(mismatches);
  cr_assert_eq(found[0], 0u, "%u square roots differ from sqrtf", found[0]);
  cr_assert_eq(found[1], 0u, "%u quotients differ from '/'", found[1]);
}

Test(cuda_optimizers, fixed_kernels_fall_back_to_ieee_on_edge_values) {
  NEED_GPU();
  check_edge_values(CUOPTIM_RMSPROP, MATCH_BITWISE, "RMSprop, edge gradients");
  check_edge_values(CUOPTIM_ADAGRAD, MATCH_BITWISE, "Adagrad, edge gradients");
  check_edge_values(CUOPTIM_ADADELTA, MATCH_BITWISE, "Adadelta, edge gradients");
  check_edge_values(CUOPTIM_ADAM, EDGE_MATCH, "Adam, edge gradients");
  check_edge_values(CUOPTIM_ADAMW, EDGE_MATCH, "AdamW, edge gradients");
  check_edge_values(CUOPTIM_ADAMAX, EDGE_MATCH, "Adamax, edge gradients");
  check_edge_values(CUOPTIM_NADAM, EDGE_MATCH, "Nadam, edge gradients");
  check_edge_values(CUOPTIM_SCHEDULE_FREE_ADAMW, EDGE_MATCH, "ScheduleFreeAdamW, edge gradients");
}

/* Muon: matrices wide (70 x 300), tall (300 x 70: transposed, the same shape for Newton-Schulz,
 * so one batched product covers both), tall and almost square (130 x 129), a row (1 x 5) and a
 * matrix of several chunks (97 x 211); a vector, an embedding and a variable registered without a
 * shape take the AdamW path. The element-wise stages are the host's functions and the norm sums
 * in the host's order; the emulated device's products sum as the host's do (emu/cublas.cc), so
 * there the results are the host's bit for bit; a GPU's cuBLAS sums in its own float32 order. */
#define MUON_VARS 8
static const int64_t MUON_SHAPES[MUON_VARS][2] = {{70, 300}, {300, 70}, {130, 129}, {1, 5},
                                                   {97, 211}, {0, 0},    {50, 12},   {0, 0}};
static const size_t MUON_SIZES[MUON_VARS] = {21000, 21000, 16770, 5, 20467, 4095, 600, 3};
static const char *const MUON_NAMES[MUON_VARS] = {"dense/kernel", "proj/kernel", "mlp/kernel", "row/kernel",
                                                  "out/kernel",   "dense/bias",  "embedding/embeddings", "scale"};
#ifdef CUOPTIM_TEST_EMULATED_DEVICE
#define MUON_MATCH MATCH_BITWISE
#else
#define MUON_MATCH MATCH_CLOSE
#endif

static problem_t muon_problem(void) {
  problem_t p = standard_problem();
  p.num_vars = MUON_VARS;
  p.sizes = MUON_SIZES;
  p.names = MUON_NAMES;
  p.shapes = MUON_SHAPES;
  return p;
}

Test(cuda_optimizers, muon_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_MUON);
  problem_t p = muon_problem();
  check_matches_host(&c, &p, MUON_MATCH, "Muon");
}

Test(cuda_optimizers, muon_options_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config_lr(CUOPTIM_MUON, 0.02);
  c.nesterov = 0;
  c.rms_rate = CUOPTIM_NONE;
  c.ns_steps = 4;
  c.weight_decay = 0.1;
  c.adam_lr_ratio = 0.5;
  problem_t p = muon_problem();
  p.exclude = "out/";
  check_matches_host(&c, &p, MUON_MATCH, "Muon nesterov False, rms_rate None, ns_steps 4, exclusion");
}

Test(cuda_features, muon_clipnorm_ema_accumulation_partial_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_MUON);
  c.clipnorm = 1.0;
  c.use_ema = 1;
  c.ema_overwrite_frequency = 3;
  c.gradient_accumulation_steps = 2;
  problem_t p = muon_problem();
  p.steps = 7;
  p.partial = 1;
  p.finalize = 1;
  check_matches_host(&c, &p, MUON_MATCH, "Muon clipnorm + EMA + accumulation, partial gradients");
}

Test(cuda_features, muon_float16_masters_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_MUON);
  c.global_clipnorm = 2.0;
  problem_t p = muon_problem();
  p.param_dtype = p.grad_dtype = CUOPTIM_FLOAT16;
  check_matches_host(&c, &p, MUON_MATCH, "Muon float16 with masters, global_clipnorm");
}

Test(cuda_features, muon_dynamic_loss_scale_skips_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_MUON);
  c.dynamic_loss_scale = 1;
  problem_t p = muon_problem();
  p.inf_step = 2;
  p.nan_step = 4;
  check_matches_host(&c, &p, MUON_MATCH, "Muon under a dynamic loss scale, non-finite steps skipped");
}

Test(cuda_features, clipnorm_adam_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.clipnorm = 1.0;
  check_standard(&c, MATCH_CLOSE, "Adam clipnorm");
}

Test(cuda_features, clipnorm_sgd_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.clipnorm = 1.0;
  check_standard(&c, MATCH_CLOSE, "SGD momentum clipnorm");
}

Test(cuda_features, clipnorm_lamb_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  c.clipnorm = 1.0;
  check_standard(&c, MATCH_CLOSE, "Lamb clipnorm");
}

Test(cuda_features, clipvalue_adam_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.clipvalue = 0.5;
  check_standard(&c, MATCH_CLOSE, "Adam clipvalue");
}

Test(cuda_features, clipvalue_sgd_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.clipvalue = 0.5;
  check_standard(&c, MATCH_BITWISE, "SGD momentum clipvalue");
}

Test(cuda_features, global_clipnorm_adam_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.global_clipnorm = 5.0; /* the global norm is ~600: every step is scaled */
  check_standard(&c, MATCH_CLOSE, "Adam global_clipnorm");
}

Test(cuda_features, global_clipnorm_above_norm_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.global_clipnorm = 1e4; /* above the global norm: the min(1/norm, 1/clip) branch of 1/clip */
  check_standard(&c, MATCH_CLOSE, "SGD momentum global_clipnorm above the norm");
}

Test(cuda_features, global_clipnorm_nadam_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_NADAM);
  c.global_clipnorm = 5.0;
  check_standard(&c, MATCH_CLOSE, "Nadam global_clipnorm");
}

/* weight_decay on every optimizer's path, with "bias$" excluding dense/bias and conv/bias. */
static void check_weight_decay(cuoptimConfig_t *c, int bitwise, const char *label) {
  problem_t p = standard_problem();
  p.exclude = "bias$";
  check_matches_host(c, &p, bitwise, label);
  /* The exclusion itself, asked of the CUDA backend directly. */
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, c, CUOPTIM_BACKEND_CUDA, 0));
  OK(cuoptimExcludeFromWeightDecay(opt, "bias$"));
  float *buffer = NULL;
  CUDA_OK(cudaMalloc((void **)&buffer, 16));
  static const int expected[5] = {0, 1, 0, 1, 1};
  for (int k = 0; k < 5; k++) {
    cuoptimVariable_t v;
    int uses = -1;
    OK(cuoptimAddVariable(opt, STANDARD_NAMES[k], buffer, CUOPTIM_FLOAT32, 4, &v));
    OK(cuoptimUsesWeightDecay(opt, v, &uses));
    cr_expect_eq(uses, expected[k], "%s: cuoptimUsesWeightDecay(\"%s\") = %d, want %d", label, STANDARD_NAMES[k], uses,
                 expected[k]);
  }
  OK(cuoptimDestroy(opt));
  CUDA_OK(cudaFree(buffer));
}

Test(cuda_features, weight_decay_with_exclusion_adamw_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAMW);
  c.weight_decay = 0.1;
  c.learning_rate.initial_learning_rate = 0.01;
  check_weight_decay(&c, MATCH_CLOSE, "AdamW weight_decay excluding bias$");
}

Test(cuda_features, weight_decay_with_exclusion_sgd_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.weight_decay = 0.5;
  check_weight_decay(&c, MATCH_BITWISE, "SGD momentum weight_decay excluding bias$");
}

Test(cuda_features, weight_decay_with_exclusion_lamb_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  c.weight_decay = 0.1;
  check_weight_decay(&c, MATCH_CLOSE, "Lamb weight_decay excluding bias$");
}

/* EMA with ema_overwrite_frequency 4: step 4 copies the averages into the variables. */
Test(cuda_features, ema_overwrite_adam_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = 4;
  check_standard(&c, MATCH_CLOSE, "Adam EMA overwrite every 4");
}

Test(cuda_features, ema_overwrite_sgd_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = 4;
  check_standard(&c, MATCH_BITWISE, "SGD momentum EMA overwrite every 4");
}

/* EMA without overwrite, then cuoptimFinalizeVariableValues (parameters compared before and after). */
Test(cuda_features, ema_finalize_adam_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.use_ema = 1;
  c.ema_momentum = 0.8;
  problem_t p = standard_problem();
  p.finalize = 1;
  check_matches_host(&c, &p, MATCH_CLOSE, "Adam EMA + cuoptimFinalizeVariableValues");
}

Test(cuda_features, ema_finalize_sgd_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.use_ema = 1;
  c.ema_momentum = 0.8;
  c.ema_overwrite_frequency = 5;
  problem_t p = standard_problem();
  p.finalize = 1;
  check_matches_host(&c, &p, MATCH_BITWISE, "SGD momentum EMA (overwrite every 5) + finalize");
}

Test(cuda_features, ema_finalize_lamb_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  c.use_ema = 1;
  c.ema_momentum = 0.8;
  problem_t p = standard_problem();
  p.finalize = 1;
  check_matches_host(&c, &p, MATCH_CLOSE, "Lamb EMA + cuoptimFinalizeVariableValues");
}

/* gradient_accumulation_steps 3 over 7 steps: updates at raw steps 2 and 5, and the run ends on a
 * micro-step, so non-zero accumulators are compared too. */
static problem_t accumulation_problem(void) {
  problem_t p = standard_problem();
  p.steps = 7;
  return p;
}

Test(cuda_features, gradient_accumulation_adam_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.gradient_accumulation_steps = 3;
  problem_t p = accumulation_problem();
  check_matches_host(&c, &p, MATCH_CLOSE, "Adam gradient_accumulation_steps 3");
}

Test(cuda_features, gradient_accumulation_sgd_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.gradient_accumulation_steps = 3;
  problem_t p = accumulation_problem();
  check_matches_host(&c, &p, MATCH_BITWISE, "SGD momentum gradient_accumulation_steps 3");
}

Test(cuda_features, gradient_accumulation_lamb_clipnorm_ema_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  c.gradient_accumulation_steps = 3;
  c.clipnorm = 1.0;
  c.use_ema = 1;
  problem_t p = accumulation_problem();
  check_matches_host(&c, &p, MATCH_CLOSE, "Lamb gradient_accumulation_steps 3 + clipnorm + EMA");
}

Test(cuda_features, loss_scale_factor_adam_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.loss_scale_factor = 128.0;
  check_standard(&c, MATCH_CLOSE, "Adam loss_scale_factor 128");
}

Test(cuda_features, loss_scale_factor_sgd_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.loss_scale_factor = 3.0; /* not a power of two: the division rounds */
  check_standard(&c, MATCH_BITWISE, "SGD momentum loss_scale_factor 3");
}

/* LossScaleOptimizer, initial scale 1024, growth every 2 good steps; step 1 holds +inf (middle of
 * conv/kernel), step 4 NaN (last element of embedding/embeddings). Scale: 1024 -> (s1 skip) 512 ->
 * (s2, s3 good) 1024 -> (s4 skip) 512 -> (s5 good, counter 1). Four steps applied. */
static void check_dynamic_loss_scale_of(cuoptimConfig_t *c, problem_t p, int bitwise, const char *label) {
  c->dynamic_loss_scale = 1;
  c->initial_scale = 1024.0;
  c->dynamic_growth_steps = 2;
  p.inf_step = 1;
  p.nan_step = 4;
  NEED_GPU();
  OK(cuoptimConfigValidate(c));
  result_t host, cuda;
  run_problem(c, CUOPTIM_BACKEND_HOST, &p, &host);
  expect_progress(&p, &host, label);
  run_problem(c, CUOPTIM_BACKEND_CUDA, &p, &cuda);
  const result_t *both[2] = {&host, &cuda};
  for (int b = 0; b < 2; b++) {
    const char *which = b ? "CUDA" : "host";
    cr_expect_eq(both[b]->iterations, 4, "%s: %s: iterations %lld, want 4 (two steps skipped)", label, which,
                 (long long)both[b]->iterations);
    cr_expect_eq(both[b]->loss_scale, 512.0f, "%s: %s: loss scale %g, want 512", label, which, both[b]->loss_scale);
    cr_expect_eq(weight_named(both[b], "dynamic_scale"), 512.0, "%s: %s: dynamic_scale entry", label, which);
    cr_expect_eq(weight_named(both[b], "step_counter"), 1.0, "%s: %s: step_counter entry", label, which);
  }
  compare_results(&cuda, &host, MATCH_CLOSE, label);
  if (bitwise) compare_results(&cuda, &host, MATCH_BITWISE, label);
  free_result(&host);
  free_result(&cuda);
}

static void check_dynamic_loss_scale(cuoptimConfig_t *c, int bitwise, const char *label) {
  check_dynamic_loss_scale_of(c, standard_problem(), bitwise, label);
}

Test(cuda_features, dynamic_loss_scale_adam_skips_inf_and_nan_steps) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  check_dynamic_loss_scale(&c, MATCH_CLOSE, "Adam dynamic loss scale");
}

Test(cuda_features, dynamic_loss_scale_sgd_momentum_skips_inf_and_nan_steps) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  check_dynamic_loss_scale(&c, MATCH_BITWISE, "SGD momentum dynamic loss scale");
}

Test(cuda_features, dynamic_loss_scale_lamb_global_clipnorm_skips_inf_and_nan_steps) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  c.global_clipnorm = 1.0;
  check_dynamic_loss_scale(&c, MATCH_CLOSE, "Lamb global_clipnorm dynamic loss scale");
}

/* The six schedules, with Adam; the learning rate the next step would use is compared as well.
 * Six steps evaluate the schedules at raw steps 0..5 (CosineDecayRestarts with first_decay_steps 2
 * stays clear of step 6, where floor(log(4) / log(2)) would sit exactly on an integer). */
static cuoptimConfig_t schedule_config(cuoptimOptimizerKind_t kind, cuoptimScheduleKind_t schedule) {
  cuoptimConfig_t c = test_config(kind);
  cuoptimSchedule_t *s = &c.learning_rate;
  OK(cuoptimScheduleInit(s, schedule));
  switch (schedule) {
    case CUOPTIM_SCHEDULE_EXPONENTIAL:
      s->initial_learning_rate = 0.01;
      s->decay_steps = 2;
      s->decay_rate = 0.5;
      break;
    case CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT:
      s->num_boundaries = 2;
      s->boundaries[0] = 1;
      s->boundaries[1] = 4;
      s->values[0] = 0.02;
      s->values[1] = 0.01;
      s->values[2] = 0.005;
      break;
    case CUOPTIM_SCHEDULE_POLYNOMIAL:
      s->initial_learning_rate = 0.02;
      s->decay_steps = 3;
      s->end_learning_rate = 0.001;
      s->power = 2.0;
      s->cycle = 1;
      break;
    case CUOPTIM_SCHEDULE_INVERSE_TIME:
      s->initial_learning_rate = 0.02;
      s->decay_steps = 2;
      s->decay_rate = 0.5;
      s->staircase = 1;
      break;
    case CUOPTIM_SCHEDULE_COSINE:
      s->initial_learning_rate = 0.001;
      s->decay_steps = 4;
      s->alpha = 0.1;
      s->warmup_target = 0.02;
      s->warmup_steps = 2;
      break;
    case CUOPTIM_SCHEDULE_COSINE_RESTARTS:
      s->initial_learning_rate = 0.02;
      s->decay_steps = 2;
      s->t_mul = 2.0;
      s->m_mul = 0.5;
      s->alpha = 0.05;
      break;
    default: break;
  }
  return c;
}

Test(cuda_features, schedule_exponential_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = schedule_config(CUOPTIM_ADAM, CUOPTIM_SCHEDULE_EXPONENTIAL);
  check_standard(&c, MATCH_CLOSE, "Adam ExponentialDecay");
}

Test(cuda_features, schedule_piecewise_constant_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = schedule_config(CUOPTIM_ADAM, CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT);
  check_standard(&c, MATCH_CLOSE, "Adam PiecewiseConstantDecay");
}

Test(cuda_features, schedule_piecewise_constant_sgd_momentum_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = schedule_config(CUOPTIM_SGD, CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT);
  c.momentum = 0.9;
  check_standard(&c, MATCH_BITWISE, "SGD momentum PiecewiseConstantDecay");
}

Test(cuda_features, schedule_polynomial_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = schedule_config(CUOPTIM_ADAM, CUOPTIM_SCHEDULE_POLYNOMIAL);
  check_standard(&c, MATCH_CLOSE, "Adam PolynomialDecay (cycle)");
}

Test(cuda_features, schedule_inverse_time_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = schedule_config(CUOPTIM_ADAM, CUOPTIM_SCHEDULE_INVERSE_TIME);
  check_standard(&c, MATCH_CLOSE, "Adam InverseTimeDecay (staircase)");
}

Test(cuda_features, schedule_cosine_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = schedule_config(CUOPTIM_ADAM, CUOPTIM_SCHEDULE_COSINE);
  check_standard(&c, MATCH_CLOSE, "Adam CosineDecay (warm-up)");
}

Test(cuda_features, schedule_cosine_restarts_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = schedule_config(CUOPTIM_ADAM, CUOPTIM_SCHEDULE_COSINE_RESTARTS);
  check_standard(&c, MATCH_CLOSE, "Adam CosineDecayRestarts");
}

/* Gradient lists covering some variables only (omitted, or listed with grad NULL), in varying
 * order: only those variables are updated, EMA still averages all of them, and variables without a
 * gradient contribute nothing to the global norm. */
Test(cuda_features, partial_gradients_adam_ema_global_clipnorm_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.global_clipnorm = 5.0;
  problem_t p = standard_problem();
  p.partial = 1;
  check_matches_host(&c, &p, MATCH_CLOSE, "Adam partial gradients + EMA + global_clipnorm");
}

Test(cuda_features, partial_gradients_sgd_momentum_ema_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  problem_t p = standard_problem();
  p.partial = 1;
  check_matches_host(&c, &p, MATCH_BITWISE, "SGD momentum partial gradients + EMA");
}

Test(cuda_features, partial_gradients_lamb_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  problem_t p = standard_problem();
  p.partial = 1;
  check_matches_host(&c, &p, MATCH_CLOSE, "Lamb partial gradients");
}

Test(cuda_features, partial_gradients_nadam_clipnorm_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_NADAM);
  c.clipnorm = 1.0;
  problem_t p = standard_problem();
  p.partial = 1;
  check_matches_host(&c, &p, MATCH_CLOSE, "Nadam partial gradients + clipnorm");
}

/* Steps enqueued on the legacy default stream (stream NULL) rather than a created stream. */
Test(cuda_features, default_stream_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.clipnorm = 1.0;
  problem_t p = standard_problem();
  p.default_stream = 1;
  check_matches_host(&c, &p, MATCH_CLOSE, "Adam clipnorm on the default stream");
}

/* ---- any alignment ----------------------------------------------------------------------------------- */

/* Parameters and gradients `offset` elements past an aligned address (misaligned for the kernels'
 * 16-byte float32 and 8-byte 16-bit vector loads) give bit for bit what aligned buffers give: only
 * the load width differs, the per-element arithmetic and the reductions do not. And both match the
 * host backend. Adam + clipnorm + weight decay + EMA + partial gradients cover the update kernel's
 * vector and scalar paths, with and without a gradient. */
static void check_offset(cuoptimDtype_t param_dtype, cuoptimDtype_t grad_dtype, int offset) {
  NEED_GPU();
  char label[128];
  snprintf(label, sizeof label, "%s parameters, %s gradients at element offset %d", dtype_text(param_dtype),
           dtype_text(grad_dtype), offset);
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.learning_rate.initial_learning_rate = 0.01;
  c.clipnorm = 1.0;
  c.weight_decay = 0.1;
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = 5;
  problem_t aligned = standard_problem();
  aligned.param_dtype = param_dtype;
  aligned.grad_dtype = grad_dtype;
  aligned.partial = 1;
  problem_t shifted = aligned;
  shifted.offset = offset;

  result_t host, reference, got;
  run_problem(&c, CUOPTIM_BACKEND_HOST, &shifted, &host);
  expect_progress(&shifted, &host, label);
  run_problem(&c, CUOPTIM_BACKEND_CUDA, &aligned, &reference);
  run_problem(&c, CUOPTIM_BACKEND_CUDA, &shifted, &got);
  compare_results(&got, &reference, MATCH_BITWISE, label);
  compare_results(&got, &host, MATCH_CLOSE, label);
  free_result(&host);
  free_result(&reference);
  free_result(&got);
}

Test(cuda_alignment, float32_offset_1_matches_aligned) {
  NEED_GPU();
  check_offset(CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 1);
}

Test(cuda_alignment, float32_offset_2_matches_aligned) {
  NEED_GPU();
  check_offset(CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 2);
}

Test(cuda_alignment, float32_offset_3_matches_aligned) {
  NEED_GPU();
  check_offset(CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 3);
}

Test(cuda_alignment, float16_offset_1_matches_aligned) {
  NEED_GPU();
  check_offset(CUOPTIM_FLOAT16, CUOPTIM_BFLOAT16, 1);
}

Test(cuda_alignment, bfloat16_offset_2_matches_aligned) {
  NEED_GPU();
  check_offset(CUOPTIM_BFLOAT16, CUOPTIM_FLOAT16, 2);
}

Test(cuda_alignment, float16_offset_3_matches_aligned) {
  NEED_GPU();
  check_offset(CUOPTIM_FLOAT16, CUOPTIM_FLOAT32, 3);
}

/* ---- mixed precision ---------------------------------------------------------------------------------- */

/* Parameters of one dtype, gradients of another, against the host backend with the same dtypes.
 * The fp32 state (and fp32 parameters) within the tolerance above. 16-bit parameters: at most 1
 * ulp of their type apart, not bitwise: both backends round the fp32 master to the 16-bit type the
 * same way (round to nearest even), but the masters themselves may differ by a few float32 ulps
 * (Adam's bias correction uses device powf vs glibc powf; clipnorm's sum order differs), and a
 * master sitting next to a rounding boundary of the 16-bit type can round to either neighbour.
 * Adam with lr 0.01 so that the 16-bit parameters actually move; clipnorm reads the 16-bit
 * gradients in the inspect pass; EMA overwrite writes the 16-bit copy from the average. */
static void check_mixed(cuoptimDtype_t param_dtype, cuoptimDtype_t grad_dtype) {
  NEED_GPU();
  char label[128];
  snprintf(label, sizeof label, "Adam, %s parameters, %s gradients", dtype_text(param_dtype), dtype_text(grad_dtype));
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.learning_rate.initial_learning_rate = 0.01;
  c.clipnorm = 1.0;
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = 3;
  problem_t p = standard_problem();
  p.param_dtype = param_dtype;
  p.grad_dtype = grad_dtype;
  check_matches_host(&c, &p, MATCH_CLOSE, label);
}

Test(cuda_mixed_precision, float32_params_float32_grads) { NEED_GPU(); check_mixed(CUOPTIM_FLOAT32, CUOPTIM_FLOAT32); }
Test(cuda_mixed_precision, float32_params_float16_grads) { NEED_GPU(); check_mixed(CUOPTIM_FLOAT32, CUOPTIM_FLOAT16); }
Test(cuda_mixed_precision, float32_params_bfloat16_grads) { NEED_GPU(); check_mixed(CUOPTIM_FLOAT32, CUOPTIM_BFLOAT16); }
Test(cuda_mixed_precision, float16_params_float32_grads) { NEED_GPU(); check_mixed(CUOPTIM_FLOAT16, CUOPTIM_FLOAT32); }
Test(cuda_mixed_precision, float16_params_float16_grads) { NEED_GPU(); check_mixed(CUOPTIM_FLOAT16, CUOPTIM_FLOAT16); }
Test(cuda_mixed_precision, float16_params_bfloat16_grads) { NEED_GPU(); check_mixed(CUOPTIM_FLOAT16, CUOPTIM_BFLOAT16); }
Test(cuda_mixed_precision, bfloat16_params_float32_grads) { NEED_GPU(); check_mixed(CUOPTIM_BFLOAT16, CUOPTIM_FLOAT32); }
Test(cuda_mixed_precision, bfloat16_params_float16_grads) { NEED_GPU(); check_mixed(CUOPTIM_BFLOAT16, CUOPTIM_FLOAT16); }
Test(cuda_mixed_precision, bfloat16_params_bfloat16_grads) { NEED_GPU(); check_mixed(CUOPTIM_BFLOAT16, CUOPTIM_BFLOAT16); }

/* ---- the update instances compiled for common configurations ---------------------------------------- */

/* Steps without clipnorm, clipvalue, loss scaling, accumulation, EMA or the rules' options run an
 * update instance whose flags are compile-time constants (cuda/launch.h, cuoptim_update_features):
 * plain (weight decay read per variable), global_clipnorm, half parameters with masters (each
 * gradient in its variable's dtype), SGD with momentum. The standard problem has whole 8192-element
 * chunks, partial ones, buffers off 16-byte alignment (the scalar path) and tails; "bias$" takes
 * two variables out of weight decay. On the emulated device the instance is checked by name and
 * the result bit for bit (the arithmetic is the host's); on a GPU within the tolerance (Adam's
 * square root and division are IEEE on both sides, but 16-bit parameters may round a master at a
 * boundary either way, as check_mixed says). */
static void check_fixed_instance(cuoptimConfig_t *c, cuoptimDtype_t dtype, const char *instance, const char *label) {
  problem_t p = standard_problem();
  p.param_dtype = p.grad_dtype = dtype;
  p.exclude = "bias$";
  c->learning_rate.initial_learning_rate = 0.01;
#ifdef CUOPTIM_TEST_EMULATED_DEVICE
  long fixed = cuoptim_emu_kernels_run(instance), generic = cuoptim_emu_kernels_run("update_kernel");
  check_matches_host(c, &p, MATCH_BITWISE, label);
  cr_expect_eq(cuoptim_emu_kernels_run(instance) - fixed, p.steps, "%s: %ld steps ran %s, want %d", label,
               cuoptim_emu_kernels_run(instance) - fixed, instance, p.steps);
  cr_expect_eq(cuoptim_emu_kernels_run("update_kernel"), generic, "%s: the generic update kernel ran", label);
#else
  (void)instance;
  check_matches_host(c, &p, dtype == CUOPTIM_FLOAT32 && c->kind != CUOPTIM_ADAM && c->kind != CUOPTIM_ADAMW, label);
#endif
}

#define FIXED_PLAIN "update_fixed_kernel<KIND | (int)(0) << 8>"
#define FIXED_GLOBAL_CLIP "update_fixed_kernel<KIND | (int)(CUOPTIM_UPDATE_GLOBAL_CLIP) << 8>"
#define FIXED_MASTER "update_fixed_kernel<KIND | (int)(CUOPTIM_UPDATE_MASTER) << 8>"
#define FIXED_MOMENTUM "update_fixed_kernel<KIND | (int)(CUOPTIM_UPDATE_MOMENTUM) << 8>"
#define FIXED_MOMENTUM_MASTER "update_fixed_kernel<KIND | (int)(CUOPTIM_UPDATE_MOMENTUM | CUOPTIM_UPDATE_MASTER) << 8>"

Test(cuda_fixed_update, adam_plain) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  check_fixed_instance(&c, CUOPTIM_FLOAT32, FIXED_PLAIN, "Adam, plain instance");
}

Test(cuda_fixed_update, adamw_weight_decay_per_variable) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAMW);
  c.weight_decay = 0.05;
  check_fixed_instance(&c, CUOPTIM_FLOAT32, FIXED_PLAIN, "AdamW, plain instance");
}

Test(cuda_fixed_update, adamw_global_clipnorm) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAMW);
  c.weight_decay = 0.05;
  c.global_clipnorm = 5.0;
  check_fixed_instance(&c, CUOPTIM_FLOAT32, FIXED_GLOBAL_CLIP, "AdamW global_clipnorm instance");
}

Test(cuda_fixed_update, adamw_float16_masters) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAMW);
  c.weight_decay = 0.05;
  check_fixed_instance(&c, CUOPTIM_FLOAT16, FIXED_MASTER, "AdamW, float16 parameters, master instance");
}

Test(cuda_fixed_update, adam_bfloat16_masters) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  check_fixed_instance(&c, CUOPTIM_BFLOAT16, FIXED_MASTER, "Adam, bfloat16 parameters, master instance");
}

Test(cuda_fixed_update, sgd_momentum_weight_decay) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  c.weight_decay = 0.01;
  check_fixed_instance(&c, CUOPTIM_FLOAT32, FIXED_MOMENTUM, "SGD momentum, plain instance");
}

Test(cuda_fixed_update, sgd_momentum_bfloat16_masters) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  check_fixed_instance(&c, CUOPTIM_BFLOAT16, FIXED_MOMENTUM_MASTER, "SGD momentum, bfloat16 master instance");
}

/* Every other kind with an instance, plain and with half masters. */
Test(cuda_fixed_update, every_kind_plain_and_float16_masters) {
  NEED_GPU();
  static const cuoptimOptimizerKind_t kinds[] = {CUOPTIM_SGD,    CUOPTIM_RMSPROP, CUOPTIM_ADAGRAD, CUOPTIM_ADADELTA,
                                                 CUOPTIM_ADAMAX, CUOPTIM_NADAM,   CUOPTIM_LION};
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    char label[96];
    cuoptimConfig_t c = test_config(kinds[k]);
    snprintf(label, sizeof label, "%s, plain instance", cuoptimOptimizerName(kinds[k]));
    check_fixed_instance(&c, CUOPTIM_FLOAT32, FIXED_PLAIN, label);
    c = test_config(kinds[k]);
    snprintf(label, sizeof label, "%s, float16 master instance", cuoptimOptimizerName(kinds[k]));
    check_fixed_instance(&c, CUOPTIM_FLOAT16, FIXED_MASTER, label);
  }
}

/* Gradients of another dtype than their variable's: the generic kernel, the same result. */
Test(cuda_fixed_update, float32_params_float16_grads_run_the_generic_kernel) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  problem_t p = standard_problem();
  p.grad_dtype = CUOPTIM_FLOAT16;
#ifdef CUOPTIM_TEST_EMULATED_DEVICE
  long generic = cuoptim_emu_kernels_run("update_kernel");
  check_matches_host(&c, &p, MATCH_BITWISE, "Adam, float16 gradients of float32 parameters");
  cr_expect_eq(cuoptim_emu_kernels_run("update_kernel") - generic, p.steps);
#else
  check_matches_host(&c, &p, MATCH_CLOSE, "Adam, float16 gradients of float32 parameters");
#endif
}

/* ---- Adafactor ---------------------------------------------------------------------------------------
 * The standard sizes with shapes: [1] and [3] (a full velocity), [3, 35, 39] (three factored
 * matrices), [65537, 1] (a single column: r holds every element's mean) and [11, 9091] (wide). The
 * CUDA stages take the host's reductions in the host's order (cuda/rules.h), so the emulated device
 * gives the host's bits; on a GPU within the tolerance (the prologue's beta_2_t goes through pow in
 * double, libdevice's against glibc's). */
static const int ADAFACTOR_RANKS[5] = {1, 1, 3, 2, 2};
static const int64_t ADAFACTOR_DIMS[5][3] = {{1}, {3}, {3, 35, 39}, {65537, 1}, {11, 9091}};

#ifdef CUOPTIM_TEST_EMULATED_DEVICE
#define ADAFACTOR_MATCH MATCH_BITWISE
#else
#define ADAFACTOR_MATCH MATCH_CLOSE
#endif

static problem_t adafactor_problem(void) {
  problem_t p = standard_problem();
  p.ranks = ADAFACTOR_RANKS;
  p.dims = ADAFACTOR_DIMS;
  return p;
}

static cuoptimConfig_t adafactor_config(void) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAFACTOR);
  c.learning_rate.initial_learning_rate = 0.01;
  return c;
}

Test(cuda_optimizers, adafactor_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = adafactor_config();
  problem_t p = adafactor_problem();
  check_matches_host(&c, &p, ADAFACTOR_MATCH, "Adafactor");
}

Test(cuda_optimizers, adafactor_hyperparameters_match_host) {
  NEED_GPU();
  cuoptimConfig_t c = adafactor_config();
  c.beta_2_decay = -0.6;
  c.epsilon_1 = 1e-20;
  c.epsilon_2 = 1e-2;
  c.clip_threshold = 0.5;
  c.relative_step = 0;
  problem_t p = adafactor_problem();
  check_matches_host(&c, &p, ADAFACTOR_MATCH, "Adafactor beta_2_decay, epsilons, clip_threshold");
}

Test(cuda_features, adafactor_clipnorm_weight_decay_with_exclusion_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = adafactor_config();
  c.clipnorm = 1.0;
  c.weight_decay = 0.1;
  problem_t p = adafactor_problem();
  p.exclude = "bias$";
  check_matches_host(&c, &p, ADAFACTOR_MATCH, "Adafactor clipnorm + weight_decay excluding bias$");
}

Test(cuda_features, adafactor_ema_overwrite_finalize_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = adafactor_config();
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = 4;
  problem_t p = adafactor_problem();
  p.finalize = 1;
  check_matches_host(&c, &p, ADAFACTOR_MATCH, "Adafactor EMA overwrite every 4 + finalize");
}

Test(cuda_features, adafactor_gradient_accumulation_clipvalue_ema_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = adafactor_config();
  c.gradient_accumulation_steps = 3;
  c.clipvalue = 0.5;
  c.use_ema = 1;
  problem_t p = adafactor_problem();
  p.steps = 7; /* ends on a micro-step: the accumulators are compared non-zero */
  check_matches_host(&c, &p, ADAFACTOR_MATCH, "Adafactor gradient_accumulation_steps 3 + clipvalue + EMA");
}

Test(cuda_features, adafactor_partial_gradients_global_clipnorm_loss_scale_factor_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = adafactor_config();
  c.global_clipnorm = 5.0;
  c.loss_scale_factor = 3.0;
  c.use_ema = 1;
  problem_t p = adafactor_problem();
  p.partial = 1;
  check_matches_host(&c, &p, ADAFACTOR_MATCH, "Adafactor partial gradients + global_clipnorm + loss_scale_factor");
}

Test(cuda_features, adafactor_schedule_cosine_restarts_matches_host) {
  NEED_GPU();
  cuoptimConfig_t c = schedule_config(CUOPTIM_ADAFACTOR, CUOPTIM_SCHEDULE_COSINE_RESTARTS);
  problem_t p = adafactor_problem();
  check_matches_host(&c, &p, ADAFACTOR_MATCH, "Adafactor CosineDecayRestarts");
}

Test(cuda_features, adafactor_dynamic_loss_scale_skips_inf_and_nan_steps) {
  NEED_GPU();
  cuoptimConfig_t c = adafactor_config();
  check_dynamic_loss_scale_of(&c, adafactor_problem(), ADAFACTOR_MATCH, "Adafactor dynamic loss scale");
}

/* RMS(w) on values whose float32 mean square depends on the order of addition: 2^30, 262143.9375
 * and 24579 values near 1, whose squares are below half a double ulp of 2^60, so that each order
 * loses a different share of them to rounding and the float32 sum falls on either side of the
 * midpoint 2^60 + 2^36. Added element by element, or in eight lanes i % 8, RMS(w) is 6848573; in
 * cuoptim_sumsq's order (cuda/rules.h: segments of 8192, lanes j % 256) 6848573.5, and alpha_t,
 * and so every element's step, follows. Both backends take that order: one step (t = 1: beta_2_t
 * is 0 and rho_t the learning rate, exactly, on the host and on a GPU) gives the same bits. */
Test(cuda_optimizers, adafactor_rms_takes_the_host_order_where_the_order_decides_the_bits) {
  NEED_GPU();
  enum { N = 24581 };
  float *init = malloc(N * sizeof *init), *grad = malloc(N * sizeof *grad);
  float *out[2] = {malloc(N * sizeof(float)), malloc(N * sizeof(float))};
  cr_assert(init && grad && out[0] && out[1]);
  for (size_t i = 0; i < N; i++) {
    init[i] = (0.75f + (float)(i % 7) * 0.125f) * 1.046875f;
    grad[i] = test_pseudo_random(41, 0, i);
  }
  init[0] = 1073741824.0f;
  init[1] = 262143.9375f;
  cuoptimConfig_t c = adafactor_config();
  for (int b = 0; b < 2; b++) {
    test_rig_t rig;
    test_rig_init(&rig, &c, b ? CUOPTIM_BACKEND_CUDA : CUOPTIM_BACKEND_HOST);
    test_rig_add(&rig, "dense/kernel", init, N);
    const float *grads[1] = {grad};
    OK(test_rig_try_apply(&rig, grads));
    test_rig_get(&rig, 0, out[b]);
    test_rig_destroy(&rig);
  }
  long first = test_first_mismatch(out[1], out[0], N, 0.0, 0.0);
  cr_expect_eq(first, -1, "element %ld: %.9g on the CUDA backend, %.9g on the host", first,
               first >= 0 ? out[1][first] : 0.0, first >= 0 ? out[0][first] : 0.0);
  free(init);
  free(grad);
  free(out[0]);
  free(out[1]);
}

/* A row mean whose float32 value depends on the order of addition: row 0 of a [3, 40] kernel holds
 * the gradients 2^30, 2^18 and 38 times 10, so that g^2 + epsilon_1 summed in index order stays
 * on the float32 midpoint 2^60 + 2^36 (each 100 is below half a double ulp of 2^60 and is lost),
 * which rounds to 2^60, while any order that adds the small ones first ends above it (2^60 + 2^37).
 * The CUDA moments stage reads the row a tile of 32 columns at a time and must add it in index
 * order, the host's: one step (t = 1: beta_2_t = 0, so r is the row mean itself) gives the same
 * bits, parameters and r, c and velocity. */
Test(cuda_optimizers, adafactor_row_means_take_the_host_order_where_the_order_decides_the_bits) {
  NEED_GPU();
  enum { ROWS = 3, COLS = 40, N = ROWS * COLS };
  static const int64_t shape[2] = {ROWS, COLS};
  float init[N], grad[N], out[2][N];
  for (size_t i = 0; i < N; i++) {
    init[i] = test_pseudo_random(43, 0, i);
    grad[i] = i < COLS ? 10.0f : test_pseudo_random(43, 1, i);
  }
  grad[0] = 1073741824.0f;
  grad[1] = 262144.0f;
  cuoptimConfig_t c = adafactor_config();
  cuoptimOptimizer_t opt[2] = {NULL, NULL};
  for (int b = 0; b < 2; b++) {
    cuoptimBackend_t backend = b ? CUOPTIM_BACKEND_CUDA : CUOPTIM_BACKEND_HOST;
    OK(cuoptimCreate(&opt[b], &c, backend, 0));
    float *param = test_mem_from(backend, init, N), *g = test_mem_from(backend, grad, N);
    cuoptimVariable_t v;
    OK(cuoptimAddVariableWithShape(opt[b], "dense/kernel", param, CUOPTIM_FLOAT32, 2, shape, &v));
    cuoptimGradient_t list[1] = {{0, g, CUOPTIM_FLOAT32}};
    OK(cuoptimApplyGradients(opt[b], 1, list, NULL));
    OK(cuoptimSynchronize(opt[b]));
    test_mem_download(backend, out[b], param, sizeof out[b]);
    test_mem_free(backend, param);
    test_mem_free(backend, g);
  }
  long first = test_first_mismatch(out[1], out[0], N, 0.0, 0.0);
  cr_expect_eq(first, -1, "element %ld: %.9g on the CUDA backend, %.9g on the host", first,
               first >= 0 ? out[1][first] : 0.0, first >= 0 ? out[0][first] : 0.0);
  int count = 0;
  OK(cuoptimGetWeightCount(opt[0], &count));
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(opt[0], i, &info));
    double a[N], b[N];
    cr_assert(info.count <= N);
    OK(cuoptimGetWeights(opt[0], i, a, info.count));
    OK(cuoptimGetWeights(opt[1], i, b, info.count));
    size_t differ = 0;
    for (size_t j = 0; j < info.count; j++) differ += memcmp(&a[j], &b[j], sizeof a[j]) != 0;
    cr_expect_eq(differ, 0, "entry %d (%s): %zu values differ from the host's", i, info.name, differ);
  }
  for (int b = 0; b < 2; b++) OK(cuoptimDestroy(opt[b]));
}

/* The state in Keras's order moves between backends: three host steps, every entry (r, c and
 * velocity included) read with cuoptimGetWeights and written into a CUDA optimizer with
 * cuoptimSetWeights, then three more steps on each give the same parameters and state. */
Test(cuda_features, adafactor_state_set_from_the_host_continues_as_the_host) {
  NEED_GPU();
  enum { ROWS = 33, COLS = 70, BIAS = 50, STEPS = 6 };
  static const int64_t matrix[2] = {ROWS, COLS}, vector[1] = {BIAS};
  static const size_t counts[2] = {ROWS * COLS, BIAS};
  cuoptimConfig_t c = adafactor_config();
  c.weight_decay = 0.01;
  cuoptimOptimizer_t opt[2] = {NULL, NULL};
  float *param[2][2], *grad[2][2], *values = malloc(ROWS * COLS * sizeof *values);
  cr_assert(values);
  for (int b = 0; b < 2; b++) {
    cuoptimBackend_t backend = b ? CUOPTIM_BACKEND_CUDA : CUOPTIM_BACKEND_HOST;
    OK(cuoptimCreate(&opt[b], &c, backend, 0));
    for (int k = 0; k < 2; k++) {
      for (size_t i = 0; i < counts[k]; i++) values[i] = test_pseudo_random(5, (uint64_t)k, i);
      param[b][k] = test_mem_from(backend, values, counts[k]);
      grad[b][k] = test_mem_alloc(backend, counts[k] * sizeof(float));
      cuoptimVariable_t v;
      OK(cuoptimAddVariableWithShape(opt[b], k ? "dense/bias" : "dense/kernel", param[b][k], CUOPTIM_FLOAT32, 2 - k,
                                     k ? vector : matrix, &v));
    }
  }
  for (int step = 0; step < STEPS; step++) {
    if (step == STEPS / 2) { /* the CUDA optimizer takes the host's parameters and state */
      int count = 0;
      OK(cuoptimGetWeightCount(opt[0], &count));
      for (int i = 0; i < count; i++) {
        cuoptimWeightInfo_t info;
        OK(cuoptimGetWeightInfo(opt[0], i, &info));
        double *state = malloc(info.count * sizeof *state);
        cr_assert(state);
        OK(cuoptimGetWeights(opt[0], i, state, info.count));
        OK(cuoptimSetWeights(opt[1], i, state, info.count));
        free(state);
      }
      for (int k = 0; k < 2; k++) {
        test_mem_download(CUOPTIM_BACKEND_HOST, values, param[0][k], counts[k] * sizeof(float));
        test_mem_upload(CUOPTIM_BACKEND_CUDA, param[1][k], values, counts[k] * sizeof(float));
      }
    }
    for (int b = step < STEPS / 2 ? 0 : 1; b >= 0; b--) {
      cuoptimBackend_t backend = b ? CUOPTIM_BACKEND_CUDA : CUOPTIM_BACKEND_HOST;
      cuoptimGradient_t list[2];
      for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < counts[k]; i++) values[i] = test_pseudo_random(6, (uint64_t)(k * 16 + step), i);
        test_mem_upload(backend, grad[b][k], values, counts[k] * sizeof(float));
        list[k] = (cuoptimGradient_t){k, grad[b][k], CUOPTIM_FLOAT32};
      }
      OK(cuoptimApplyGradients(opt[b], 2, list, NULL));
      OK(cuoptimSynchronize(opt[b]));
    }
  }
  float *other = malloc(ROWS * COLS * sizeof *other);
  cr_assert(other);
  for (int k = 0; k < 2; k++) {
    test_mem_download(CUOPTIM_BACKEND_HOST, values, param[0][k], counts[k] * sizeof(float));
    test_mem_download(CUOPTIM_BACKEND_CUDA, other, param[1][k], counts[k] * sizeof(float));
    size_t differ = 0;
    for (size_t i = 0; i < counts[k]; i++) differ += !close_enough(other[i], values[i], RTOL, PARAM_ATOL);
    cr_expect_eq(differ, 0, "variable %d: %zu parameters differ from the host's", k, differ);
  }
  int count = 0;
  OK(cuoptimGetWeightCount(opt[1], &count));
  cr_expect_eq(count, 8, "iteration, learning_rate, then r, c, velocity of each variable: %d entries", count);
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(opt[1], i, &info));
    double *a = malloc(info.count * sizeof *a), *b = malloc(info.count * sizeof *b);
    cr_assert(a && b);
    OK(cuoptimGetWeights(opt[0], i, a, info.count));
    OK(cuoptimGetWeights(opt[1], i, b, info.count));
    size_t differ = 0;
    for (size_t j = 0; j < info.count; j++) differ += !close_enough(b[j], a[j], RTOL, 1e-7 * fabs(a[j]) + 1e-30);
    cr_expect_eq(differ, 0, "entry %d (%s): %zu values differ from the host's", i, info.name, differ);
    free(a);
    free(b);
  }
  for (int b = 0; b < 2; b++) {
    OK(cuoptimDestroy(opt[b]));
    for (int k = 0; k < 2; k++) {
      test_mem_free(b ? CUOPTIM_BACKEND_CUDA : CUOPTIM_BACKEND_HOST, param[b][k]);
      test_mem_free(b ? CUOPTIM_BACKEND_CUDA : CUOPTIM_BACKEND_HOST, grad[b][k]);
    }
  }
  free(values);
  free(other);
}

/* Half parameters with float32 masters, gradients of either 16-bit type or float32. */
static void check_adafactor_mixed(cuoptimDtype_t param_dtype, cuoptimDtype_t grad_dtype) {
  char label[128];
  snprintf(label, sizeof label, "Adafactor, %s parameters, %s gradients", dtype_text(param_dtype),
           dtype_text(grad_dtype));
  cuoptimConfig_t c = adafactor_config();
  c.clipnorm = 1.0;
  c.use_ema = 1;
  c.ema_overwrite_frequency = 3;
  problem_t p = adafactor_problem();
  p.param_dtype = param_dtype;
  p.grad_dtype = grad_dtype;
  p.offset = -1; /* buffers off 16-byte alignment too */
  check_matches_host(&c, &p, ADAFACTOR_MATCH, label);
}

Test(cuda_mixed_precision, adafactor_float16_params_float16_grads) {
  NEED_GPU();
  check_adafactor_mixed(CUOPTIM_FLOAT16, CUOPTIM_FLOAT16);
}
Test(cuda_mixed_precision, adafactor_bfloat16_params_float32_grads) {
  NEED_GPU();
  check_adafactor_mixed(CUOPTIM_BFLOAT16, CUOPTIM_FLOAT32);
}
Test(cuda_mixed_precision, adafactor_float32_params_bfloat16_grads) {
  NEED_GPU();
  check_adafactor_mixed(CUOPTIM_FLOAT32, CUOPTIM_BFLOAT16);
}

/* ---- determinism ------------------------------------------------------------------------------------ */

/* global_clipnorm and Lamb reduce across elements (per-chunk partial sums, then per variable and
 * over variables); with no float atomics, two runs give the same bits. 100 tensors, several of
 * them spanning many 8192-element chunks. */
Test(cuda_determinism, lamb_global_clipnorm_runs_are_bitwise_identical) {
  NEED_GPU();
  enum { N = 100 };
  static size_t sizes[N];
  for (int k = 0; k < N; k++) sizes[k] = (size_t)(k * 7919) % 40000 + 1;
  problem_t p = standard_problem();
  p.num_vars = N;
  p.sizes = sizes;
  p.names = NULL;
  p.steps = 4;
  p.offset = -1;
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  c.global_clipnorm = 1.0;
  result_t first, second, host;
  run_problem(&c, CUOPTIM_BACKEND_CUDA, &p, &first);
  run_problem(&c, CUOPTIM_BACKEND_CUDA, &p, &second);
  compare_results(&second, &first, MATCH_BITWISE, "Lamb + global_clipnorm, second CUDA run vs first");
  run_problem(&c, CUOPTIM_BACKEND_HOST, &p, &host);
  expect_progress(&p, &host, "Lamb + global_clipnorm, 100 tensors");
  compare_results(&first, &host, MATCH_CLOSE, "Lamb + global_clipnorm, 100 tensors, CUDA vs host");
  free_result(&first);
  free_result(&second);
  free_result(&host);
}

/* ---- many tensors -------------------------------------------------------------------------------------- */

/* 10,000 tensors of 1..300 elements at mixed alignments: the variable table, the chunk list, the
 * batched gradient-table upload (several scatter launches) and the per-variable clipnorm sums. */
Test(cuda_many_tensors, ten_thousand_tensors_adam_clipnorm_match_host) {
  NEED_GPU();
  enum { N = 10000 };
  static size_t sizes[N];
  for (int k = 0; k < N; k++) sizes[k] = (size_t)(k * 37) % 300 + 1;
  problem_t p = standard_problem();
  p.num_vars = N;
  p.sizes = sizes;
  p.names = NULL;
  p.steps = 3;
  p.offset = -1;
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.clipnorm = 1.0;
  check_matches_host(&c, &p, MATCH_CLOSE, "Adam + clipnorm, 10000 tensors");
}

/* 100,000 tensors of 1..8 elements (the upper end): 51 gradient-table batches, a grid of
 * 100,000 chunks per stage, 12,500 blocks of per-variable sums and the global sum over them. */
Test(cuda_many_tensors, hundred_thousand_tensors_adam_global_clipnorm_match_host, .timeout = 600) {
  NEED_GPU();
  enum { N = 100000 };
  static size_t sizes[N];
  for (int k = 0; k < N; k++) sizes[k] = (size_t)(k * 5) % 8 + 1;
  problem_t p = standard_problem();
  p.num_vars = N;
  p.sizes = sizes;
  p.names = NULL;
  p.steps = 2;
  p.offset = -1;
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.global_clipnorm = 1.0;
  check_matches_host(&c, &p, MATCH_CLOSE, "Adam + global_clipnorm, 100000 tensors");
}

/* ---- bad input ---------------------------------------------------------------------------------------- */

Test(cuda_bad_input, add_variable_rejects_host_pointer) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, 0));
  float *host = malloc(16 * sizeof *host);
  cr_assert(host);
  cuoptimVariable_t v = -7;
  cuoptimStatus_t status = cuoptimAddVariable(opt, "w", host, CUOPTIM_FLOAT32, 16, &v);
  cr_expect_eq(status, CUOPTIM_STATUS_INVALID_VALUE, "malloc'd param: status %d (%s), want INVALID_VALUE", (int)status,
               cuoptimGetStatusString(status));
  const char *message = cuoptimGetLastErrorMessage();
  cr_expect(strstr(message, "cuoptimAddVariable") && strstr(message, "param"),
            "the message should name the call and the argument: \"%s\"", message);
  cr_expect_eq(v, -7, "*variable written on failure");
  int count = -1;
  OK(cuoptimGetVariableCount(opt, &count));
  cr_expect_eq(count, 0, "a rejected variable was registered");
  /* The optimizer is still usable. */
  float *device = NULL;
  CUDA_OK(cudaMalloc((void **)&device, 16 * sizeof *device));
  OK(cuoptimAddVariable(opt, "w", device, CUOPTIM_FLOAT32, 16, &v));
  cr_expect_eq(v, 0);
  OK(cuoptimDestroy(opt));
  CUDA_OK(cudaFree(device));
  free(host);
}

/* Page-locked host memory is reachable from the device, but the contract asks for device or
 * managed memory. */
Test(cuda_bad_input, add_variable_rejects_pinned_host_pointer) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, 0));
  float *pinned = NULL;
  CUDA_OK(cudaMallocHost((void **)&pinned, 16 * sizeof *pinned));
  cuoptimVariable_t v;
  cuoptimStatus_t status = cuoptimAddVariable(opt, "w", pinned, CUOPTIM_FLOAT32, 16, &v);
  cr_expect_eq(status, CUOPTIM_STATUS_INVALID_VALUE, "cudaMallocHost param: status %d (%s), want INVALID_VALUE",
               (int)status, cuoptimGetStatusString(status));
  cr_expect(strstr(cuoptimGetLastErrorMessage(), "param"), "message: \"%s\"", cuoptimGetLastErrorMessage());
  OK(cuoptimDestroy(opt));
  CUDA_OK(cudaFreeHost(pinned));
}

Test(cuda_bad_input, apply_gradients_rejects_host_gradient) {
  NEED_GPU();
  enum { COUNT = 1000 };
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, 0));
  float initial[COUNT], after[COUNT];
  for (int i = 0; i < COUNT; i++) initial[i] = test_pseudo_random(7, 1, (uint64_t)i);
  float *param = NULL;
  CUDA_OK(cudaMalloc((void **)&param, sizeof initial));
  CUDA_OK(cudaMemcpy(param, initial, sizeof initial, cudaMemcpyHostToDevice));
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "w", param, CUOPTIM_FLOAT32, COUNT, &v));
  float *host_grad = malloc(sizeof initial);
  cr_assert(host_grad);
  for (int i = 0; i < COUNT; i++) host_grad[i] = test_pseudo_random(7, 2, (uint64_t)i);
  cuoptimGradient_t g;
  memset(&g, 0, sizeof g);
  g.variable = v;
  g.grad = host_grad;
  g.dtype = CUOPTIM_FLOAT32;
  cuoptimStatus_t status = cuoptimApplyGradients(opt, 1, &g, NULL);
  cr_expect_eq(status, CUOPTIM_STATUS_INVALID_VALUE, "malloc'd gradient: status %d (%s), want INVALID_VALUE",
               (int)status, cuoptimGetStatusString(status));
  const char *message = cuoptimGetLastErrorMessage();
  cr_expect(strstr(message, "cuoptimApplyGradients") && strstr(message, "grad"),
            "the message should name the call and the argument: \"%s\"", message);
  /* A failed call changes nothing. */
  int64_t iterations = -1;
  OK(cuoptimGetIterations(opt, &iterations));
  cr_expect_eq(iterations, 0, "iterations %lld after a rejected step", (long long)iterations);
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaMemcpy(after, param, sizeof after, cudaMemcpyDeviceToHost));
  cr_expect(memcmp(after, initial, sizeof initial) == 0, "the parameters changed after a rejected step");
  OK(cuoptimDestroy(opt));
  CUDA_OK(cudaFree(param));
  free(host_grad);
}

Test(cuda_bad_input, create_rejects_device_99) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  cuoptimOptimizer_t opt = NULL;
  cuoptimStatus_t status = cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, 99);
  cr_expect_eq(status, CUOPTIM_STATUS_INVALID_VALUE, "device 99: status %d (%s), want INVALID_VALUE", (int)status,
               cuoptimGetStatusString(status));
  cr_expect(strstr(cuoptimGetLastErrorMessage(), "device"), "the message should name the device: \"%s\"",
            cuoptimGetLastErrorMessage());
  cr_expect_null(opt, "*optimizer written on failure");
  if (opt) cuoptimDestroy(opt);
}

/* Managed memory is a pointer of the CUDA backend too (cuoptim.h); it gives the host's result. */
Test(cuda_bad_input, managed_memory_is_accepted) {
  NEED_GPU();
  enum { COUNT = 5000 };
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.9;
  float *managed_param = NULL, *managed_grad = NULL;
  float host_param[COUNT], host_grad[COUNT];
  CUDA_OK(cudaMallocManaged((void **)&managed_param, COUNT * sizeof(float), cudaMemAttachGlobal));
  CUDA_OK(cudaMallocManaged((void **)&managed_grad, COUNT * sizeof(float), cudaMemAttachGlobal));
  for (int i = 0; i < COUNT; i++) {
    managed_param[i] = host_param[i] = test_pseudo_random(9, 1, (uint64_t)i);
    managed_grad[i] = host_grad[i] = test_pseudo_random(9, 2, (uint64_t)i);
  }
  cuoptimOptimizer_t on_device = NULL, on_host = NULL;
  OK(cuoptimCreate(&on_device, &c, CUOPTIM_BACKEND_CUDA, 0));
  OK(cuoptimCreate(&on_host, &c, CUOPTIM_BACKEND_HOST, 0));
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(on_device, "w", managed_param, CUOPTIM_FLOAT32, COUNT, &v));
  OK(cuoptimAddVariable(on_host, "w", host_param, CUOPTIM_FLOAT32, COUNT, &v));
  cuoptimGradient_t g;
  memset(&g, 0, sizeof g);
  g.variable = v;
  g.dtype = CUOPTIM_FLOAT32;
  for (int step = 0; step < 3; step++) {
    g.grad = managed_grad;
    OK(cuoptimApplyGradients(on_device, 1, &g, NULL));
    g.grad = host_grad;
    OK(cuoptimApplyGradients(on_host, 1, &g, NULL));
  }
  OK(cuoptimSynchronize(on_device));
  CUDA_OK(cudaDeviceSynchronize());
  cr_expect(memcmp(managed_param, host_param, sizeof host_param) == 0,
            "SGD momentum on managed memory differs from the host backend");
  OK(cuoptimDestroy(on_device));
  OK(cuoptimDestroy(on_host));
  CUDA_OK(cudaFree(managed_param));
  CUDA_OK(cudaFree(managed_grad));
}
