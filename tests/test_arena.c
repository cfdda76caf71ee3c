/*
 * test_arena.c — the gradient arena on one process (cuoptimEnableGradientArena,
 * cuoptimGetGradientBuffer, cuoptimMarkGradientReady), cuoptimGetStateBytes, and the calls of the
 * data-parallel path that need no other rank: bad input of cuoptimCommOptionsInit,
 * cuoptimSetCommunicator and cuoptimGetRank. Multi-rank behaviour is in the mpirun suites.
 * Runs on the host backend, and on the CUDA backend when a device is present (arena_cuda).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "testutil.h"

static cuoptimOptimizer_t adam(cuoptimBackend_t backend) {
  cuoptimConfig_t config;
  OK(cuoptimConfigInit(&config, CUOPTIM_ADAM));
  config.clipnorm = 0.5;
  cuoptimOptimizer_t opt;
  OK(cuoptimCreate(&opt, &config, backend, 0));
  return opt;
}

static const size_t counts[3] = {5, 300, 17};

static void fill_gradient(float *g, size_t count, int variable, int step) {
  for (size_t i = 0; i < count; i++) g[i] = (float)((int)(i % 11) - 5 + variable - step) * 0.125f;
}

/* Three steps of Adam with clipnorm, the gradients in the arena or in the caller's buffers: the
 * parameters must come out bit for bit the same. */
static void arena_equals_caller_buffers(cuoptimBackend_t backend) {
  test_require_backend(backend);
  float result[2][322];
  for (int use_arena = 0; use_arena < 2; use_arena++) {
    cuoptimOptimizer_t opt = adam(backend);
    float *param[3], *grad[3];
    cuoptimVariable_t var[3];
    for (int k = 0; k < 3; k++) {
      float init[300];
      for (size_t i = 0; i < counts[k]; i++) init[i] = 0.01f * (float)i - (float)k;
      param[k] = test_mem_from(backend, init, counts[k]);
      char name[16];
      snprintf(name, sizeof name, "layer%d", k);
      OK(cuoptimAddVariable(opt, name, param[k], CUOPTIM_FLOAT32, counts[k], &var[k]));
    }
    if (use_arena) {
      OK(cuoptimEnableGradientArena(opt));
      for (int k = 0; k < 3; k++) OK(cuoptimGetGradientBuffer(opt, var[k], (void **)&grad[k]));
    } else {
      for (int k = 0; k < 3; k++) grad[k] = test_mem_alloc(backend, counts[k] * sizeof(float));
    }
    for (int step = 0; step < 3; step++) {
      cuoptimGradient_t list[3];
      for (int k = 2; k >= 0; k--) { /* backward order */
        float g[300];
        fill_gradient(g, counts[k], k, step);
        test_mem_upload(backend, grad[k], g, counts[k] * sizeof(float));
        if (use_arena) OK(cuoptimMarkGradientReady(opt, var[k], NULL));
        list[k] = (cuoptimGradient_t){var[k], grad[k], CUOPTIM_FLOAT32};
      }
      OK(cuoptimApplyGradients(opt, 3, list, NULL));
    }
    OK(cuoptimSynchronize(opt));
    size_t at = 0;
    for (int k = 0; k < 3; k++) {
      test_mem_download(backend, result[use_arena] + at, param[k], counts[k] * sizeof(float));
      at += counts[k];
      test_mem_free(backend, param[k]);
      if (!use_arena) test_mem_free(backend, grad[k]);
    }
    OK(cuoptimDestroy(opt));
  }
  cr_assert_eq(memcmp(result[0], result[1], sizeof result[0]), 0, "the arena changed the result");
}

Test(arena, gradients_in_the_arena_give_the_same_step) { arena_equals_caller_buffers(CUOPTIM_BACKEND_HOST); }
Test(arena_cuda, gradients_in_the_arena_give_the_same_step) { arena_equals_caller_buffers(CUOPTIM_BACKEND_CUDA); }

Test(arena, buffers_are_zeroed_aligned_and_distinct) {
  cuoptimOptimizer_t opt = adam(CUOPTIM_BACKEND_HOST);
  float param[3][300] = {{0}};
  cuoptimVariable_t var[3];
  for (int k = 0; k < 3; k++) {
    char name[16];
    snprintf(name, sizeof name, "v%d", k);
    OK(cuoptimAddVariable(opt, name, param[k], CUOPTIM_FLOAT32, counts[k], &var[k]));
  }
  OK(cuoptimEnableGradientArena(opt));
  float *g[3];
  for (int k = 0; k < 3; k++) {
    OK(cuoptimGetGradientBuffer(opt, var[k], (void **)&g[k]));
    cr_assert_eq((uintptr_t)g[k] % 256, 0, "variable %d's gradient is not 256-byte aligned", k);
    for (size_t i = 0; i < counts[k]; i++) cr_assert_eq(g[k][i], 0.0f);
  }
  for (int a = 0; a < 3; a++)
    for (int b = a + 1; b < 3; b++)
      cr_assert(g[a] + counts[a] <= g[b] || g[b] + counts[b] <= g[a], "regions %d and %d overlap", a, b);
  OK(cuoptimDestroy(opt));
}

Test(arena, bad_input_is_refused_and_changes_nothing) {
  cuoptimOptimizer_t opt = adam(CUOPTIM_BACKEND_HOST);
  float param[4] = {1, 2, 3, 4}, other[4] = {0};
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "w", param, CUOPTIM_FLOAT32, 4, &v));
  void *g = NULL;
  cr_assert_eq(cuoptimEnableGradientArena(NULL), CUOPTIM_STATUS_NULL_POINTER);
  cr_assert_eq(cuoptimGetGradientBuffer(opt, v, &g), CUOPTIM_STATUS_INVALID_STATE, "no arena was asked for");
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "cuoptimEnableGradientArena"));
  cr_assert_eq(cuoptimMarkGradientReady(opt, v, NULL), CUOPTIM_STATUS_INVALID_STATE);
  OK(cuoptimEnableGradientArena(opt));
  cr_assert_eq(cuoptimGetGradientBuffer(NULL, v, &g), CUOPTIM_STATUS_NULL_POINTER);
  cr_assert_eq(cuoptimGetGradientBuffer(opt, v, NULL), CUOPTIM_STATUS_NULL_POINTER);
  cr_assert_eq(cuoptimGetGradientBuffer(opt, 1, &g), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert_eq(cuoptimGetGradientBuffer(opt, -1, &g), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert_eq(cuoptimMarkGradientReady(NULL, v, NULL), CUOPTIM_STATUS_NULL_POINTER);
  cr_assert_eq(cuoptimMarkGradientReady(opt, 7, NULL), CUOPTIM_STATUS_INVALID_VALUE);
  OK(cuoptimGetGradientBuffer(opt, v, &g));
  cr_assert_eq(cuoptimEnableGradientArena(opt), CUOPTIM_STATUS_INVALID_STATE, "after the build");
  OK(cuoptimMarkGradientReady(opt, v, NULL));
  cr_assert_eq(cuoptimMarkGradientReady(opt, v, NULL), CUOPTIM_STATUS_INVALID_VALUE, "marked twice");
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "already marked"), "%s", cuoptimGetLastErrorMessage());
  /* A gradient that is not the arena's is refused, and the step changes nothing. */
  cuoptimGradient_t wrong = {v, other, CUOPTIM_FLOAT32};
  cr_assert_eq(cuoptimApplyGradients(opt, 1, &wrong, NULL), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "gradient-arena"), "%s", cuoptimGetLastErrorMessage());
  cuoptimGradient_t half = {v, g, CUOPTIM_FLOAT16};
  cr_assert_eq(cuoptimApplyGradients(opt, 1, &half, NULL), CUOPTIM_STATUS_INVALID_VALUE, "the arena's dtype");
  int64_t iterations = -1;
  OK(cuoptimGetIterations(opt, &iterations));
  cr_assert_eq(iterations, 0);
  cr_assert_eq(param[0], 1.0f);
  /* The right pointer goes through; afterwards the variable may be marked again. */
  ((float *)g)[0] = 1.0f;
  cuoptimGradient_t right = {v, g, CUOPTIM_FLOAT32};
  OK(cuoptimApplyGradients(opt, 1, &right, NULL));
  OK(cuoptimGetIterations(opt, &iterations));
  cr_assert_eq(iterations, 1);
  OK(cuoptimMarkGradientReady(opt, v, NULL));
  OK(cuoptimDestroy(opt));
}

Test(arena, state_bytes_count_the_state_only) {
  cuoptimOptimizer_t opt = adam(CUOPTIM_BACKEND_HOST);
  float param[1000] = {0};
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "w", param, CUOPTIM_FLOAT32, 1000, &v));
  size_t bytes = 1;
  cr_assert_eq(cuoptimGetStateBytes(NULL, &bytes), CUOPTIM_STATUS_NULL_POINTER);
  cr_assert_eq(cuoptimGetStateBytes(opt, NULL), CUOPTIM_STATUS_NULL_POINTER);
  OK(cuoptimGetStateBytes(opt, &bytes));
  cr_assert_eq(bytes, 0, "nothing is built yet");
  OK(cuoptimEnableGradientArena(opt));
  int count;
  OK(cuoptimGetWeightCount(opt, &count)); /* builds */
  OK(cuoptimGetStateBytes(opt, &bytes));
  /* m and v of 1000 float32 (each region 256-byte aligned) and the per-variable scalars. */
  cr_assert(bytes >= 8000 && bytes < 8000 + 2 * 256 + 256, "bytes = %zu", bytes);
  OK(cuoptimDestroy(opt));
}

Test(comm, options_and_queries_refuse_bad_input) {
  cuoptimCommOptions_t options;
  cr_assert_eq(cuoptimCommOptionsInit(NULL), CUOPTIM_STATUS_NULL_POINTER);
  OK(cuoptimCommOptionsInit(&options));
  cr_assert_eq(options.aggregate, 1);
  cr_assert_eq(options.reduce, CUOPTIM_REDUCE_MEAN);
  cr_assert_eq(options.bucket_bytes, (size_t)25 << 20);
  cr_assert_eq(options.shard_state, 0);
  cr_assert_eq(options.timeout_seconds, 0.0);
  cuoptimOptimizer_t opt = adam(CUOPTIM_BACKEND_HOST);
  int rank = -1, world = -1;
  cr_assert_eq(cuoptimGetRank(NULL, &rank, &world), CUOPTIM_STATUS_NULL_POINTER);
  cr_assert_eq(cuoptimGetRank(opt, NULL, &world), CUOPTIM_STATUS_NULL_POINTER);
  cr_assert_eq(cuoptimGetRank(opt, &rank, NULL), CUOPTIM_STATUS_NULL_POINTER);
  OK(cuoptimGetRank(opt, &rank, &world));
  cr_assert_eq(rank, 0);
  cr_assert_eq(world, 1);
  int handle = 0; /* never read: every call below is refused before the handle is used */
  cr_assert_eq(cuoptimSetCommunicator(NULL, &handle, &options), CUOPTIM_STATUS_NULL_POINTER);
  cr_assert_eq(cuoptimSetCommunicator(opt, &handle, NULL), CUOPTIM_STATUS_NULL_POINTER);
  cuoptimCommOptions_t bad = options;
  bad.aggregate = 2;
  cr_assert_eq(cuoptimSetCommunicator(opt, &handle, &bad), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "options->aggregate"), "%s", cuoptimGetLastErrorMessage());
  bad = options;
  bad.reduce = (cuoptimReduceOp_t)7;
  cr_assert_eq(cuoptimSetCommunicator(opt, &handle, &bad), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "options->reduce"), "%s", cuoptimGetLastErrorMessage());
  bad = options;
  bad.bucket_bytes = 0;
  cr_assert_eq(cuoptimSetCommunicator(opt, &handle, &bad), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "options->bucket_bytes"), "%s", cuoptimGetLastErrorMessage());
  bad = options;
  bad.shard_state = -1;
  cr_assert_eq(cuoptimSetCommunicator(opt, &handle, &bad), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "options->shard_state"), "%s", cuoptimGetLastErrorMessage());
  const double timeouts[] = {-1.0, NAN, INFINITY};
  for (size_t i = 0; i < sizeof timeouts / sizeof timeouts[0]; i++) {
    bad = options;
    bad.timeout_seconds = timeouts[i];
    cr_assert_eq(cuoptimSetCommunicator(opt, &handle, &bad), CUOPTIM_STATUS_INVALID_VALUE, "timeout %g", timeouts[i]);
    cr_assert(strstr(cuoptimGetLastErrorMessage(), "options->timeout_seconds"), "%s", cuoptimGetLastErrorMessage());
  }
  /* Detaching when nothing is attached is fine; after the build nothing may change. */
  OK(cuoptimSetCommunicator(opt, NULL, NULL));
  float param[2] = {0};
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "w", param, CUOPTIM_FLOAT32, 2, &v));
  int count;
  OK(cuoptimGetWeightCount(opt, &count));
  cr_assert_eq(cuoptimSetCommunicator(opt, &handle, &options), CUOPTIM_STATUS_INVALID_STATE);
  cr_assert_eq(cuoptimSetCommunicator(opt, NULL, NULL), CUOPTIM_STATUS_INVALID_STATE);
  OK(cuoptimGetRank(opt, &rank, &world));
  cr_assert_eq(world, 1);
  OK(cuoptimDestroy(opt));
}
