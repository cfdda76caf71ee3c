/*
 * faults.c — run under `mpirun -np R` by tests/test_ranks.c: one data-parallel fault per run,
 * committed by the last rank, and what every rank's cuoptim calls return. Each rank prints
 *   rank <r>: <call>: <STATUS>: <message>
 * for each call of interest (and "rank <r>: done" when it finishes); the test reads the lines.
 *
 * Scenarios (argv[1]):
 *   name_differs, count_differs, dtype_differs   the last rank's variable 1 differs
 *   variable_missing                             the last rank does not register variable 1
 *   extra_variable                               the last rank registers a fourth variable
 *   bucket_differs, reduce_differs, aggregate_differs   the last rank's options differ
 *   gradients_differ                             in step 2 the last rank has no gradient for
 *                                                variable 0; step 3 is whole again
 *   gradient_dtype_differs                       in step 2 the last rank's gradient 0 is bfloat16
 *   timeout_first_step, timeout_later_step       the last rank never makes (its first, its second)
 *                                                step: the others time out, then abort
 *   world_of_one_is_plain                        (-np 1) a world of one is bit for bit no world
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
    if (odd && v == 1 && is("dtype_differs")) dtype = CUOPTIM_BFLOAT16;
    cuoptimVariable_t handle;
    must("cuoptimAddVariable", cuoptimAddVariable(g->opt, name, g->params[v], dtype, count, &handle));
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
  MPI_Comm comm = MPI_COMM_WORLD;
  must("cuoptimSetCommunicator", cuoptimSetCommunicator(g->opt, &comm, &options));
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
  } else if (is("timeout_first_step") || is("timeout_later_step")) {
    rig_t g;
    setup(&g, 1);
    timeout_scenario(&g, is("timeout_first_step") ? 1 : 2);
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
