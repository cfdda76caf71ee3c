/*
 * faults.c — run under `mpirun -np R` by tests/test_ranks.c: one data-parallel fault per run,
 * committed by the last rank, and what every rank's cuoptim calls return. Each rank prints
 *   rank <r>: <call>: <STATUS>: <message>
 * for each call of interest (and "rank <r>: done" when it finishes); the test reads the lines.
 *
 * Scenarios (argv[1]):
 *   name_differs, count_differs, dtype_differs   the last rank's variable 1 differs
 *   shape_differs                                the last rank's variable 0 is a 3 x 4 matrix
 *   variable_missing                             the last rank does not register variable 1
 *   extra_variable                               the last rank registers a fourth variable
 *   bucket_differs, reduce_differs, aggregate_differs, accumulate_locally_differs
 *                                                the last rank's options differ
 *   config_differs                               the last rank's momentum differs
 *   sharded_checkpoint                           not a fault: sharded state, each rank saves its
 *                                                shares to a file of its own; a resumed run ends
 *                                                bit for bit where the straight one does; another
 *                                                rank's file, and a sharded file into unsharded
 *                                                state, are refused
 *   gradients_differ                             in step 2 the last rank has no gradient for
 *                                                variable 0; step 3 is whole again
 *   gradient_dtype_differs                       in step 2 the last rank's gradient 0 is bfloat16
 *   timeout_first_step, timeout_later_step       the last rank never makes (its first, its second)
 *                                                step: the others time out, then abort
 *   state_fails                                  the last rank's state cannot be built (a variable of
 *                                                2^40 elements): its first step fails with
 *                                                ALLOC_FAILED, the others' with INVALID_STATE
 *                                                naming it, none waits
 *   bad_first_gradient                           the last rank's first step lists an unknown
 *                                                variable: INVALID_VALUE there, INVALID_STATE on
 *                                                the others; the next step works everywhere
 *   timeout_attach                               the last rank never calls cuoptimSetCommunicator:
 *                                                the others' call (MPI_Comm_idup) times out
 *   world_of_one_is_plain                        (-np 1) a world of one is bit for bit no world
 *   sums                                         not a fault: for bucket sizes of 1 byte, 64 bytes
 *                                                and the default, CUOPTIM_REDUCE_SUM and _MEAN,
 *                                                and aggregate 0, with float32, float16 and
 *                                                bfloat16 gradients, a variable smaller than the
 *                                                world and one without a gradient in a step: the
 *                                                gradient buffers hold the exact sums, and the
 *                                                parameters are those of one process given the
 *                                                sums (or their float32 mean), on every rank
 *   huge_gradient                                a gradient of 2^31 elements (more than MPI counts)
 *                                                after a small one, in the same bucket and in the
 *                                                bucket before: the step fails with NOT_SUPPORTED
 *                                                on every rank having summed nothing, and the next
 *                                                step works
 *   local_accumulation                           not a fault: gradient accumulation 3 with local
 *                                                accumulators against every micro-step reduced:
 *                                                the gradients are reduced once per applied step,
 *                                                the accumulators once per cycle, the results agree
 *                                                within float32 rounding and across the ranks bit
 *                                                for bit, reading an accumulator mid-cycle gives
 *                                                the ranks' sum, cuoptimSave waits for the cycle's
 *                                                end, and a written accumulator holds
 *   multi                                        not a fault: a MultiOptimizer (Adam for
 *                                                "dense/kernel", SGD with momentum for the rest)
 *                                                attached to the world, unsharded and sharded,
 *                                                steps bit for bit as its two optimizers attached
 *                                                on their own, every rank alike; with a Muon
 *                                                sub-optimizer shard_state is refused, naming it,
 *                                                and nothing is attached; saved after step 2 (a
 *                                                file per rank) and loaded into a fresh one, it
 *                                                resumes bit for bit, unsharded and sharded
 * Options: --timeout S (default 0: wait forever).
 */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuoptim.h"

#define NUM_VARS 3
static const char *const names[NUM_VARS] = {"dense/kernel", "dense/bias", "embedding"};
static const size_t counts[NUM_VARS] = {12, 3, 10};
#define MAX_COUNT 16

static int rank, world, last;
static const char *scenario;
static double timeout_seconds;

static const char *status_name(cuoptimStatus_t status) {
  switch (status) {
#define CUOPTIM_STATUS_NAME_(name, value, text) \
  case name:                                     \
    return #name;
    CUOPTIM_STATUS_LIST(CUOPTIM_STATUS_NAME_)
#undef CUOPTIM_STATUS_NAME_
  }
  return "(not a status)";
}

static int is(const char *name) { return strcmp(scenario, name) == 0; }

/* Prints what a call returned on this rank. */
static cuoptimStatus_t show(const char *call, cuoptimStatus_t status) {
  printf("rank %d: %s: %s: %s\n", rank, call, status_name(status),
         status == CUOPTIM_STATUS_SUCCESS ? "" : cuoptimGetLastErrorMessage());
  fflush(stdout);
  return status;
}

static void must(const char *call, cuoptimStatus_t status) {
  if (status != CUOPTIM_STATUS_SUCCESS) {
    show(call, status);
    MPI_Abort(MPI_COMM_WORLD, 4);
  }
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct {
  cuoptimOptimizer_t opt;
  float params[NUM_VARS + 1][MAX_COUNT];
  float grads[NUM_VARS + 1][MAX_COUNT];
  uint16_t half_grad[MAX_COUNT];
  int num_vars; /* registered on this rank */
  int index[NUM_VARS + 1]; /* handle of each variable here, -1 when not registered */
} rig_t;

/* The optimizer of this rank, with the scenario's difference on the last rank. */
static void setup(rig_t *g, int attach) {
  memset(g, 0, sizeof *g);
  cuoptimConfig_t config;
  must("cuoptimConfigInit", cuoptimConfigInit(&config, CUOPTIM_SGD));
  config.momentum = 0.5;
  if (rank == last && world > 1 && is("config_differs")) config.momentum = 0.25;
  must("cuoptimCreate", cuoptimCreate(&g->opt, &config, CUOPTIM_BACKEND_HOST, 0));
  int odd = rank == last && world > 1;
  for (int v = 0; v <= NUM_VARS; v++) {
    g->index[v] = -1;
    for (int i = 0; i < MAX_COUNT; i++) g->params[v][i] = 0.25f * (float)(i + 1) - (float)v;
  }
  for (int v = 0; v < NUM_VARS + (odd && is("extra_variable")); v++) {
    if (odd && is("variable_missing") && v == 1) continue;
    const char *name = v < NUM_VARS ? names[v] : "extra";
    size_t count = v < NUM_VARS ? counts[v] : 5;
    cuoptimDtype_t dtype = CUOPTIM_FLOAT32;
    if (odd && v == 1 && is("name_differs")) name = "dense/bias_other";
    if (odd && v == 1 && is("count_differs")) count = 4;
    if (odd && v == 1 && is("state_fails")) count = (size_t)1 << 40; /* 8 TiB of state: not allocated */
    if (odd && v == 1 && is("dtype_differs")) dtype = CUOPTIM_BFLOAT16;
    cuoptimVariable_t handle;
    if (odd && v == 0 && is("shape_differs")) { /* the same 12 elements as a 3 x 4 matrix */
      const int64_t matrix[2] = {3, 4};
      must("cuoptimAddVariableWithShape", cuoptimAddVariableWithShape(g->opt, name, g->params[v], dtype, 2, matrix, &handle));
    } else {
      must("cuoptimAddVariable", cuoptimAddVariable(g->opt, name, g->params[v], dtype, count, &handle));
    }
    g->index[v] = (int)handle;
    g->num_vars++;
  }
  if (!attach) return;
  cuoptimCommOptions_t options;
  must("cuoptimCommOptionsInit", cuoptimCommOptionsInit(&options));
  options.timeout_seconds = timeout_seconds;
  if (odd && is("bucket_differs")) options.bucket_bytes = 64;
  if (odd && is("reduce_differs")) options.reduce = CUOPTIM_REDUCE_SUM;
  if (odd && is("aggregate_differs")) options.aggregate = 0;
  if (odd && is("accumulate_locally_differs")) options.accumulate_locally = 0;
  if (is("sharded_checkpoint")) options.shard_state = 1;
  MPI_Comm comm = MPI_COMM_WORLD;
  must("cuoptimSetCommunicator", cuoptimSetCommunicator(g->opt, &comm, &options));
  int my_rank = -1, my_world = -1;
  must("cuoptimGetRank", cuoptimGetRank(g->opt, &my_rank, &my_world));
  printf("rank %d: cuoptimGetRank: rank %d of %d\n", rank, my_rank, my_world);
  fflush(stdout);
}

/* One step with gradients (rank + 1) * (i + 1) / 8 on every registered variable. */
static cuoptimStatus_t step(rig_t *g, int s) {
  cuoptimGradient_t pairs[NUM_VARS + 1];
  int n = 0;
  int odd = rank == last && world > 1 && s == 2;
  for (int v = 0; v <= NUM_VARS; v++) {
    if (g->index[v] < 0) continue;
    for (int i = 0; i < MAX_COUNT; i++) g->grads[v][i] = (float)(rank + 1) * (float)(i + 1) / 8.0f + (float)s;
    pairs[n].variable = g->index[v];
    pairs[n].grad = g->grads[v];
    pairs[n].dtype = CUOPTIM_FLOAT32;
    if (odd && v == 0 && is("gradients_differ")) pairs[n].grad = NULL;
    if (rank == last && world > 1 && s == 1 && v == 0 && is("bad_first_gradient")) pairs[n].variable = 99;
    if (odd && v == 0 && is("gradient_dtype_differs")) {
      for (int i = 0; i < MAX_COUNT; i++) g->half_grad[i] = 0x3f80; /* bfloat16 1.0 */
      pairs[n].grad = g->half_grad;
      pairs[n].dtype = CUOPTIM_BFLOAT16;
    }
    n++;
  }
  return cuoptimApplyGradients(g->opt, n, pairs, NULL);
}

static void show_iterations(const rig_t *g) {
  int64_t iterations = -1;
  must("cuoptimGetIterations", cuoptimGetIterations(g->opt, &iterations));
  printf("rank %d: iterations %lld\n", rank, (long long)iterations);
  fflush(stdout);
}

/* The last rank stops taking part: the others' next step waits for it, times out, and aborts. */
static void timeout_scenario(rig_t *g, int stuck_before) {
  for (int s = 1;; s++) {
    if (rank == last && s == stuck_before) {
      printf("rank %d: stops before step %d\n", rank, s);
      fflush(stdout);
      for (;;) sleep(1); /* MPI_Abort of the others ends it */
    }
    double start = now();
    cuoptimStatus_t status = step(g, s);
    if (status == CUOPTIM_STATUS_SUCCESS) continue;
    double waited = now() - start;
    char call[64];
    snprintf(call, sizeof call, "step %d", s);
    show(call, status);
    printf("rank %d: waited %.3f s\n", rank, waited);
    show("the step after the timeout", step(g, s + 1));
    fflush(stdout);
    /* The other waiting ranks time out at about the same moment: give them time to print before
     * the abort ends every process (no barrier can help: the stuck rank would never join it). */
    sleep(2);
    MPI_Abort(MPI_COMM_WORLD, 3);
  }
}

/* A world of one with a communicator: every step and the state bit for bit as without one. */
static int world_of_one(void) {
  rig_t with, without;
  setup(&with, 1);
  setup(&without, 0);
  for (int s = 1; s <= 4; s++) {
    must("step with a communicator", step(&with, s));
    must("step without", step(&without, s));
  }
  int same = memcmp(with.params, without.params, sizeof with.params) == 0;
  int count = 0, count_without = 0;
  must("cuoptimGetWeightCount", cuoptimGetWeightCount(with.opt, &count));
  must("cuoptimGetWeightCount", cuoptimGetWeightCount(without.opt, &count_without));
  same = same && count == count_without;
  for (int k = 0; same && k < count; k++) {
    double a[MAX_COUNT], b[MAX_COUNT];
    cuoptimWeightInfo_t info;
    must("cuoptimGetWeightInfo", cuoptimGetWeightInfo(with.opt, k, &info));
    must("cuoptimGetWeights", cuoptimGetWeights(with.opt, k, a, info.count));
    must("cuoptimGetWeights", cuoptimGetWeights(without.opt, k, b, info.count));
    same = memcmp(a, b, info.count * sizeof *a) == 0;
  }
  printf("rank %d: world of one: %s\n", rank, same ? "bit for bit as without a communicator" : "DIFFERS");
  cuoptimDestroy(with.opt);
  cuoptimDestroy(without.opt);
  return same ? 0 : 1;
}

/* ---- sums --------------------------------------------------------------------------------------- */

#define SUM_VARS 5
static const size_t sum_counts[SUM_VARS] = {1, 7, 5, 300, 2};
static const cuoptimDtype_t sum_dtypes[SUM_VARS] = {CUOPTIM_FLOAT32, CUOPTIM_FLOAT16, CUOPTIM_BFLOAT16,
                                                    CUOPTIM_FLOAT32, CUOPTIM_FLOAT32};
#define SUM_MAX 300

/* Rank r's gradient element i in step s: a multiple of 1/4 small enough that every sum over up
 * to 4 ranks is exact in bfloat16 (8-bit significand), float16 and float32. */
static float rank_gradient(int r, int s, size_t i) { return (float)((r + 1) * (int)(i % 4 + 1) + s) * 0.25f - 1.0f; }

static float sum_over_ranks(int s, size_t i) {
  double total = 0;
  for (int r = 0; r < world; r++) total += rank_gradient(r, s, i);
  return (float)total;
}

static uint16_t to_half(float x, cuoptimDtype_t dtype) {
  /* The values are exact in both formats: truncating the float32 bits is exact for bfloat16,
   * and float16 is built from the exponent and the top 10 significand bits. */
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if (dtype == CUOPTIM_BFLOAT16) return (uint16_t)(u >> 16);
  if (x == 0.0f) return (uint16_t)((u >> 16) & 0x8000);
  uint32_t sign = (u >> 16) & 0x8000, exponent = ((u >> 23) & 0xff) - 127 + 15, mantissa = (u >> 13) & 0x3ff;
  return (uint16_t)(sign | exponent << 10 | mantissa);
}

static void store(void *buffer, cuoptimDtype_t dtype, size_t i, float x) {
  if (dtype == CUOPTIM_FLOAT32)
    ((float *)buffer)[i] = x;
  else
    ((uint16_t *)buffer)[i] = to_half(x, dtype);
}

static int stored_equals(const void *buffer, cuoptimDtype_t dtype, size_t i, float x) {
  if (dtype == CUOPTIM_FLOAT32) return memcmp(&((const float *)buffer)[i], &x, sizeof x) == 0;
  return ((const uint16_t *)buffer)[i] == to_half(x, dtype);
}

typedef struct {
  cuoptimOptimizer_t opt;
  float params[SUM_VARS][SUM_MAX];
  uint32_t grads[SUM_VARS][SUM_MAX]; /* room for float32 or 16-bit elements */
} sum_rig_t;

static void sum_rig(sum_rig_t *g, const cuoptimCommOptions_t *options) {
  memset(g, 0, sizeof *g);
  cuoptimConfig_t config;
  must("cuoptimConfigInit", cuoptimConfigInit(&config, CUOPTIM_SGD));
  config.learning_rate.initial_learning_rate = 0.1;
  must("cuoptimCreate", cuoptimCreate(&g->opt, &config, CUOPTIM_BACKEND_HOST, 0));
  for (int v = 0; v < SUM_VARS; v++) {
    char name[16];
    snprintf(name, sizeof name, "v%d", v);
    for (size_t i = 0; i < sum_counts[v]; i++) g->params[v][i] = 1.0f + 0.5f * (float)i;
    cuoptimVariable_t handle;
    must("cuoptimAddVariable", cuoptimAddVariable(g->opt, name, g->params[v], CUOPTIM_FLOAT32, sum_counts[v], &handle));
  }
  if (options) {
    MPI_Comm comm = MPI_COMM_WORLD;
    must("cuoptimSetCommunicator", cuoptimSetCommunicator(g->opt, &comm, options));
  }
}

/* Step s of the rig: the last variable has no gradient in step 2. `value(s, i)` fills them. */
static cuoptimStatus_t sum_step(sum_rig_t *g, int s, float (*value)(int, size_t), int as_float32) {
  cuoptimGradient_t pairs[SUM_VARS];
  int n = 0;
  for (int v = 0; v < SUM_VARS; v++) {
    if (v == SUM_VARS - 1 && s == 2) continue;
    cuoptimDtype_t dtype = as_float32 ? CUOPTIM_FLOAT32 : sum_dtypes[v];
    for (size_t i = 0; i < sum_counts[v]; i++) store(g->grads[v], dtype, i, value(s, i));
    pairs[n].variable = v;
    pairs[n].grad = g->grads[v];
    pairs[n].dtype = dtype;
    n++;
  }
  return cuoptimApplyGradients(g->opt, n, pairs, NULL);
}

static float this_ranks_gradient(int s, size_t i) { return rank_gradient(rank, s, i); }

/* What one process is given to end where the ranks end: the sum, its float32 mean, or this
 * rank's own gradient (aggregate 0). */
static const cuoptimCommOptions_t *reference_mode;
static float reference_gradient(int s, size_t i) {
  if (!reference_mode->aggregate) return rank_gradient(rank, s, i);
  float total = sum_over_ranks(s, i);
  if (reference_mode->reduce == CUOPTIM_REDUCE_SUM || world == 1) return total;
  return total * (float)(1.0 / (double)world);
}

static int sums_case(size_t bucket_bytes, cuoptimReduceOp_t reduce, int aggregate) {
  cuoptimCommOptions_t options;
  must("cuoptimCommOptionsInit", cuoptimCommOptionsInit(&options));
  options.bucket_bytes = bucket_bytes;
  options.reduce = reduce;
  options.aggregate = aggregate;
  options.timeout_seconds = timeout_seconds;
  reference_mode = &options;
  static sum_rig_t ranked, single;
  sum_rig(&ranked, &options);
  sum_rig(&single, NULL);
  char problem[256] = "";
  for (int s = 1; s <= 3; s++) {
    must("step with the communicator", sum_step(&ranked, s, this_ranks_gradient, 0));
    /* The gradient buffers hold the sums (or, without aggregation, the rank's own values). */
    for (int v = 0; v < SUM_VARS && !problem[0]; v++) {
      if (v == SUM_VARS - 1 && s == 2) continue;
      for (size_t i = 0; i < sum_counts[v] && !problem[0]; i++) {
        float want = aggregate ? sum_over_ranks(s, i) : rank_gradient(rank, s, i);
        if (!stored_equals(ranked.grads[v], sum_dtypes[v], i, want))
          snprintf(problem, sizeof problem, "step %d: v%d's gradient [%zu] is not %g after the step", s, v, i, want);
      }
    }
    /* The reference gets float32 values: exact for the sums; for the mean, what the update
     * computes from the (exact) summed element, float32 times float32(1/world). */
    must("step without", sum_step(&single, s, reference_gradient, 1));
  }
  if (!problem[0] && memcmp(ranked.params, single.params, sizeof ranked.params) != 0)
    snprintf(problem, sizeof problem, "the parameters differ from one process given the %s",
             !aggregate ? "rank's own gradients" : reduce == CUOPTIM_REDUCE_SUM ? "sums" : "float32 means");
  if (!problem[0] && aggregate) {
    static float all[64][SUM_VARS][SUM_MAX];
    if (world <= 64) {
      int n = (int)(sizeof ranked.params / sizeof(float));
      MPI_Allgather(ranked.params, n, MPI_FLOAT, all, n, MPI_FLOAT, MPI_COMM_WORLD);
      for (int r = 1; r < world && !problem[0]; r++)
        if (memcmp(all[r], all[0], sizeof ranked.params) != 0)
          snprintf(problem, sizeof problem, "rank %d's parameters differ from rank 0's", r);
    }
  }
  printf("rank %d: sums: bucket_bytes %zu, %s, aggregate %d: %s\n", rank, bucket_bytes,
         reduce == CUOPTIM_REDUCE_SUM ? "REDUCE_SUM" : "REDUCE_MEAN", aggregate, problem[0] ? problem : "ok");
  fflush(stdout);
  cuoptimDestroy(ranked.opt);
  cuoptimDestroy(single.opt);
  return problem[0] ? 1 : 0;
}

static int sums(void) {
  int failed = 0;
  static const size_t buckets[] = {1, 64, (size_t)25 << 20};
  for (size_t b = 0; b < sizeof buckets / sizeof buckets[0]; b++) {
    failed |= sums_case(buckets[b], CUOPTIM_REDUCE_SUM, 1);
    failed |= sums_case(buckets[b], CUOPTIM_REDUCE_MEAN, 1);
  }
  failed |= sums_case((size_t)25 << 20, CUOPTIM_REDUCE_MEAN, 0);
  return failed;
}

/* ---- huge_gradient ----------------------------------------------------------------------------- */

/* The huge variable's buffers are never read: the aggregate refuses it before any element moves. */
static int huge_gradient_in(size_t bucket_bytes) {
  cuoptimConfig_t config;
  must("cuoptimConfigInit", cuoptimConfigInit(&config, CUOPTIM_SGD)); /* no slots: nothing allocated per element */
  cuoptimOptimizer_t opt;
  must("cuoptimCreate", cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_HOST, 0));
  static float small[4], small_grad[4], huge_stand_in[4];
  cuoptimVariable_t a, b;
  must("cuoptimAddVariable", cuoptimAddVariable(opt, "small", small, CUOPTIM_FLOAT32, 4, &a));
  must("cuoptimAddVariable", cuoptimAddVariable(opt, "huge", huge_stand_in, CUOPTIM_FLOAT32, (size_t)1 << 31, &b));
  cuoptimCommOptions_t options;
  must("cuoptimCommOptionsInit", cuoptimCommOptionsInit(&options));
  options.reduce = CUOPTIM_REDUCE_SUM;
  options.timeout_seconds = timeout_seconds;
  options.bucket_bytes = bucket_bytes;
  MPI_Comm comm = MPI_COMM_WORLD;
  must("cuoptimSetCommunicator", cuoptimSetCommunicator(opt, &comm, &options));
  printf("rank %d: bucket_bytes %zu\n", rank, bucket_bytes);
  for (int i = 0; i < 4; i++) small_grad[i] = (float)(rank + 1);
  cuoptimGradient_t both[2] = {{a, small_grad, CUOPTIM_FLOAT32}, {b, huge_stand_in, CUOPTIM_FLOAT32}};
  show("step with the huge gradient", cuoptimApplyGradients(opt, 2, both, NULL));
  /* The small gradient was not summed by the failed step. */
  int untouched = 1;
  for (int i = 0; i < 4; i++) untouched &= small_grad[i] == (float)(rank + 1);
  printf("rank %d: the small gradient after the failed step: %s\n", rank, untouched ? "unchanged" : "CHANGED");
  /* A step without it: its sum alone, on every rank. */
  cuoptimGradient_t one[1] = {{a, small_grad, CUOPTIM_FLOAT32}};
  show("step without it", cuoptimApplyGradients(opt, 1, one, NULL));
  float want = (float)(world * (world + 1) / 2);
  int summed = 1;
  for (int i = 0; i < 4; i++) summed &= small_grad[i] == want;
  printf("rank %d: the small gradient after the next step: %s\n", rank, summed ? "the sum" : "NOT THE SUM");
  fflush(stdout);
  cuoptimDestroy(opt);
  return untouched && summed ? 0 : 1;
}

/* Test hook of the library (host/comm.c): steps that reduced gradients or accumulators. */
int64_t cuoptim_comm_reductions(const struct cuoptimOptimizer *opt, int accumulators);

/* An SGD optimizer with gradient accumulation 3 over `params`, on MPI_COMM_WORLD. */
static cuoptimOptimizer_t accumulating(float params[NUM_VARS][MAX_COUNT], int accumulate_locally) {
  cuoptimConfig_t config;
  must("cuoptimConfigInit", cuoptimConfigInit(&config, CUOPTIM_SGD));
  config.momentum = 0.5;
  config.gradient_accumulation_steps = 3;
  cuoptimOptimizer_t opt;
  must("cuoptimCreate", cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_HOST, 0));
  for (int v = 0; v < NUM_VARS; v++) {
    for (int i = 0; i < MAX_COUNT; i++) params[v][i] = 0.25f * (float)(i + 1) - (float)v;
    cuoptimVariable_t handle;
    must("cuoptimAddVariable", cuoptimAddVariable(opt, names[v], params[v], CUOPTIM_FLOAT32, counts[v], &handle));
  }
  cuoptimCommOptions_t options;
  must("cuoptimCommOptionsInit", cuoptimCommOptionsInit(&options));
  options.accumulate_locally = accumulate_locally;
  options.timeout_seconds = timeout_seconds;
  MPI_Comm comm = MPI_COMM_WORLD;
  must("cuoptimSetCommunicator", cuoptimSetCommunicator(opt, &comm, &options));
  return opt;
}

/* Step s of this rank: gradients that differ per rank, step and element. Variable 1 has none in
 * step 2, an applied step: its accumulator keeps the ranks' sum, so the rest of that cycle
 * reduces every micro-step. */
static void accumulating_step(cuoptimOptimizer_t opt, int s) {
  static float grads[NUM_VARS][MAX_COUNT];
  cuoptimGradient_t pairs[NUM_VARS];
  for (int v = 0; v < NUM_VARS; v++) {
    for (int i = 0; i < MAX_COUNT; i++)
      grads[v][i] = (float)(rank + 1) * 0.37f * (float)(i + 1) - 0.11f * (float)(s * (v + 2)) + 0.013f * (float)rank;
    pairs[v] = (cuoptimGradient_t){v, v == 1 && s == 2 ? NULL : grads[v], CUOPTIM_FLOAT32};
  }
  must("cuoptimApplyGradients", cuoptimApplyGradients(opt, NUM_VARS, pairs, NULL));
}

static int close_enough(double got, double want) { return fabs(got - want) <= 1e-6 + 1e-5 * fabs(want); }

/* Every state entry and parameter of `a` within float32 rounding of `b`'s; returns the number of
 * values that are not. Reading `a`'s accumulators mid-cycle is a collective: every rank calls. */
static int compare_accumulating(cuoptimOptimizer_t a, float pa[NUM_VARS][MAX_COUNT], cuoptimOptimizer_t b,
                                float pb[NUM_VARS][MAX_COUNT], const char *when) {
  int bad = 0, count = 0;
  for (int v = 0; v < NUM_VARS; v++)
    for (size_t i = 0; i < counts[v]; i++) bad += !close_enough(pa[v][i], pb[v][i]);
  must("cuoptimGetWeightCount", cuoptimGetWeightCount(a, &count));
  for (int w = 0; w < count; w++) {
    cuoptimWeightInfo_t info;
    must("cuoptimGetWeightInfo", cuoptimGetWeightInfo(a, w, &info));
    double x[MAX_COUNT], y[MAX_COUNT];
    must("cuoptimGetWeights", cuoptimGetWeights(a, w, x, info.count));
    must("cuoptimGetWeights", cuoptimGetWeights(b, w, y, info.count));
    for (size_t i = 0; i < info.count; i++) bad += !close_enough(x[i], y[i]);
  }
  printf("rank %d: local_accumulation: %s: %s\n", rank, when, bad ? "DIFFERS" : "agrees");
  fflush(stdout);
  return bad;
}

static int local_accumulation(void) {
  static float pa[NUM_VARS][MAX_COUNT], pb[NUM_VARS][MAX_COUNT];
  cuoptimOptimizer_t a = accumulating(pa, 1), b = accumulating(pb, 0);
  int failed = 0;
  for (int s = 0; s < 7; s++) { /* applied at iterations 2 and 5; 6 is a micro-step */
    accumulating_step(a, s);
    accumulating_step(b, s);
  }
  int64_t reduced[3] = {cuoptim_comm_reductions(a, 0), cuoptim_comm_reductions(a, 1), cuoptim_comm_reductions(b, 0)};
  /* Gradients: step 2 (applied), 3 and 4 (the accumulators are the same on every rank after
   * step 2), 5 (applied); accumulators: step 2; every micro-step: all 7. */
  int64_t want[3] = {world > 1 ? 4 : 0, world > 1 ? 1 : 0, world > 1 ? 7 : 0};
  printf("rank %d: local_accumulation: reductions: gradients %lld, accumulators %lld; every micro-step: %lld\n", rank,
         (long long)reduced[0], (long long)reduced[1], (long long)reduced[2]);
  for (int i = 0; i < 3; i++) failed |= reduced[i] != want[i];
  failed |= compare_accumulating(a, pa, b, pb, "after 7 steps") != 0;
  /* Mid-cycle the ranks' accumulators are parts: no checkpoint of them. */
  cuoptimStatus_t saved = cuoptimSave(a, "/nonexistent-dir/partial.safetensors");
  show("cuoptimSave mid-cycle", saved);
  failed |= world > 1 ? saved != CUOPTIM_STATUS_INVALID_STATE : saved != CUOPTIM_STATUS_IO_ERROR;
  /* A written accumulator: the ranks' sum is the value written. */
  int count = 0;
  must("cuoptimGetWeightCount", cuoptimGetWeightCount(a, &count));
  for (int w = 0; w < count; w++) {
    cuoptimWeightInfo_t info;
    must("cuoptimGetWeightInfo", cuoptimGetWeightInfo(a, w, &info));
    if (!strstr(info.name, "accumulator")) continue;
    double values[MAX_COUNT];
    for (size_t i = 0; i < info.count; i++) values[i] = 0.5 + 0.25 * (double)i;
    must("cuoptimSetWeights", cuoptimSetWeights(a, w, values, info.count));
    must("cuoptimSetWeights", cuoptimSetWeights(b, w, values, info.count));
  }
  for (int s = 7; s < 9; s++) { /* a micro-step, then the applied step at iteration 8 */
    accumulating_step(a, s);
    accumulating_step(b, s);
  }
  failed |= compare_accumulating(a, pa, b, pb, "after writing the accumulators and 2 more steps") != 0;
  saved = cuoptimSave(a, "/nonexistent-dir/applied.safetensors");
  show("cuoptimSave after an applied step", saved);
  failed |= saved != CUOPTIM_STATUS_IO_ERROR; /* refused by the file system only */
  float all[64][NUM_VARS][MAX_COUNT];
  if (world <= 64) {
    MPI_Gather(pa, NUM_VARS * MAX_COUNT, MPI_FLOAT, all, NUM_VARS * MAX_COUNT, MPI_FLOAT, 0, MPI_COMM_WORLD);
    for (int r = 1; rank == 0 && r < world; r++) {
      int same = memcmp(all[r], all[0], sizeof pa) == 0;
      printf("rank 0: local_accumulation: rank %d's parameters %s rank 0's\n", r, same ? "are bit for bit" : "DIFFER from");
      failed |= !same;
    }
  }
  cuoptimDestroy(a);
  cuoptimDestroy(b);
  printf("rank %d: local_accumulation: %s\n", rank, failed ? "FAILED" : "passed");
  fflush(stdout);
  return failed;
}

/* Every state entry of `opt` (a collective with sharded state: every rank reads the same ones). */
static void state_of(cuoptimOptimizer_t opt, double *values, size_t capacity, size_t *used) {
  int count = 0;
  *used = 0;
  must("cuoptimGetWeightCount", cuoptimGetWeightCount(opt, &count));
  for (int w = 0; w < count; w++) {
    cuoptimWeightInfo_t info;
    must("cuoptimGetWeightInfo", cuoptimGetWeightInfo(opt, w, &info));
    if (*used + info.count > capacity) MPI_Abort(MPI_COMM_WORLD, 4);
    must("cuoptimGetWeights", cuoptimGetWeights(opt, w, values + *used, info.count));
    *used += info.count;
  }
}

/* A directory every rank shares (`dir` a mkdtemp template of 64 bytes at most), made by rank 0. */
static void shared_directory(char dir[64]) {
  if (rank == 0 && !mkdtemp(dir)) MPI_Abort(MPI_COMM_WORLD, 4);
  MPI_Bcast(dir, 64, MPI_CHAR, 0, MPI_COMM_WORLD);
}

/* Every rank removes its file `mine`; rank 0 the directory, once every file is gone. */
static void remove_shared_directory(const char *dir, const char *mine) {
  MPI_Barrier(MPI_COMM_WORLD);
  unlink(mine);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) rmdir(dir);
}

static int sharded_checkpoint(void) {
  char dir[64] = "/tmp/cuoptim-sharded-XXXXXX";
  shared_directory(dir);
  char mine[128], other[128];
  snprintf(mine, sizeof mine, "%s/state.rank%d.safetensors", dir, rank);
  snprintf(other, sizeof other, "%s/state.rank%d.safetensors", dir, (rank + 1) % world);
  rig_t straight, resumed, whole;
  setup(&straight, 1);
  for (int s = 1; s <= 2; s++) must("step", step(&straight, s));
  show("cuoptimSave", cuoptimSave(straight.opt, mine));
  float saved_params[NUM_VARS + 1][MAX_COUNT];
  memcpy(saved_params, straight.params, sizeof saved_params);
  for (int s = 3; s <= 4; s++) must("step", step(&straight, s));
  /* A new run: the caller's own parameters from its own checkpoint, the optimizer's from cuoptim's. */
  setup(&resumed, 1);
  memcpy(resumed.params, saved_params, sizeof saved_params);
  MPI_Barrier(MPI_COMM_WORLD); /* every rank's file is written */
  show("cuoptimLoad", cuoptimLoad(resumed.opt, mine));
  for (int s = 3; s <= 4; s++) must("step", step(&resumed, s));
  static double a[4096], b[4096];
  size_t na = 0, nb = 0;
  state_of(straight.opt, a, 4096, &na);
  state_of(resumed.opt, b, 4096, &nb);
  int same = na == nb && memcmp(a, b, na * sizeof *a) == 0 &&
             memcmp(straight.params, resumed.params, sizeof straight.params) == 0;
  printf("rank %d: sharded resume: %s\n", rank, same ? "bit for bit the straight run" : "DIFFERS");
  if (world > 1) show("cuoptimLoad of another rank's file", cuoptimLoad(resumed.opt, other));
  setup(&whole, 0);
  show("cuoptimLoad into unsharded state", cuoptimLoad(whole.opt, mine));
  fflush(stdout);
  cuoptimDestroy(whole.opt);
  cuoptimDestroy(resumed.opt);
  cuoptimDestroy(straight.opt);
  remove_shared_directory(dir, mine);
  return same ? 0 : 1;
}

/* ---- multi: a MultiOptimizer over the world ----------------------------------------------- */

typedef struct {
  cuoptimOptimizer_t opt;
  float params[NUM_VARS][MAX_COUNT];
} multi_rig_t;

static void multi_configs(cuoptimConfig_t configs[2], cuoptimOptimizerKind_t first) {
  must("cuoptimConfigInit", cuoptimConfigInit(&configs[0], first));
  must("cuoptimConfigInit", cuoptimConfigInit(&configs[1], CUOPTIM_SGD));
  configs[1].momentum = 0.5;
}

static void attach(cuoptimOptimizer_t opt, int shard) {
  cuoptimCommOptions_t options;
  must("cuoptimCommOptionsInit", cuoptimCommOptionsInit(&options));
  options.timeout_seconds = timeout_seconds;
  options.shard_state = shard;
  MPI_Comm comm = MPI_COMM_WORLD;
  must("cuoptimSetCommunicator", cuoptimSetCommunicator(opt, &comm, &options));
}

static void multi_params(float params[NUM_VARS][MAX_COUNT]) {
  for (int v = 0; v < NUM_VARS; v++)
    for (int i = 0; i < MAX_COUNT; i++) params[v][i] = 0.25f * (float)(i + 1) - (float)v;
}

/* Gradients that differ between the ranks, steps and variables. */
static float multi_grad(int s, int v, int i) { return (float)(rank + 1) * (float)(i + 1) / 8.0f - (float)(s * v) / 4.0f; }

/* The MultiOptimizer: "dense/kernel" to sub-optimizer 0, the rest to the default, 1. */
static void multi_setup(multi_rig_t *g, cuoptimOptimizerKind_t first) {
  cuoptimConfig_t configs[2];
  multi_configs(configs, first);
  cuoptimMultiConfig_t multi;
  must("cuoptimMultiConfigInit", cuoptimMultiConfigInit(&multi));
  static const char *const patterns[] = {"dense/kernel"};
  static const int pattern_optimizer[] = {0};
  multi.num_optimizers = 2;
  multi.optimizers = configs;
  multi.num_patterns = 1;
  multi.patterns = patterns;
  multi.pattern_optimizer = pattern_optimizer;
  multi.default_optimizer = 1;
  must("cuoptimCreateMulti", cuoptimCreateMulti(&g->opt, &multi, CUOPTIM_BACKEND_HOST, 0));
  multi_params(g->params);
  for (int v = 0; v < NUM_VARS; v++) {
    cuoptimVariable_t handle;
    must("cuoptimAddVariable", cuoptimAddVariable(g->opt, names[v], g->params[v], CUOPTIM_FLOAT32, counts[v], &handle));
  }
}

/* Steps 1..3 of the MultiOptimizer, and of its two optimizers on their own (each attached to
 * the world) on a copy of the same parameters; 1 when they are the same bit for bit. */
static int multi_matches_parts(int shard) {
  multi_rig_t m;
  multi_setup(&m, CUOPTIM_ADAM);
  attach(m.opt, shard);
  int r = -1, n = -1;
  must("cuoptimGetRank", cuoptimGetRank(m.opt, &r, &n));
  int ranked = r == rank && n == world;
  cuoptimConfig_t configs[2];
  multi_configs(configs, CUOPTIM_ADAM);
  cuoptimOptimizer_t parts[2];
  float params[NUM_VARS][MAX_COUNT];
  multi_params(params);
  cuoptimVariable_t handles[NUM_VARS];
  for (int k = 0; k < 2; k++) {
    must("cuoptimCreate", cuoptimCreate(&parts[k], &configs[k], CUOPTIM_BACKEND_HOST, 0));
    for (int v = 0; v < NUM_VARS; v++)
      if ((v == 0) == (k == 0))
        must("cuoptimAddVariable",
             cuoptimAddVariable(parts[k], names[v], params[v], CUOPTIM_FLOAT32, counts[v], &handles[v]));
    attach(parts[k], shard);
  }
  static float grads[NUM_VARS][MAX_COUNT];
  for (int s = 1; s <= 3; s++) {
    cuoptimGradient_t all[NUM_VARS], rest[NUM_VARS - 1];
    for (int v = 0; v < NUM_VARS; v++) {
      for (int i = 0; i < MAX_COUNT; i++) grads[v][i] = multi_grad(s, v, i);
      all[v] = (cuoptimGradient_t){(cuoptimVariable_t)v, grads[v], CUOPTIM_FLOAT32};
      if (v > 0) rest[v - 1] = (cuoptimGradient_t){handles[v], grads[v], CUOPTIM_FLOAT32};
    }
    must("cuoptimApplyGradients (multi)", cuoptimApplyGradients(m.opt, NUM_VARS, all, NULL));
    /* The aggregate left the ranks' sums in the gradient buffers: the same gradients again. */
    for (int v = 0; v < NUM_VARS; v++)
      for (int i = 0; i < MAX_COUNT; i++) grads[v][i] = multi_grad(s, v, i);
    cuoptimGradient_t kernel = {handles[0], grads[0], CUOPTIM_FLOAT32};
    must("cuoptimApplyGradients (Adam)", cuoptimApplyGradients(parts[0], 1, &kernel, NULL));
    must("cuoptimApplyGradients (SGD)", cuoptimApplyGradients(parts[1], NUM_VARS - 1, rest, NULL));
  }
  /* The MultiOptimizer's state: its own two entries, then each sub-optimizer's. */
  static double whole[4096], a[4096], b[4096];
  size_t n_whole = 0, n_a = 0, n_b = 0;
  state_of(m.opt, whole, 4096, &n_whole);
  state_of(parts[0], a, 4096, &n_a);
  state_of(parts[1], b, 4096, &n_b);
  int same_state = n_whole == 2 + n_a + n_b && memcmp(whole + 2, a, n_a * sizeof *a) == 0 &&
                   memcmp(whole + 2 + n_a, b, n_b * sizeof *b) == 0;
  int same_params = memcmp(m.params, params, sizeof params) == 0;
  /* Every rank holds rank 0's parameters (the gradients, which differ, were reduced). */
  float first[NUM_VARS][MAX_COUNT];
  memcpy(first, m.params, sizeof first);
  MPI_Bcast(first, NUM_VARS * MAX_COUNT, MPI_FLOAT, 0, MPI_COMM_WORLD);
  int alike = memcmp(first, m.params, sizeof first) == 0;
  printf("rank %d: multi%s: rank %d of %d, parameters %s, state %s, ranks %s\n", rank, shard ? " sharded" : "", r, n,
         same_params ? "the same" : "DIFFER", same_state ? "the same" : "DIFFERS", alike ? "alike" : "DIFFER");
  fflush(stdout);
  for (int k = 0; k < 2; k++) cuoptimDestroy(parts[k]);
  cuoptimDestroy(m.opt);
  return ranked && same_params && same_state && alike;
}

/* shard_state with a Muon sub-optimizer: refused naming it, nothing attached (rank 0 of 1). */
static int multi_refuses_sharded_muon(void) {
  multi_rig_t m;
  multi_setup(&m, CUOPTIM_MUON);
  cuoptimCommOptions_t options;
  must("cuoptimCommOptionsInit", cuoptimCommOptionsInit(&options));
  options.shard_state = 1;
  MPI_Comm comm = MPI_COMM_WORLD;
  cuoptimStatus_t status = show("cuoptimSetCommunicator (Muon, sharded)", cuoptimSetCommunicator(m.opt, &comm, &options));
  int named = strstr(cuoptimGetLastErrorMessage(), "sub-optimizer 0, Muon") != NULL;
  int r = -1, n = -1;
  must("cuoptimGetRank", cuoptimGetRank(m.opt, &r, &n));
  cuoptimDestroy(m.opt);
  return status == CUOPTIM_STATUS_INVALID_VALUE && named && r == 0 && n == 1;
}

/* One step of the MultiOptimizer: every variable's gradient. */
static void multi_step(multi_rig_t *g, int s) {
  static float grads[NUM_VARS][MAX_COUNT];
  cuoptimGradient_t all[NUM_VARS];
  for (int v = 0; v < NUM_VARS; v++) {
    for (int i = 0; i < MAX_COUNT; i++) grads[v][i] = multi_grad(s, v, i);
    all[v] = (cuoptimGradient_t){(cuoptimVariable_t)v, grads[v], CUOPTIM_FLOAT32};
  }
  must("cuoptimApplyGradients (multi)", cuoptimApplyGradients(g->opt, NUM_VARS, all, NULL));
}

/* The MultiOptimizer attached to the world, saved after step 2 (each rank to a file of its own,
 * which with sharded state holds the rank's shares), then a fresh one attached alike, the
 * parameters of step 2 and the file: steps 3 and 4 end bit for bit where the straight run does. */
static int multi_checkpoint(int shard) {
  char dir[64] = "/tmp/cuoptim-multi-XXXXXX";
  shared_directory(dir);
  char mine[128];
  snprintf(mine, sizeof mine, "%s/multi.rank%d.safetensors", dir, rank);
  multi_rig_t straight, resumed;
  float saved[NUM_VARS][MAX_COUNT];
  multi_setup(&straight, CUOPTIM_ADAM);
  attach(straight.opt, shard);
  for (int s = 1; s <= 4; s++) {
    multi_step(&straight, s);
    if (s != 2) continue;
    show(shard ? "cuoptimSave (multi, sharded)" : "cuoptimSave (multi)", cuoptimSave(straight.opt, mine));
    memcpy(saved, straight.params, sizeof saved);
  }
  multi_setup(&resumed, CUOPTIM_ADAM);
  attach(resumed.opt, shard);
  memcpy(resumed.params, saved, sizeof saved);
  cuoptimStatus_t loaded =
      show(shard ? "cuoptimLoad (multi, sharded)" : "cuoptimLoad (multi)", cuoptimLoad(resumed.opt, mine));
  for (int s = 3; s <= 4; s++) multi_step(&resumed, s);
  static double a[4096], b[4096];
  size_t na = 0, nb = 0;
  state_of(straight.opt, a, 4096, &na);
  state_of(resumed.opt, b, 4096, &nb);
  int same = loaded == CUOPTIM_STATUS_SUCCESS && na == nb && memcmp(a, b, na * sizeof *a) == 0 &&
             memcmp(straight.params, resumed.params, sizeof straight.params) == 0;
  printf("rank %d: multi%s resume: %s\n", rank, shard ? " sharded" : "", same ? "bit for bit the straight run" : "DIFFERS");
  fflush(stdout);
  cuoptimDestroy(resumed.opt);
  cuoptimDestroy(straight.opt);
  remove_shared_directory(dir, mine);
  return same;
}

static int multi(void) {
  int ok = multi_matches_parts(0);
  ok &= multi_matches_parts(1);
  ok &= multi_refuses_sharded_muon();
  ok &= multi_checkpoint(0);
  ok &= multi_checkpoint(1);
  printf("rank %d: multi: %s\n", rank, ok ? "passed" : "FAILED");
  fflush(stdout);
  return ok ? 0 : 1;
}

static int huge_gradient(void) {
  int failed = huge_gradient_in((size_t)25 << 20); /* one bucket */
  return huge_gradient_in(16) | failed;           /* the small gradient fills a bucket of its own */
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  last = world - 1;
  scenario = argc > 1 ? argv[1] : "";
  for (int i = 2; i + 1 < argc; i++)
    if (strcmp(argv[i], "--timeout") == 0) timeout_seconds = atof(argv[++i]);
  int status = 0;
  if (is("world_of_one_is_plain")) {
    status = world_of_one();
  } else if (is("sums")) {
    status = sums();
  } else if (is("huge_gradient")) {
    status = huge_gradient();
  } else if (is("local_accumulation")) {
    status = local_accumulation();
  } else if (is("multi")) {
    status = multi();
  } else if (is("state_fails") || is("bad_first_gradient")) {
    rig_t g;
    setup(&g, 1);
    show("step 1", step(&g, 1));
    if (is("bad_first_gradient")) show("step 2", step(&g, 2));
    cuoptimDestroy(g.opt);
  } else if (is("timeout_attach")) {
    if (rank == last && world > 1) {
      printf("rank %d: never attaches\n", rank);
      fflush(stdout);
      for (;;) sleep(1); /* MPI_Abort of the others ends it */
    }
    rig_t g;
    setup(&g, 0);
    cuoptimCommOptions_t options;
    must("cuoptimCommOptionsInit", cuoptimCommOptionsInit(&options));
    options.timeout_seconds = timeout_seconds;
    MPI_Comm comm = MPI_COMM_WORLD;
    double start = now();
    cuoptimStatus_t attached = show("cuoptimSetCommunicator", cuoptimSetCommunicator(g.opt, &comm, &options));
    printf("rank %d: waited %.3f s\n", rank, now() - start);
    /* Not attached: the optimizer is a single process still. */
    int r = -1, n = -1;
    must("cuoptimGetRank", cuoptimGetRank(g.opt, &r, &n));
    printf("rank %d: after the timeout: rank %d of %d\n", rank, r, n);
    fflush(stdout);
    if (attached == CUOPTIM_STATUS_TIMEOUT) {
      sleep(2); /* the others print too before the abort */
      MPI_Abort(MPI_COMM_WORLD, 3);
    }
    cuoptimDestroy(g.opt);
  } else if (is("timeout_first_step") || is("timeout_later_step")) {
    rig_t g;
    setup(&g, 1);
    timeout_scenario(&g, is("timeout_first_step") ? 1 : 2);
  } else if (is("sharded_checkpoint")) {
    status = sharded_checkpoint();
  } else if (is("gradients_differ") || is("gradient_dtype_differs")) {
    rig_t g;
    setup(&g, 1);
    for (int s = 1; s <= 3; s++) {
      char call[64];
      snprintf(call, sizeof call, "step %d", s);
      show(call, step(&g, s));
    }
    show_iterations(&g);
    /* Every rank holds the same parameters after the steps that succeeded. */
    float all[64][NUM_VARS + 1][MAX_COUNT];
    if (world <= 64) {
      MPI_Gather(g.params, (int)(sizeof g.params / sizeof(float)), MPI_FLOAT, all, (int)(sizeof g.params / sizeof(float)),
                 MPI_FLOAT, 0, MPI_COMM_WORLD);
      for (int r = 1; rank == 0 && r < world; r++)
        printf("rank 0: rank %d's parameters %s rank 0's\n", r,
               memcmp(all[r], all[0], sizeof g.params) == 0 ? "are bit for bit" : "DIFFER from");
    }
    cuoptimDestroy(g.opt);
  } else {
    rig_t g;
    setup(&g, 1);
    show("step 1", step(&g, 1));
    show_iterations(&g);
    cuoptimDestroy(g.opt);
  }
  printf("rank %d: done\n", rank);
  fflush(stdout);
  MPI_Finalize();
  return status;
}
