#include "testutil.h"

#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <criterion/options.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef CUOPTIM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

int test_device_count(void) {
#ifdef CUOPTIM_HAVE_CUDA
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
#else
  return 0; /* a host-only build (CUOPTIM_WITH_CUDA=OFF): no CUDA backend to run */
#endif
}

int test_has_gpu(void) { return test_device_count() > 0; }

const char *test_backend_name(cuoptimBackend_t backend) { return backend == CUOPTIM_BACKEND_CUDA ? "CUDA" : "host"; }

void test_require_backend(cuoptimBackend_t backend) {
  if (backend == CUOPTIM_BACKEND_CUDA && !test_has_gpu()) cr_skip_test("no CUDA device: CUDA variant skipped");
}

/* ---- a suite whose every test skipped reports itself skipped ----------------------------------- */

/* ctest's SKIP_RETURN_CODE (CMakeLists.txt): the GPU suites on a machine without a GPU show as
 * skipped, not as passed. */
#define TEST_SKIP_EXIT_CODE 77

static size_t tests_run, tests_skipped;

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
  tests_run = stats->nb_tests;
  tests_skipped = stats->tests_skipped;
}

int main(int argc, char *argv[]) {
  struct criterion_test_set *tests = criterion_initialize();
  int result = 0;
  if (criterion_handle_args(argc, argv, true)) result = !criterion_run_all_tests(tests);
  criterion_finalize(tests);
  if (result == 0 && tests_run > 0 && tests_skipped == tests_run) return TEST_SKIP_EXIT_CODE;
  return result;
}

/* ---- backend memory ---------------------------------------------------------------------------- */

#ifdef CUOPTIM_HAVE_CUDA
static void *device_alloc(size_t bytes) {
  void *p = NULL;
  cudaError_t err = cudaMalloc(&p, bytes);
  cr_assert_eq(err, cudaSuccess, "cudaMalloc(%zu): %s", bytes, cudaGetErrorString(err));
  return p;
}

static void device_copy(void *dst, const void *src, size_t bytes, int to_device) {
  cudaError_t err = cudaMemcpy(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
  cr_assert_eq(err, cudaSuccess, "cudaMemcpy to %s: %s", to_device ? "device" : "host", cudaGetErrorString(err));
}

static void device_free(void *p) { cudaFree(p); }
#else
/* A host-only build has no device memory: a CUDA variant skips (test_require_backend) before it
 * asks for any, so reaching these is a bug of the test. */
static void *device_alloc(size_t bytes) {
  cr_assert_fail("device memory (%zu bytes) asked of a build without CUDA", bytes);
  return NULL;
}

static void device_copy(void *dst, const void *src, size_t bytes, int to_device) {
  cr_assert_fail("a copy to %s (%zu bytes, %p <- %p) asked of a build without CUDA", to_device ? "device" : "host",
                 bytes, dst, src);
}

static void device_free(void *p) { cr_assert_fail("device memory (%p) freed in a build without CUDA", p); }
#endif

void *test_mem_alloc(cuoptimBackend_t backend, size_t bytes) {
  if (backend == CUOPTIM_BACKEND_CUDA) return device_alloc(bytes);
  void *p = calloc(1, bytes ? bytes : 1);
  cr_assert_not_null(p);
  return p;
}

static void mem_copy(cuoptimBackend_t backend, void *dst, const void *src, size_t bytes, int to_device) {
  if (backend == CUOPTIM_BACKEND_CUDA)
    device_copy(dst, src, bytes, to_device);
  else
    memcpy(dst, src, bytes);
}

void test_mem_upload(cuoptimBackend_t backend, void *dst, const void *src, size_t bytes) {
  mem_copy(backend, dst, src, bytes, 1);
}

void test_mem_download(cuoptimBackend_t backend, void *dst, const void *src, size_t bytes) {
  mem_copy(backend, dst, src, bytes, 0);
}

void test_mem_free(cuoptimBackend_t backend, void *p) {
  if (!p) return;
  if (backend == CUOPTIM_BACKEND_CUDA)
    device_free(p);
  else
    free(p);
}

float *test_mem_from(cuoptimBackend_t backend, const float *values, size_t count) {
  float *p = test_mem_alloc(backend, count * sizeof(float));
  test_mem_upload(backend, p, values, count * sizeof(float));
  return p;
}

/* ---- rig: an optimizer with its variables and gradient buffers ------------------------------- */

void test_rig_init(test_rig_t *r, const cuoptimConfig_t *config, cuoptimBackend_t backend) {
  memset(r, 0, sizeof *r);
  r->backend = backend;
  OK(cuoptimCreate(&r->opt, config, backend, 0));
}

int test_rig_add_external(test_rig_t *r, const char *name, float *param, size_t count) {
  cr_assert_lt(r->num_vars, TEST_RIG_MAX_VARS);
  int k = r->num_vars;
  cuoptimVariable_t index = -1;
  OK(cuoptimAddVariable(r->opt, name, param, CUOPTIM_FLOAT32, count, &index));
  cr_assert_eq(index, k, "cuoptimAddVariable gave index %d for the variable number %d", (int)index, k);
  r->count[k] = count;
  r->param[k] = param;
  r->grad[k] = test_mem_alloc(r->backend, count * sizeof(float));
  r->num_vars++;
  return k;
}

int test_rig_add(test_rig_t *r, const char *name, const float *init, size_t count) {
  float *param = test_mem_from(r->backend, init, count);
  int k = test_rig_add_external(r, name, param, count);
  r->owns_param[k] = 1;
  return k;
}

void test_rig_destroy(test_rig_t *r) {
  OK(cuoptimDestroy(r->opt));
  for (int k = 0; k < r->num_vars; k++) {
    if (r->owns_param[k]) test_mem_free(r->backend, r->param[k]);
    test_mem_free(r->backend, r->grad[k]);
  }
  memset(r, 0, sizeof *r);
}

static cuoptimStatus_t rig_apply(test_rig_t *r, const float *const *grads, int list_missing) {
  cuoptimGradient_t list[TEST_RIG_MAX_VARS];
  int n = 0;
  for (int k = 0; k < r->num_vars; k++) {
    if (!grads[k] && !list_missing) continue;
    list[n] = (cuoptimGradient_t){.variable = k, .grad = NULL, .dtype = CUOPTIM_FLOAT32};
    if (grads[k]) {
      test_mem_upload(r->backend, r->grad[k], grads[k], r->count[k] * sizeof(float));
      list[n].grad = r->grad[k];
    }
    n++;
  }
  return cuoptimApplyGradients(r->opt, n, list, NULL);
}

cuoptimStatus_t test_rig_try_apply(test_rig_t *r, const float *const *grads) { return rig_apply(r, grads, 0); }

cuoptimStatus_t test_rig_try_apply_all(test_rig_t *r, const float *const *grads) { return rig_apply(r, grads, 1); }

void test_rig_get(test_rig_t *r, int k, float *out) {
  OK(cuoptimSynchronize(r->opt));
  test_mem_download(r->backend, out, r->param[k], r->count[k] * sizeof(float));
}

/* ---- optimizer queries ------------------------------------------------------------------------- */

cuoptimConfig_t test_config(cuoptimOptimizerKind_t kind) {
  cuoptimConfig_t c;
  OK(cuoptimConfigInit(&c, kind));
  return c;
}

cuoptimConfig_t test_config_lr(cuoptimOptimizerKind_t kind, double learning_rate) {
  cuoptimConfig_t c = test_config(kind);
  c.learning_rate.initial_learning_rate = learning_rate;
  return c;
}

int64_t test_iterations(cuoptimOptimizer_t opt) {
  int64_t it = -1;
  OK(cuoptimGetIterations(opt, &it));
  return it;
}

int test_weight_index(cuoptimOptimizer_t opt, const char *name) {
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(opt, i, &info));
    if (strcmp(info.name, name) == 0) return i;
  }
  return -1;
}

long test_first_mismatch(const float *got, const float *want, size_t n, double rtol, double atol) {
  for (size_t i = 0; i < n; i++) {
    double g = got[i], w = want[i];
    if (isnan(w) && isnan(g)) continue;
    if (!(fabs(g - w) <= atol + rtol * fabs(w))) return (long)i;
  }
  return -1;
}

/* ---- data: deterministic pseudo-random values, float16/bfloat16 ------------------------------- */

uint64_t test_mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

float test_pseudo_random(uint64_t seed, uint64_t stream, uint64_t i) {
  static const float scales[5] = {1e-3f, 3e-2f, 0.25f, 1.0f, 4.0f};
  uint64_t h = test_mix64(seed ^ test_mix64(stream ^ test_mix64(i)));
  float mantissa = 0.5f + (float)(h >> 40) / 16777216.0f; /* [0.5, 1.5) */
  float value = mantissa * scales[(h >> 8) % 5];
  return (h & 1) ? -value : value;
}

uint32_t test_float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

float test_bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

uint16_t test_to_half(float f) {
  uint32_t u = test_float_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
  if (a < 0x38800000u) /* subnormal: a multiple of 2^-24, rounded to nearest even */
    return (uint16_t)(sign | (uint16_t)nearbyintf(test_bits_float(a) * 16777216.0f));
  a += 0xfffu + ((a >> 13) & 1u);
  return (uint16_t)(sign | ((a - 0x38000000u) >> 13));
}

float test_from_half(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return test_bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    float v = (float)mantissa / 16777216.0f;
    return sign ? -v : v;
  }
  return test_bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

uint16_t test_to_bfloat16(float f) {
  uint32_t u = test_float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float test_from_bfloat16(uint16_t h) { return test_bits_float((uint32_t)h << 16); }

size_t test_dtype_bytes(cuoptimDtype_t dtype) { return dtype == CUOPTIM_FLOAT32 ? 4 : 2; }

void test_store_element(void *base, cuoptimDtype_t dtype, size_t i, float value) {
  if (dtype == CUOPTIM_FLOAT32) {
    memcpy((char *)base + i * 4, &value, 4);
  } else {
    uint16_t h = dtype == CUOPTIM_FLOAT16 ? test_to_half(value) : test_to_bfloat16(value);
    memcpy((char *)base + i * 2, &h, 2);
  }
}

/* ---- paths ------------------------------------------------------------------------------------- */

/* The environment variable wins over the path compiled in, so a build carried to another
 * machine (scripts/gpu-check.sh) finds the data in that machine's checkout. */
static const char *env_or(const char *name, const char *fallback) {
  const char *value = getenv(name);
  return value && *value ? value : fallback;
}

const char *test_data_path(const char *relative) {
  static char path[4096];
  snprintf(path, sizeof path, "%s/%s", env_or("CUOPTIM_TEST_DATA", CUOPTIM_TEST_DATA), relative);
  return path;
}

const char *test_replay_path(void) { return env_or("CUOPTIM_REPLAY", CUOPTIM_REPLAY_PATH); }
