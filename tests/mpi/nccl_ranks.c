/*
 * nccl_ranks.c — the CUDA backend's data-parallel path over NCCL, as N ranks see it.
 *
 *   mpirun -np N nccl_ranks        exit 0: every check passed on every rank; 1: some failed
 *
 * Every rank builds its NCCL communicator with examples/nccl_bootstrap.h (from MPI), then runs
 * optimizers on CUOPTIM_BACKEND_CUDA with gradients that depend on the rank, and checks:
 *   - against a reference: the host backend in this process without communicator, stepped with
 *     the gradients every rank would have after the all-reduce (the sum over ranks in rank order,
 *     rounded to the gradient's type after each addition, times float32(1 / N) for the mean, as
 *     the update kernel scales it). With "exact" gradients (multiples of 1/16 below 1) every sum is
 *     exact in any order, so optimizers whose arithmetic is the same on both backends (SGD) must
 *     match bit for bit, and the gradient buffers must hold the exact sums; otherwise within
 *     float32 tolerance (the ranks may add in another order than the reference);
 *   - across ranks: parameters, every state entry, the iteration count, the loss scale and the
 *     gradient buffers (which receive the sums) gathered to rank 0 must be identical bytes;
 *   - a step captured in a CUDA graph (its all-reduce included) and replayed gives the bytes of
 *     eager steps;
 *   - a MultiOptimizer attached to the world (each sub-optimizer reducing its own gradients),
 *     unsharded and sharded, against a host MultiOptimizer given the reduced gradients;
 *   - ranks that register different variables, or pass different options, get INVALID_VALUE at
 *     the first step on every rank, and nothing changes.
 * Variables of 1, 2, 3, 5, 97, 1000 and 4099 elements: smaller than N (only a tail), not
 * multiples of N; buckets of a few hundred bytes, so a step makes several.
 *
 * A cuoptim or CUDA call that fails where it must not ends the run (MPI_Abort): the ranks could
 * not continue in step. The Criterion suite tests/test_nccl_ranks.c runs this under mpirun.
 */
#include <mpi.h>

#include <cuda_runtime_api.h>
#include <math.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuoptim.h"
#include "nccl_bootstrap.h"

static int rank, world;
static int failures; /* on this rank */

/* ---- reporting ------------------------------------------------------------------------------ */

static void fatal(const char *what, const char *detail) {
  fprintf(stderr, "nccl_ranks: rank %d: FATAL: %s: %s\n", rank, what, detail);
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 2);
}

#define OK(call)                                                                    \
  do {                                                                              \
    cuoptimStatus_t ok_ = (call);                                                   \
    if (ok_ != CUOPTIM_STATUS_SUCCESS) fatal(#call, cuoptimGetLastErrorMessage());  \
  } while (0)

#define CUDA(call)                                               \
  do {                                                           \
    cudaError_t cuda_ = (call);                                  \
    if (cuda_ != cudaSuccess) fatal(#call, cudaGetErrorString(cuda_)); \
  } while (0)

/* One line per failure, written at once so that the ranks' lines do not interleave. */
#define EXPECT(cond, ...)                                                                  \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      char expect_text_[1024];                                                             \
      snprintf(expect_text_, sizeof expect_text_, __VA_ARGS__);                            \
      fprintf(stderr, "nccl_ranks: rank %d of %d: FAIL: %s\n", rank, world, expect_text_); \
      failures++;                                                                          \
    }                                                                                      \
  } while (0)

/* ---- element types (round to nearest even, as __float2half_rn and __float2bfloat16_rn) ------- */

static uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static uint16_t to_half(float f) {
  uint32_t u = float_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
  if (a < 0x38800000u) return (uint16_t)(sign | (uint16_t)nearbyintf(bits_float(a) * 16777216.0f));
  a += 0xfffu + ((a >> 13) & 1u);
  return (uint16_t)(sign | ((a - 0x38000000u) >> 13));
}

static float from_half(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    float v = (float)mantissa / 16777216.0f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

static uint16_t to_bfloat16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static float from_bfloat16(uint16_t h) { return bits_float((uint32_t)h << 16); }

static size_t dtype_bytes(cuoptimDtype_t t) { return t == CUOPTIM_FLOAT32 ? 4 : 2; }

/* `value` rounded to the type. */
static float round_to(cuoptimDtype_t t, float value) {
  if (t == CUOPTIM_FLOAT16) return from_half(to_half(value));
  if (t == CUOPTIM_BFLOAT16) return from_bfloat16(to_bfloat16(value));
  return value;
}

static void store(void *base, cuoptimDtype_t t, size_t i, float value) {
  if (t == CUOPTIM_FLOAT32) {
    memcpy((char *)base + 4 * i, &value, 4);
  } else {
    uint16_t h = t == CUOPTIM_FLOAT16 ? to_half(value) : to_bfloat16(value);
    memcpy((char *)base + 2 * i, &h, 2);
  }
}

static float load(const void *base, cuoptimDtype_t t, size_t i) {
  if (t == CUOPTIM_FLOAT32) {
    float f;
    memcpy(&f, (const char *)base + 4 * i, 4);
    return f;
  }
  uint16_t h;
  memcpy(&h, (const char *)base + 2 * i, 2);
  return t == CUOPTIM_FLOAT16 ? from_half(h) : from_bfloat16(h);
}

/* ---- the problem ---------------------------------------------------------------------------- */

#define NUM_VARS 7
static const size_t SIZES[NUM_VARS] = {1, 2, 3, 5, 97, 1000, 4099};
static const char *const NAMES[NUM_VARS] = {"dense/bias",  "dense/kernel",     "norm/gamma",        "norm/beta",
                                            "conv/bias",   "conv/kernel",      "embedding/embeddings"};
#define INF_VARIABLE 4

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* Magnitudes 1e-3 .. 6 in five decades, random sign, never 0. */
static float pseudo_random(uint64_t seed, uint64_t stream, uint64_t i) {
  static const float scales[5] = {1e-3f, 3e-2f, 0.25f, 1.0f, 4.0f};
  uint64_t h = mix64(seed ^ mix64(stream ^ mix64(i)));
  float mantissa = 0.5f + (float)(h >> 40) / 16777216.0f;
  float value = mantissa * scales[(h >> 8) % 5];
  return (h & 1) ? -value : value;
}

static float param_value(int k, size_t i) { return pseudo_random(0x9a7a, (uint64_t)k, i); }

/* Rank r's gradient. Exact: +-1/16 .. +-15/16, whose sums over four ranks are exact in float16
 * and bfloat16 whatever the order. */
static float grad_value(int exact, int r, int k, int step, size_t i) {
  uint64_t stream = ((uint64_t)r << 40) | ((uint64_t)k << 20) | (uint64_t)step;
  if (!exact) return pseudo_random(0x57e9, stream, i);
  uint64_t h = mix64(stream ^ mix64(i));
  float v = (float)(1 + h % 15) / 16.0f;
  return (h >> 32) & 1 ? -v : v;
}

typedef struct {
  const char *label;
  cuoptimConfig_t config;
  cuoptimReduceOp_t reduce;
  size_t bucket_bytes;
  cuoptimDtype_t param_dtype, grad_dtype;
  int steps;
  int exact;       /* exact gradients (see grad_value) */
  int bitwise;     /* both backends do the same float32 operations: compare bits */
  int null_step;   /* the step in which NULL_VARIABLE has no gradient on any rank; -1: none */
  int inf_step;    /* the step in which the last rank's gradient of INF_VARIABLE holds an inf; -1: none */
  ncclComm_t *comm; /* NULL: the one from nccl_bootstrap_from_mpi */
  int shard;        /* sharded optimizer state: each rank's gradient buffers hold only its share's sums */
  int every_micro_step; /* gradient accumulation: options.accumulate_locally = 0 */
  /* Local accumulators: the gradient and accumulator reductions the steps must make (-1: not
   * checked). The gradient buffers then hold sums on the reducing steps only, unchecked. */
  int64_t gradient_reductions, accumulator_reductions;
} scenario_t;

/* Test hook of the library (host/comm.c): steps that reduced gradients or accumulators. */
int64_t cuoptim_comm_reductions(const struct cuoptimOptimizer *opt, int accumulators);

/* Whether the scenario's optimizer accumulates locally (the gradients are not summed every step). */
static int accumulates_locally(const scenario_t *sc) {
  return sc->config.gradient_accumulation_steps > 0 && !sc->every_micro_step && !sc->shard && world > 1;
}
#define NULL_VARIABLE 2

/* What every rank has after the all-reduce (the sum in the gradient's type, in rank order), and
 * what the update kernel makes of it (times 1/N for the mean): the reference's float32 gradient. */
static float summed(const scenario_t *sc, int k, int step, size_t i) {
  float sum = 0.0f;
  for (int r = 0; r < world; r++) {
    float g = round_to(sc->grad_dtype, grad_value(sc->exact, r, k, step, i));
    if (step == sc->inf_step && k == INF_VARIABLE && i == 0 && r == world - 1) g = INFINITY;
    sum = r == 0 ? g : round_to(sc->grad_dtype, sum + g);
  }
  return sum;
}

static float reference_gradient(const scenario_t *sc, int k, int step, size_t i) {
  float sum = summed(sc, k, step, i);
  if (sc->reduce == CUOPTIM_REDUCE_MEAN && world > 1) sum = sum * (float)(1.0 / (double)world);
  return sum;
}

/* ---- results -------------------------------------------------------------------------------- */

/* Everything a caller can observe, as bytes: parameters (in their type), the state entries (as
 * doubles), the iteration count, the loss scale. */
typedef struct {
  unsigned char *bytes;
  size_t size, capacity;
} blob_t;

static void put(blob_t *b, const void *data, size_t n) {
  if (b->size + n > b->capacity) {
    b->capacity = (b->size + n) * 2;
    b->bytes = realloc(b->bytes, b->capacity);
    if (!b->bytes) fatal("realloc", "out of memory");
  }
  memcpy(b->bytes + b->size, data, n);
  b->size += n;
}

typedef struct {
  cuoptimOptimizer_t opt;
  cuoptimBackend_t backend;
  cuoptimDtype_t param_dtype, grad_dtype;
  void *params[NUM_VARS], *grads[NUM_VARS]; /* backend memory */
} side_t;

static void *backend_alloc(cuoptimBackend_t backend, size_t bytes) {
  void *p = NULL;
  if (backend == CUOPTIM_BACKEND_CUDA)
    CUDA(cudaMalloc(&p, bytes));
  else if (!(p = calloc(1, bytes)))
    fatal("calloc", "out of memory");
  return p;
}

static void backend_free(cuoptimBackend_t backend, void *p) {
  if (backend == CUOPTIM_BACKEND_CUDA)
    CUDA(cudaFree(p));
  else
    free(p);
}

static void to_backend(cuoptimBackend_t backend, void *dst, const void *src, size_t bytes) {
  if (backend == CUOPTIM_BACKEND_CUDA)
    CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  else
    memcpy(dst, src, bytes);
}

static void from_backend(cuoptimBackend_t backend, void *dst, const void *src, size_t bytes) {
  if (backend == CUOPTIM_BACKEND_CUDA)
    CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
  else
    memcpy(dst, src, bytes);
}

/* The variables of s->opt (created): parameters on s->backend, gradient buffers beside them.
 * `sizes` may differ from SIZES (the table mismatch check). */
static void add_variables(side_t *s, const size_t *sizes) {
  cuoptimDtype_t param_dtype = s->param_dtype;
  cuoptimBackend_t backend = s->backend;
  for (int k = 0; k < NUM_VARS; k++) {
    size_t pbytes = sizes[k] * dtype_bytes(param_dtype);
    unsigned char *image = malloc(pbytes);
    if (!image) fatal("malloc", "out of memory");
    for (size_t i = 0; i < sizes[k]; i++) store(image, param_dtype, i, param_value(k, i));
    s->params[k] = backend_alloc(backend, pbytes);
    s->grads[k] = backend_alloc(backend, sizes[k] * 4); /* room for float32 */
    to_backend(backend, s->params[k], image, pbytes);
    free(image);
    cuoptimVariable_t v;
    OK(cuoptimAddVariable(s->opt, NAMES[k], s->params[k], param_dtype, sizes[k], &v));
  }
}

static void make_side(side_t *s, const cuoptimConfig_t *config, cuoptimBackend_t backend, cuoptimDtype_t param_dtype,
                      cuoptimDtype_t grad_dtype, const size_t *sizes, int device) {
  memset(s, 0, sizeof *s);
  s->backend = backend;
  s->param_dtype = param_dtype;
  s->grad_dtype = grad_dtype;
  OK(cuoptimCreate(&s->opt, config, backend, backend == CUOPTIM_BACKEND_CUDA ? device : 0));
  OK(cuoptimExcludeFromWeightDecay(s->opt, "bias$"));
  add_variables(s, sizes);
}

/* A MultiOptimizer side: configs[0] for "dense/kernel", configs[1] (the default) for the rest. */
static void make_multi_side(side_t *s, const cuoptimConfig_t configs[2], cuoptimBackend_t backend,
                            cuoptimDtype_t grad_dtype, int device) {
  memset(s, 0, sizeof *s);
  s->backend = backend;
  s->param_dtype = CUOPTIM_FLOAT32;
  s->grad_dtype = grad_dtype;
  static const char *const patterns[] = {"dense/kernel"};
  static const int pattern_optimizer[] = {0};
  cuoptimMultiConfig_t multi;
  OK(cuoptimMultiConfigInit(&multi));
  multi.num_optimizers = 2;
  multi.optimizers = configs;
  multi.num_patterns = 1;
  multi.patterns = patterns;
  multi.pattern_optimizer = pattern_optimizer;
  multi.default_optimizer = 1;
  OK(cuoptimCreateMulti(&s->opt, &multi, backend, backend == CUOPTIM_BACKEND_CUDA ? device : 0));
  add_variables(s, SIZES);
}

static void free_side(side_t *s) {
  OK(cuoptimDestroy(s->opt));
  for (int k = 0; k < NUM_VARS; k++) {
    backend_free(s->backend, s->params[k]);
    backend_free(s->backend, s->grads[k]);
  }
}

/* The step's gradient list: every variable, NULL_VARIABLE's NULL in the null step. */
static int gradient_list(const scenario_t *sc, const side_t *s, int step, cuoptimGradient_t *list) {
  for (int k = 0; k < NUM_VARS; k++) {
    list[k].variable = k;
    list[k].grad = step == sc->null_step && k == NULL_VARIABLE ? NULL : s->grads[k];
    list[k].dtype = s->grad_dtype;
  }
  return NUM_VARS;
}

/* This rank's gradients of `step` into the CUDA side's buffers, ordered on `stream`. The staging
 * buffer stays valid until the copies are done (the caller synchronizes before reusing it). */
static void upload_rank_gradients(const scenario_t *sc, const side_t *s, int step, unsigned char *staging,
                                  cudaStream_t stream) {
  size_t offset = 0;
  for (int k = 0; k < NUM_VARS; k++) {
    unsigned char *image = staging + offset;
    for (size_t i = 0; i < SIZES[k]; i++) {
      float g = grad_value(sc->exact, rank, k, step, i);
      if (step == sc->inf_step && k == INF_VARIABLE && i == 0 && rank == world - 1) g = INFINITY;
      store(image, s->grad_dtype, i, g);
    }
    size_t bytes = SIZES[k] * dtype_bytes(s->grad_dtype);
    CUDA(cudaMemcpyAsync(s->grads[k], image, bytes, cudaMemcpyHostToDevice, stream));
    offset += bytes;
  }
}

static void upload_reference_gradients(const scenario_t *sc, const side_t *s, int step) {
  for (int k = 0; k < NUM_VARS; k++)
    for (size_t i = 0; i < SIZES[k]; i++) store(s->grads[k], CUOPTIM_FLOAT32, i, reference_gradient(sc, k, step, i));
}

/* After the step, the CUDA side's gradient buffers hold the sums: exact ones are known. */
static void check_summed_gradients(const scenario_t *sc, const side_t *s, int step, blob_t *observed) {
  for (int k = 0; k < NUM_VARS; k++) {
    if (step == sc->null_step && k == NULL_VARIABLE) continue;
    size_t bytes = SIZES[k] * dtype_bytes(s->grad_dtype);
    unsigned char *got = malloc(bytes);
    if (!got) fatal("malloc", "out of memory");
    CUDA(cudaMemcpy(got, s->grads[k], bytes, cudaMemcpyDeviceToHost));
    put(observed, got, bytes);
    size_t bad = 0, first = 0;
    for (size_t i = 0; sc->exact && i < SIZES[k]; i++) {
      float want = summed(sc, k, step, i), have = load(got, s->grad_dtype, i);
      if (memcmp(&want, &have, sizeof want) != 0 && !(isnan(want) && isnan(have))) {
        if (!bad) first = i;
        bad++;
      }
    }
    EXPECT(bad == 0, "%s: step %d: the gradient buffer of %s holds %zu wrong sums (first [%zu]: %.9g, want %.9g)",
           sc->label, step, NAMES[k], bad, first, bad ? load(got, s->grad_dtype, first) : 0.0,
           bad ? summed(sc, k, step, first) : 0.0);
    free(got);
  }
}

static void observe(const side_t *s, int dynamic_loss_scale, blob_t *b) {
  OK(cuoptimSynchronize(s->opt));
  for (int k = 0; k < NUM_VARS; k++) {
    size_t bytes = SIZES[k] * dtype_bytes(s->param_dtype);
    unsigned char *p = malloc(bytes);
    if (!p) fatal("malloc", "out of memory");
    from_backend(s->backend, p, s->params[k], bytes);
    put(b, p, bytes);
    free(p);
  }
  int count = 0;
  OK(cuoptimGetWeightCount(s->opt, &count));
  for (int w = 0; w < count; w++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(s->opt, w, &info));
    double *values = malloc(info.count * sizeof *values);
    if (!values) fatal("malloc", "out of memory");
    OK(cuoptimGetWeights(s->opt, w, values, info.count));
    put(b, values, info.count * sizeof *values);
    free(values);
  }
  int64_t iterations = 0;
  OK(cuoptimGetIterations(s->opt, &iterations));
  put(b, &iterations, sizeof iterations);
  float scale = 0.0f;
  if (dynamic_loss_scale) OK(cuoptimGetLossScale(s->opt, &scale));
  put(b, &scale, sizeof scale);
}

/* Tolerance of one value: float32 arithmetic in another order, or one ulp of a 16-bit type. */
static int close_to(double got, double want, double rtol, double atol) {
  if (isnan(got) || isnan(want)) return isnan(got) && isnan(want);
  if (isinf(got) || isinf(want)) return got == want;
  return fabs(got - want) <= atol + rtol * fabs(want);
}

/* The CUDA side against the reference, entry by entry. */
static void compare_with_reference(const scenario_t *sc, const side_t *cuda, const side_t *ref) {
  int bitwise = sc->exact && sc->bitwise;
  double rtol = sc->param_dtype == CUOPTIM_FLOAT16 ? 2e-3 : sc->param_dtype == CUOPTIM_BFLOAT16 ? 1.6e-2 : 2e-5;
  for (int k = 0; k < NUM_VARS; k++) {
    size_t bytes = SIZES[k] * dtype_bytes(sc->param_dtype);
    unsigned char *a = malloc(bytes), *b = malloc(bytes);
    if (!a || !b) fatal("malloc", "out of memory");
    from_backend(cuda->backend, a, cuda->params[k], bytes);
    from_backend(ref->backend, b, ref->params[k], bytes);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < SIZES[k]; i++) {
      float x = load(a, sc->param_dtype, i), y = load(b, sc->param_dtype, i);
      int same = bitwise ? memcmp(a + i * dtype_bytes(sc->param_dtype), b + i * dtype_bytes(sc->param_dtype),
                                  dtype_bytes(sc->param_dtype)) == 0
                         : close_to(x, y, rtol, 1e-6);
      if (!same && !bad++) first = i;
    }
    EXPECT(bad == 0, "%s: %s: %zu of %zu parameters differ from the reference (%s; first [%zu]: %.9g, want %.9g)",
           sc->label, NAMES[k], bad, SIZES[k], bitwise ? "bitwise" : "tolerance", first,
           bad ? load(a, sc->param_dtype, first) : 0.0, bad ? load(b, sc->param_dtype, first) : 0.0);
    free(a);
    free(b);
  }
  int count = 0, ref_count = 0;
  OK(cuoptimGetWeightCount(cuda->opt, &count));
  OK(cuoptimGetWeightCount(ref->opt, &ref_count));
  EXPECT(count == ref_count, "%s: %d state entries, the reference has %d", sc->label, count, ref_count);
  for (int w = 0; w < count && w < ref_count; w++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(cuda->opt, w, &info));
    double *x = malloc(info.count * sizeof *x), *y = malloc(info.count * sizeof *y);
    if (!x || !y) fatal("malloc", "out of memory");
    OK(cuoptimGetWeights(cuda->opt, w, x, info.count));
    OK(cuoptimGetWeights(ref->opt, w, y, info.count));
    double scale = 0.0;
    for (size_t i = 0; i < info.count; i++)
      if (isfinite(y[i]) && fabs(y[i]) > scale) scale = fabs(y[i]);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < info.count; i++) {
      int same = bitwise ? memcmp(&x[i], &y[i], sizeof x[i]) == 0 : close_to(x[i], y[i], 2e-5, 1e-6 * scale);
      if (!same && !bad++) first = i;
    }
    EXPECT(bad == 0, "%s: state \"%s\": %zu of %zu elements differ from the reference (first [%zu]: %.9g, want %.9g)",
           sc->label, info.name, bad, info.count, first, bad ? x[first] : 0.0, bad ? y[first] : 0.0);
    free(x);
    free(y);
  }
}

/* Rank 0 compares every rank's bytes with its own. */
static void compare_across_ranks(const char *label, const blob_t *b) {
  int size = (int)b->size;
  int *sizes = rank == 0 ? calloc((size_t)world, sizeof *sizes) : NULL;
  int *offsets = rank == 0 ? calloc((size_t)world, sizeof *offsets) : NULL;
  MPI_Gather(&size, 1, MPI_INT, sizes, 1, MPI_INT, 0, MPI_COMM_WORLD);
  unsigned char *all = NULL;
  if (rank == 0) {
    size_t total = 0;
    for (int r = 0; r < world; r++) {
      offsets[r] = (int)total;
      total += (size_t)sizes[r];
    }
    all = malloc(total ? total : 1);
    if (!all) fatal("malloc", "out of memory");
  }
  MPI_Gatherv(b->bytes, size, MPI_BYTE, all, sizes, offsets, MPI_BYTE, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    for (int r = 1; r < world; r++) {
      if (sizes[r] != size) {
        EXPECT(0, "%s: rank %d observed %d bytes, rank 0 %d", label, r, sizes[r], size);
        continue;
      }
      const unsigned char *other = all + offsets[r];
      size_t differing = 0, first = 0;
      for (size_t i = 0; i < b->size; i++)
        if (other[i] != b->bytes[i] && !differing++) first = i;
      EXPECT(differing == 0, "%s: rank %d and rank 0 differ in %zu of %zu bytes (first at byte %zu)", label, r,
             differing, b->size, first);
    }
  }
  free(sizes);
  free(offsets);
  free(all);
}

/* ---- the scenarios -------------------------------------------------------------------------- */

static ncclComm_t comm, nonblocking_comm, env_comm;
static int device;

static size_t staging_bytes(void) {
  size_t total = 0;
  for (int k = 0; k < NUM_VARS; k++) total += SIZES[k] * 4;
  return total;
}

static void set_communicator(const scenario_t *sc, cuoptimOptimizer_t opt) {
  cuoptimCommOptions_t options;
  OK(cuoptimCommOptionsInit(&options));
  options.reduce = sc->reduce;
  options.bucket_bytes = sc->bucket_bytes;
  options.shard_state = sc->shard;
  options.accumulate_locally = !sc->every_micro_step;
  OK(cuoptimSetCommunicator(opt, sc->comm ? sc->comm : &comm, &options));
  int r = -1, n = -1;
  OK(cuoptimGetRank(opt, &r, &n));
  EXPECT(r == rank && n == world, "%s: cuoptimGetRank gives rank %d of %d, want %d of %d", sc->label, r, n, rank, world);
}

static void check_reductions(const scenario_t *sc, cuoptimOptimizer_t opt) {
  if (!accumulates_locally(sc) || sc->gradient_reductions < 0) return;
  int64_t gradients = cuoptim_comm_reductions(opt, 0), accumulators = cuoptim_comm_reductions(opt, 1);
  EXPECT(gradients == sc->gradient_reductions && accumulators == sc->accumulator_reductions,
         "%s: %lld steps reduced gradients and %lld accumulators, want %lld and %lld", sc->label, (long long)gradients,
         (long long)accumulators, (long long)sc->gradient_reductions, (long long)sc->accumulator_reductions);
}

static void run_scenario(const scenario_t *sc) {
  side_t cuda, ref;
  make_side(&cuda, &sc->config, CUOPTIM_BACKEND_CUDA, sc->param_dtype, sc->grad_dtype, SIZES, device);
  make_side(&ref, &sc->config, CUOPTIM_BACKEND_HOST, sc->param_dtype, CUOPTIM_FLOAT32, SIZES, device);
  set_communicator(sc, cuda.opt);
  /* Steps alternate between two streams: each waits for the previous step's event. */
  cudaStream_t streams[2];
  for (int i = 0; i < 2; i++) CUDA(cudaStreamCreateWithFlags(&streams[i], cudaStreamNonBlocking));
  unsigned char *staging = malloc(staging_bytes());
  if (!staging) fatal("malloc", "out of memory");
  blob_t observed = {0};
  cuoptimGradient_t list[NUM_VARS];
  for (int step = 0; step < sc->steps; step++) {
    cudaStream_t stream = streams[step % 2];
    upload_rank_gradients(sc, &cuda, step, staging, stream);
    OK(cuoptimApplyGradients(cuda.opt, gradient_list(sc, &cuda, step, list), list, stream));
    CUDA(cudaStreamSynchronize(stream));
    if (!sc->shard && !accumulates_locally(sc)) check_summed_gradients(sc, &cuda, step, &observed);
    upload_reference_gradients(sc, &ref, step);
    OK(cuoptimApplyGradients(ref.opt, gradient_list(sc, &ref, step, list), list, NULL));
  }
  compare_with_reference(sc, &cuda, &ref);
  check_reductions(sc, cuda.opt);
  observe(&cuda, sc->config.dynamic_loss_scale, &observed);
  compare_across_ranks(sc->label, &observed);
  free(observed.bytes);
  free(staging);
  for (int i = 0; i < 2; i++) CUDA(cudaStreamDestroy(streams[i]));
  free_side(&cuda);
  free_side(&ref);
}

/* A MultiOptimizer on the CUDA backend attached to the world: each sub-optimizer reduces its own
 * gradients; against a host MultiOptimizer stepped with the reduced gradients, and across ranks. */
static void run_multi_scenario(const scenario_t *sc, const cuoptimConfig_t configs[2]) {
  side_t cuda, ref;
  make_multi_side(&cuda, configs, CUOPTIM_BACKEND_CUDA, sc->grad_dtype, device);
  make_multi_side(&ref, configs, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32, device);
  set_communicator(sc, cuda.opt);
  cudaStream_t stream;
  CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  unsigned char *staging = malloc(staging_bytes());
  if (!staging) fatal("malloc", "out of memory");
  blob_t observed = {0};
  cuoptimGradient_t list[NUM_VARS];
  for (int step = 0; step < sc->steps; step++) {
    upload_rank_gradients(sc, &cuda, step, staging, stream);
    OK(cuoptimApplyGradients(cuda.opt, gradient_list(sc, &cuda, step, list), list, stream));
    CUDA(cudaStreamSynchronize(stream));
    if (!sc->shard) check_summed_gradients(sc, &cuda, step, &observed);
    upload_reference_gradients(sc, &ref, step);
    OK(cuoptimApplyGradients(ref.opt, gradient_list(sc, &ref, step, list), list, NULL));
  }
  compare_with_reference(sc, &cuda, &ref);
  observe(&cuda, 0, &observed);
  compare_across_ranks(sc->label, &observed);
  free(observed.bytes);
  free(staging);
  CUDA(cudaStreamDestroy(stream));
  free_side(&cuda);
  free_side(&ref);
}

/* The gradient arena: `arena` writes its gradients into cuoptim's buffers and marks them ready
 * in an order of its rank's own (a bucket starts on cuoptim's bucket stream once it and the
 * buckets after it are ready), on a stream apart from the step's; `plain` steps the same
 * gradients from buffers of its own. Both end with the same bytes, on every rank. */
static void run_arena_scenario(const scenario_t *sc) {
  side_t plain, arena;
  make_side(&plain, &sc->config, CUOPTIM_BACKEND_CUDA, sc->param_dtype, sc->grad_dtype, SIZES, device);
  make_side(&arena, &sc->config, CUOPTIM_BACKEND_CUDA, sc->param_dtype, sc->grad_dtype, SIZES, device);
  set_communicator(sc, plain.opt);
  set_communicator(sc, arena.opt);
  OK(cuoptimEnableGradientArena(arena.opt));
  void *own[NUM_VARS];
  for (int k = 0; k < NUM_VARS; k++) {
    own[k] = arena.grads[k];
    OK(cuoptimGetGradientBuffer(arena.opt, k, &arena.grads[k]));
  }
  cudaStream_t backward, step_stream;
  CUDA(cudaStreamCreateWithFlags(&backward, cudaStreamNonBlocking));
  CUDA(cudaStreamCreateWithFlags(&step_stream, cudaStreamNonBlocking));
  unsigned char *staging = malloc(2 * staging_bytes());
  if (!staging) fatal("malloc", "out of memory");
  cuoptimGradient_t list[NUM_VARS];
  for (int step = 0; step < sc->steps; step++) {
    upload_rank_gradients(sc, &plain, step, staging, step_stream);
    OK(cuoptimApplyGradients(plain.opt, gradient_list(sc, &plain, step, list), list, step_stream));
    /* "Backward": every gradient written on its stream, marked in an order of this rank's own. */
    upload_rank_gradients(sc, &arena, step, staging + staging_bytes(), backward);
    int order[NUM_VARS];
    for (int k = 0; k < NUM_VARS; k++) order[k] = k;
    for (int k = NUM_VARS - 1; k > 0; k--) {
      int j = (int)(mix64((uint64_t)(rank * 1000 + step * 10 + k)) % (uint64_t)(k + 1)), t = order[k];
      order[k] = order[j];
      order[j] = t;
    }
    for (int k = 0; k < NUM_VARS; k++) OK(cuoptimMarkGradientReady(arena.opt, order[k], backward));
    CUDA(cudaStreamSynchronize(backward)); /* the staging buffer is reused */
    OK(cuoptimApplyGradients(arena.opt, gradient_list(sc, &arena, step, list), list, step_stream));
    CUDA(cudaStreamSynchronize(step_stream));
  }
  blob_t a = {0}, b = {0};
  observe(&plain, sc->config.dynamic_loss_scale, &a);
  observe(&arena, sc->config.dynamic_loss_scale, &b);
  size_t differing = 0;
  for (size_t i = 0; i < a.size && i < b.size; i++) differing += a.bytes[i] != b.bytes[i];
  EXPECT(a.size == b.size && differing == 0, "%s: the gradient arena and the caller's buffers differ in %zu of %zu bytes",
         sc->label, differing, a.size);
  compare_across_ranks(sc->label, &b);
  check_reductions(sc, arena.opt);
  free(a.bytes);
  free(b.bytes);
  free(staging);
  CUDA(cudaStreamDestroy(backward));
  CUDA(cudaStreamDestroy(step_stream));
  for (int k = 0; k < NUM_VARS; k++) arena.grads[k] = own[k];
  free_side(&arena);
  free_side(&plain);
}

/* One step of `s` (its gradient list of `step`) captured on `stream` and instantiated. */
static cudaGraphExec_t capture_step(const scenario_t *sc, side_t *s, int step, cudaStream_t stream, cudaGraph_t *graph) {
  cuoptimGradient_t list[NUM_VARS];
  cudaGraphExec_t exec = NULL;
  CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  cuoptimStatus_t captured = cuoptimApplyGradients(s->opt, gradient_list(sc, s, step, list), list, stream);
  char message[1024];
  snprintf(message, sizeof message, "%s", cuoptimGetLastErrorMessage());
  cudaError_t ended = cudaStreamEndCapture(stream, graph);
  if (captured != CUOPTIM_STATUS_SUCCESS) fatal("cuoptimApplyGradients under stream capture", message);
  CUDA(ended);
  CUDA(cudaGraphInstantiate(&exec, *graph, 0));
  return exec;
}

/* One step of `graphed` captured (its all-reduce included) and replayed, beside eager steps of an
 * identical optimizer on the same communicator: the same bytes, on every rank. */
static void run_graph_scenario(const scenario_t *sc, int replays) {
  side_t eager, graphed;
  make_side(&eager, &sc->config, CUOPTIM_BACKEND_CUDA, sc->param_dtype, sc->grad_dtype, SIZES, device);
  make_side(&graphed, &sc->config, CUOPTIM_BACKEND_CUDA, sc->param_dtype, sc->grad_dtype, SIZES, device);
  set_communicator(sc, eager.opt);
  set_communicator(sc, graphed.opt);
  cudaStream_t stream;
  CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  unsigned char *staging = malloc(staging_bytes());
  if (!staging) fatal("malloc", "out of memory");
  cuoptimGradient_t list[NUM_VARS];

  /* The first step builds the state and compares the tables (blocking): eager on both. */
  side_t *both[2] = {&eager, &graphed};
  for (int i = 0; i < 2; i++) {
    upload_rank_gradients(sc, both[i], 0, staging, stream);
    OK(cuoptimApplyGradients(both[i]->opt, gradient_list(sc, both[i], 0, list), list, stream));
    CUDA(cudaStreamSynchronize(stream));
  }
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  exec = capture_step(sc, &graphed, 1, stream, &graph);
  for (int step = 1; step <= replays; step++) {
    upload_rank_gradients(sc, &eager, step, staging, stream);
    OK(cuoptimApplyGradients(eager.opt, gradient_list(sc, &eager, step, list), list, stream));
    CUDA(cudaStreamSynchronize(stream));
    upload_rank_gradients(sc, &graphed, step, staging, stream);
    CUDA(cudaGraphLaunch(exec, stream));
    CUDA(cudaStreamSynchronize(stream));
  }
  blob_t a = {0}, b = {0};
  observe(&eager, sc->config.dynamic_loss_scale, &a);
  observe(&graphed, sc->config.dynamic_loss_scale, &b);
  size_t differing = 0;
  for (size_t i = 0; i < a.size && i < b.size; i++) differing += a.bytes[i] != b.bytes[i];
  EXPECT(a.size == b.size && differing == 0, "%s: %d graph replays and eager steps differ in %zu of %zu bytes",
         sc->label, replays, differing, a.size);
  int64_t iterations = 0;
  OK(cuoptimGetIterations(graphed.opt, &iterations));
  EXPECT(iterations == 1 + replays, "%s: %lld iterations after 1 eager step and %d replays", sc->label,
         (long long)iterations, replays);
  compare_across_ranks(sc->label, &b);
  free(a.bytes);
  free(b.bytes);
  CUDA(cudaGraphExecDestroy(exec));
  CUDA(cudaGraphDestroy(graph));
  free(staging);
  CUDA(cudaStreamDestroy(stream));
  free_side(&eager);
  free_side(&graphed);
}

/* Local accumulators and a captured step: refused while the accumulators are the ranks' parts
 * (mid-cycle), captured after an applied step, whose replays then reduce every step (the host
 * cannot count them): within float32 rounding of an optimizer that reduces every micro-step,
 * the same bytes on every rank. */
static void run_local_graph_scenario(const scenario_t *sc) {
  scenario_t every = *sc;
  every.every_micro_step = 1;
  side_t eager, graphed;
  make_side(&eager, &sc->config, CUOPTIM_BACKEND_CUDA, sc->param_dtype, sc->grad_dtype, SIZES, device);
  make_side(&graphed, &sc->config, CUOPTIM_BACKEND_CUDA, sc->param_dtype, sc->grad_dtype, SIZES, device);
  set_communicator(&every, eager.opt);
  set_communicator(sc, graphed.opt);
  cudaStream_t stream;
  CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  unsigned char *staging = malloc(staging_bytes());
  if (!staging) fatal("malloc", "out of memory");
  cuoptimGradient_t list[NUM_VARS];
  side_t *both[2] = {&eager, &graphed};
  const int k = (int)sc->config.gradient_accumulation_steps;
  for (int step = 0; step < k + 1; step++) /* ends one micro-step into the second cycle */
    for (int i = 0; i < 2; i++) {
      upload_rank_gradients(sc, both[i], step, staging, stream);
      OK(cuoptimApplyGradients(both[i]->opt, gradient_list(sc, both[i], step, list), list, stream));
      CUDA(cudaStreamSynchronize(stream));
    }
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  if (world > 1) {
    CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    cuoptimStatus_t refused = cuoptimApplyGradients(graphed.opt, gradient_list(sc, &graphed, k + 1, list), list, stream);
    char message[512];
    snprintf(message, sizeof message, "%s", cuoptimGetLastErrorMessage());
    cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    EXPECT(refused == CUOPTIM_STATUS_INVALID_STATE && strstr(message, "accumulators"),
           "%s: a capture mid-cycle returned %s (%s), want INVALID_STATE", sc->label, cuoptimGetStatusString(refused),
           message);
    if (ended == cudaSuccess && graph) CUDA(cudaGraphDestroy(graph));
    graph = NULL;
    (void)cudaGetLastError();
  }
  /* To the end of the cycle, eagerly; then capture. */
  for (int step = k + 1; step < 2 * k; step++)
    for (int i = 0; i < 2; i++) {
      upload_rank_gradients(sc, both[i], step, staging, stream);
      OK(cuoptimApplyGradients(both[i]->opt, gradient_list(sc, both[i], step, list), list, stream));
      CUDA(cudaStreamSynchronize(stream));
    }
  exec = capture_step(sc, &graphed, 0, stream, &graph);
  const int replays = 2 * k + 1;
  for (int step = 2 * k; step < 2 * k + replays; step++) {
    upload_rank_gradients(sc, &eager, step, staging, stream);
    OK(cuoptimApplyGradients(eager.opt, gradient_list(sc, &eager, step, list), list, stream));
    CUDA(cudaStreamSynchronize(stream));
    upload_rank_gradients(sc, &graphed, step, staging, stream);
    CUDA(cudaGraphLaunch(exec, stream));
    CUDA(cudaStreamSynchronize(stream));
  }
  /* Eager steps after the replays: the host no longer knows the counter; still right. */
  for (int step = 2 * k + replays; step < 2 * k + replays + 2; step++)
    for (int i = 0; i < 2; i++) {
      upload_rank_gradients(sc, both[i], step, staging, stream);
      OK(cuoptimApplyGradients(both[i]->opt, gradient_list(sc, both[i], step, list), list, stream));
      CUDA(cudaStreamSynchronize(stream));
    }
  compare_with_reference(sc, &graphed, &eager);
  blob_t b = {0};
  observe(&graphed, sc->config.dynamic_loss_scale, &b);
  compare_across_ranks(sc->label, &b);
  free(b.bytes);
  CUDA(cudaGraphExecDestroy(exec));
  CUDA(cudaGraphDestroy(graph));
  free(staging);
  CUDA(cudaStreamDestroy(stream));
  free_side(&eager);
  free_side(&graphed);
}

/* Sharded state on the CUDA backend: each rank saves its shares to a file of its own after two
 * steps; a new optimizer given the parameters of then and the file ends two steps later with the
 * bytes of the straight run. */
static void run_sharded_checkpoint_scenario(const scenario_t *sc) {
  char dir[64] = "/tmp/cuoptim-nccl-sharded-XXXXXX", path[128];
  if (rank == 0 && !mkdtemp(dir)) fatal("mkdtemp", dir);
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  snprintf(path, sizeof path, "%s/rank%d.safetensors", dir, rank);
  side_t straight, resumed;
  make_side(&straight, &sc->config, CUOPTIM_BACKEND_CUDA, sc->param_dtype, sc->grad_dtype, SIZES, device);
  make_side(&resumed, &sc->config, CUOPTIM_BACKEND_CUDA, sc->param_dtype, sc->grad_dtype, SIZES, device);
  set_communicator(sc, straight.opt);
  set_communicator(sc, resumed.opt);
  unsigned char *staging = malloc(staging_bytes());
  if (!staging) fatal("malloc", "out of memory");
  cuoptimGradient_t list[NUM_VARS];
  for (int step = 0; step < 4; step++) {
    if (step == 2) {
      OK(cuoptimSave(straight.opt, path));
      for (int k = 0; k < NUM_VARS; k++)
        CUDA(cudaMemcpy(resumed.params[k], straight.params[k], SIZES[k] * dtype_bytes(sc->param_dtype),
                        cudaMemcpyDeviceToDevice));
      OK(cuoptimLoad(resumed.opt, path));
    }
    side_t *both[2] = {&straight, &resumed};
    for (int i = 0; i < (step < 2 ? 1 : 2); i++) {
      upload_rank_gradients(sc, both[i], step, staging, NULL);
      OK(cuoptimApplyGradients(both[i]->opt, gradient_list(sc, both[i], step, list), list, NULL));
      CUDA(cudaStreamSynchronize(NULL));
    }
  }
  blob_t a = {0}, b = {0};
  observe(&straight, sc->config.dynamic_loss_scale, &a);
  observe(&resumed, sc->config.dynamic_loss_scale, &b);
  size_t differing = 0;
  for (size_t i = 0; i < a.size && i < b.size; i++) differing += a.bytes[i] != b.bytes[i];
  EXPECT(a.size == b.size && differing == 0, "%s: the resumed run differs from the straight one in %zu of %zu bytes",
         sc->label, differing, a.size);
  free(a.bytes);
  free(b.bytes);
  free(staging);
  free_side(&straight);
  free_side(&resumed);
  unlink(path);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) rmdir(dir);
}

/* The last rank registers a variable of another size, or passes other options: every rank's
 * first step fails with INVALID_VALUE naming it, and leaves the parameters as they were. */
static void run_mismatch_scenario(int variable_mismatch) {
  const char *label = variable_mismatch ? "a variable of another size on the last rank"
                                        : "other options->bucket_bytes on the last rank";
  cuoptimConfig_t config;
  OK(cuoptimConfigInit(&config, CUOPTIM_SGD));
  size_t sizes[NUM_VARS];
  memcpy(sizes, SIZES, sizeof sizes);
  if (variable_mismatch && rank == world - 1) sizes[1] += 1;
  side_t s;
  make_side(&s, &config, CUOPTIM_BACKEND_CUDA, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, sizes, device);
  cuoptimCommOptions_t options;
  OK(cuoptimCommOptionsInit(&options));
  if (!variable_mismatch && rank == world - 1) options.bucket_bytes = 4096;
  OK(cuoptimSetCommunicator(s.opt, &comm, &options));
  for (int k = 0; k < NUM_VARS; k++) CUDA(cudaMemset(s.grads[k], 0x3c, sizes[k] * 4)); /* 0.0115 */
  cuoptimGradient_t list[NUM_VARS];
  for (int k = 0; k < NUM_VARS; k++) list[k] = (cuoptimGradient_t){k, s.grads[k], CUOPTIM_FLOAT32};
  cuoptimStatus_t status = cuoptimApplyGradients(s.opt, NUM_VARS, list, NULL);
  const char *message = cuoptimGetLastErrorMessage();
  const char *want = variable_mismatch ? "variable 1" : "options->bucket_bytes";
  EXPECT(status == CUOPTIM_STATUS_INVALID_VALUE && strstr(message, want),
         "%s: the first step returned %s (%s), want INVALID_VALUE naming %s", label, cuoptimGetStatusString(status),
         message, want);
  size_t changed = 0;
  for (int k = 0; k < NUM_VARS; k++) {
    float *p = malloc(sizes[k] * 4);
    if (!p) fatal("malloc", "out of memory");
    CUDA(cudaMemcpy(p, s.params[k], sizes[k] * 4, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < sizes[k]; i++) changed += p[i] != param_value(k, i);
    free(p);
  }
  int64_t iterations = -1;
  OK(cuoptimGetIterations(s.opt, &iterations));
  EXPECT(changed == 0 && iterations == 0, "%s: the refused step changed %zu parameters, iterations %lld", label,
         changed, (long long)iterations);
  free_side(&s);
}

static cuoptimConfig_t config_of(cuoptimOptimizerKind_t kind, double learning_rate) {
  cuoptimConfig_t c;
  OK(cuoptimConfigInit(&c, kind));
  c.learning_rate.initial_learning_rate = learning_rate;
  return c;
}

static scenario_t base(const char *label, cuoptimConfig_t config) {
  scenario_t sc;
  memset(&sc, 0, sizeof sc);
  sc.label = label;
  sc.config = config;
  sc.reduce = CUOPTIM_REDUCE_MEAN;
  sc.bucket_bytes = 256;
  sc.param_dtype = sc.grad_dtype = CUOPTIM_FLOAT32;
  sc.steps = 4;
  sc.null_step = sc.inf_step = -1;
  sc.gradient_reductions = sc.accumulator_reductions = -1;
  return sc;
}

static void run_all(void) {
  cuoptimConfig_t sgd = config_of(CUOPTIM_SGD, 0.05);
  sgd.momentum = 0.9;

  scenario_t sc = base("SGD momentum, float32, sum, exact", sgd);
  sc.reduce = CUOPTIM_REDUCE_SUM;
  sc.exact = sc.bitwise = 1;
  run_scenario(&sc);

  sc = base("SGD momentum, float32, mean, exact, a NULL gradient in step 1", sgd);
  sc.exact = sc.bitwise = 1;
  sc.null_step = 1;
  run_scenario(&sc);

  sc = base("SGD momentum, bfloat16, mean, exact, gradient accumulation 2, every micro-step reduced", sgd);
  sc.config.gradient_accumulation_steps = 2;
  sc.param_dtype = sc.grad_dtype = CUOPTIM_BFLOAT16;
  sc.exact = sc.bitwise = 1;
  sc.every_micro_step = 1;
  run_scenario(&sc);

  /* Local accumulators: each rank accumulates its own gradients, the step that applies reduces
   * the accumulators and its gradients (within float32 rounding of the reference). */
  /* (float32 gradients: the reference sums them in float32 as the accumulators do; bfloat16 ones
   * it would sum in bfloat16 every step, which local accumulators do only in the applied step.) */
  sc = base("local accumulation: SGD momentum, bfloat16 parameters, float32 gradients, accumulation 2", sgd);
  sc.config.gradient_accumulation_steps = 2;
  sc.param_dtype = CUOPTIM_BFLOAT16;
  sc.steps = 6;
  sc.gradient_reductions = sc.accumulator_reductions = 3;
  run_scenario(&sc);

  /* epsilon 1e-3: where the ranks' gradients cancel, the sums' rounding in another order leaves a
   * residue of ~1e-9 that Adam with epsilon 1e-7 would turn into a step of lr / 100. */
  cuoptimConfig_t adam_accumulating = config_of(CUOPTIM_ADAM, 0.01);
  adam_accumulating.epsilon = 1e-3;
  adam_accumulating.global_clipnorm = 1.0;
  adam_accumulating.gradient_accumulation_steps = 3;
  sc = base("local accumulation: Adam, float32, global_clipnorm, accumulation 3, one bucket per variable", adam_accumulating);
  sc.bucket_bytes = 1;
  sc.steps = 8; /* ends mid-cycle: the state read sums the ranks' accumulators */
  sc.gradient_reductions = sc.accumulator_reductions = 2;
  run_scenario(&sc);

  /* A variable without a gradient in the applied step 2: its accumulator keeps the ranks' sum, so
   * the micro-steps 3 and 4 reduce their gradients. */
  sc = base("local accumulation: Adam, float32, accumulation 3, a NULL gradient in the applied step", adam_accumulating);
  sc.steps = 7;
  sc.null_step = 2;
  sc.gradient_reductions = 4;
  sc.accumulator_reductions = 1;
  run_scenario(&sc);

  sc = base("SGD momentum, float32, mean, exact, non-blocking communicator", sgd);
  sc.exact = sc.bitwise = 1;
  sc.comm = &nonblocking_comm;
  run_scenario(&sc);

  sc = base("SGD momentum, float32, mean, exact, communicator from RANK / WORLD_SIZE / LOCAL_RANK", sgd);
  sc.exact = sc.bitwise = 1;
  sc.comm = &env_comm;
  run_scenario(&sc);

  cuoptimConfig_t adam = config_of(CUOPTIM_ADAM, 0.01);
  adam.global_clipnorm = 1.0;
  sc = base("Adam, float32, mean, global_clipnorm, one bucket per variable", adam);
  sc.bucket_bytes = 1;
  sc.null_step = 2;
  run_scenario(&sc);

  cuoptimConfig_t lamb = config_of(CUOPTIM_LAMB, 0.01);
  lamb.weight_decay = 0.01;
  sc = base("Lamb, float32, mean, weight decay, 4 KiB buckets", lamb);
  sc.bucket_bytes = 4096;
  run_scenario(&sc);

  cuoptimConfig_t adamw = config_of(CUOPTIM_ADAMW, 0.01);
  adamw.dynamic_loss_scale = 1;
  adamw.initial_scale = 1024.0;
  adamw.dynamic_growth_steps = 2;
  sc = base("AdamW, float16, dynamic loss scale, an inf on the last rank in step 2, exact", adamw);
  sc.param_dtype = sc.grad_dtype = CUOPTIM_FLOAT16;
  sc.exact = 1;
  sc.steps = 5;
  sc.inf_step = 2;
  run_scenario(&sc);

  sc = base("Adam, float32, mean, global_clipnorm: CUDA graph replays", adam);
  run_graph_scenario(&sc, 5);

  /* Sharded state: each rank updates its share and the parameters are gathered; elementwise steps
   * are those of the unsharded run, bit for bit; norms combine the shards' partial sums. */
  sc = base("sharded: SGD momentum, float32, mean, exact, a NULL gradient in step 1", sgd);
  sc.exact = sc.bitwise = 1;
  sc.null_step = 1;
  sc.shard = 1;
  run_scenario(&sc);

  sc = base("sharded: SGD momentum, bfloat16, mean, exact, gradient accumulation 2", sgd);
  sc.config.gradient_accumulation_steps = 2;
  sc.param_dtype = sc.grad_dtype = CUOPTIM_BFLOAT16;
  sc.exact = sc.bitwise = 1;
  sc.shard = 1;
  run_scenario(&sc);

  cuoptimConfig_t adam_ema = adam;
  adam_ema.use_ema = 1;
  sc = base("sharded: Adam, float32, mean, global_clipnorm, EMA, one bucket per variable", adam_ema);
  sc.bucket_bytes = 1;
  sc.null_step = 2;
  sc.shard = 1;
  run_scenario(&sc);

  sc = base("sharded: AdamW, float16, dynamic loss scale, an inf on the last rank in step 2, exact", adamw);
  sc.param_dtype = sc.grad_dtype = CUOPTIM_FLOAT16;
  sc.exact = 1;
  sc.steps = 5;
  sc.inf_step = 2;
  sc.shard = 1;
  run_scenario(&sc);

  sc = base("sharded: Adam, float32, mean, global_clipnorm: CUDA graph replays", adam);
  sc.shard = 1;
  run_graph_scenario(&sc, 5);

  cuoptimConfig_t adam_half = adam_ema;
  sc = base("sharded: checkpoint and resume, Adam, bfloat16 parameters, EMA", adam_half);
  sc.param_dtype = CUOPTIM_BFLOAT16;
  sc.shard = 1;
  run_sharded_checkpoint_scenario(&sc);

  sc = base("sharded: Lamb, float32, mean, weight decay, 4 KiB buckets", lamb);
  sc.bucket_bytes = 4096;
  sc.shard = 1;
  run_scenario(&sc);

  sc = base("arena, local accumulation: Adam, float32, global_clipnorm, accumulation 3", adam_accumulating);
  sc.steps = 7;
  sc.gradient_reductions = sc.accumulator_reductions = 2;
  run_arena_scenario(&sc);

  sc = base("local accumulation: Adam, float32, global_clipnorm, accumulation 3: CUDA graph", adam_accumulating);
  run_local_graph_scenario(&sc);

  /* The gradient arena, buckets started by the marks. */
  sc = base("arena: Adam, float32, mean, global_clipnorm, 256-byte buckets", adam);
  sc.null_step = 2;
  run_arena_scenario(&sc);

  sc = base("arena, sharded: AdamW, float16, dynamic loss scale, an inf on the last rank in step 2", adamw);
  sc.param_dtype = sc.grad_dtype = CUOPTIM_FLOAT16;
  sc.steps = 5;
  sc.inf_step = 2;
  sc.shard = 1;
  run_arena_scenario(&sc);

  /* A MultiOptimizer: Adam for the kernel, SGD with momentum for the rest; exact gradients, so
   * the gradient buffers hold known sums and SGD's variables match the reference bit for bit. */
  cuoptimConfig_t parts[2] = {config_of(CUOPTIM_ADAM, 0.01), sgd};
  sc = base("MultiOptimizer (Adam, SGD momentum), float32, mean, exact, a NULL gradient in step 1", parts[1]);
  sc.exact = 1;
  sc.null_step = 1;
  run_multi_scenario(&sc, parts);
  sc.label = "sharded: MultiOptimizer (Adam, SGD momentum), float32, mean, exact, a NULL gradient in step 1";
  sc.shard = 1;
  run_multi_scenario(&sc, parts);

  if (world > 1) {
    run_mismatch_scenario(1);
    run_mismatch_scenario(0);
  }
}

/* A communicator whose calls may answer ncclInProgress, ready once ncclCommGetAsyncError says so. */
static void make_nonblocking_comm(void) {
  ncclUniqueId id;
  if (rank == 0 && ncclGetUniqueId(&id) != ncclSuccess) fatal("ncclGetUniqueId", ncclGetLastError(NULL));
  MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t result = ncclCommInitRankConfig(&nonblocking_comm, world, id, rank, &config);
  while (result == ncclInProgress)
    if (ncclCommGetAsyncError(nonblocking_comm, &result) != ncclSuccess) fatal("ncclCommGetAsyncError", "");
  if (result != ncclSuccess) fatal("ncclCommInitRankConfig", ncclGetErrorString(result));
}

/* nccl_bootstrap_from_env as a launcher would start it: the variables set from the MPI rank, the
 * id through a file that must not exist before and is gone after. */
static void make_env_comm(int devices) {
  char path[256];
  if (rank == 0) snprintf(path, sizeof path, "/tmp/cuoptim-nccl-id-%ld", (long)getpid());
  MPI_Bcast(path, (int)sizeof path, MPI_CHAR, 0, MPI_COMM_WORLD);
  char value[32];
  snprintf(value, sizeof value, "%d", rank);
  setenv("RANK", value, 1);
  snprintf(value, sizeof value, "%d", world);
  setenv("WORLD_SIZE", value, 1);
  snprintf(value, sizeof value, "%d", devices >= world ? rank : 0); /* the GPU of this rank */
  setenv("LOCAL_RANK", value, 1);
  char err[512];
  nccl_bootstrap_info_t where = {0, 0, 0, 0};
  if (nccl_bootstrap_from_env(&env_comm, path, 60.0, &where, err, sizeof err) != 0) fatal("nccl_bootstrap_from_env", err);
  EXPECT(where.rank == rank && where.world == world && where.device == device,
         "bootstrap from the environment: rank %d of %d on device %d, want %d of %d on %d", where.rank, where.world,
         where.device, rank, world, device);
  if (rank == 0) { /* rank 0's init returns once every rank joined: the id file is gone */
    EXPECT(access(path, F_OK) != 0, "bootstrap from the environment: %s is still there after every rank joined", path);
    /* A file left by an earlier run is refused, not read. */
    FILE *stale = fopen(path, "w");
    if (stale) fclose(stale);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    EXPECT(nccl_bootstrap_write_id(path, &id, err, sizeof err) != 0 && strstr(err, "exists"),
           "bootstrap from the environment: an existing id file was not refused (%s)", err);
    unlink(path);
  }
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  /* One GPU per rank where there are enough, else every rank on device 0 (the emulated device). */
  int devices = 0;
  CUDA(cudaGetDeviceCount(&devices));
  char err[512];
  nccl_bootstrap_info_t where = {0, 0, 0, 0};
  if (nccl_bootstrap_from_mpi(&comm, MPI_COMM_WORLD, devices >= world ? -1 : 0, &where, err, sizeof err) != 0)
    fatal("nccl_bootstrap_from_mpi", err);
  device = where.device;
  EXPECT(where.rank == rank && where.world == world, "bootstrap: rank %d of %d, want %d of %d", where.rank,
         where.world, rank, world);
  make_nonblocking_comm();
  make_env_comm(devices);

  run_all();

  ncclCommDestroy(env_comm);
  ncclCommDestroy(nonblocking_comm);
  ncclCommDestroy(comm);
  int total = 0;
  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) printf("nccl_ranks: %d ranks: %s (%d failed checks)\n", world, total ? "FAILED" : "passed", total);
  MPI_Finalize();
  return total ? 1 : 0;
}
