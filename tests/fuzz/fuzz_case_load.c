/*
 * fuzz_case_load — cuoptim_case_load (tools/case.c) on an arbitrary file.
 *
 * Properties: a failure leaves a one-line message and a zeroed case; a loaded case is consistent
 * (a count per variable equal to its shape's product, names unique and non-empty, a config that
 * validates and equals what its optimizer JSON reads to, rank_steps for at least one rank and
 * step). A small loaded case is also run on the host backend twice: a run fails with a
 * cuoptimStatus_t and a message or succeeds, two runs agree bit for bit, and a result compares
 * equal to itself; comparing with the case's expected values must not crash. Its first rank's
 * steps (rank_steps) run once in one process, with the same contract.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "case.h"
#include "fuzz_util.h"

/* Runs only cases this small: elements of all variables, and steps. */
#define RUN_MAX_ELEMENTS 256
#define RUN_MAX_STEPS 32

static void check_failure(const cuoptimCase *c, const char *error) {
  static const cuoptimCase zero;
  if (error[0] == '\0') fuzz_fail("cuoptim_case_load failed without a message");
  for (const unsigned char *e = (const unsigned char *)error; *e; e++)
    if (*e < 0x20 || *e == 0x7f) fuzz_fail("cuoptim_case_load's message holds the control byte 0x%02x: %s", *e, error);
  if (memcmp(c, &zero, sizeof zero) != 0) fuzz_fail("cuoptim_case_load failed and left the case non-zero: %s", error);
}

static void check_loaded(const cuoptimCase *c) {
  if (c->num_variables < 1) fuzz_fail("a loaded case has %d variables", c->num_variables);
  for (int v = 0; v < c->num_variables; v++) {
    const cuoptimCaseVariable *var = &c->variables[v];
    if (var->ndim < 0 || var->ndim > CUOPTIM_CASE_MAX_DIMS) fuzz_fail("variables[%d].ndim = %d", v, var->ndim);
    size_t product = 1;
    for (int d = 0; d < var->ndim; d++) product *= (size_t)var->shape[d];
    if (product != var->count) fuzz_fail("variables[%d].count = %zu, its shape holds %zu", v, var->count, product);
    if (var->name[0] == '\0' || memchr(var->name, '\0', sizeof var->name) == NULL)
      fuzz_fail("variables[%d] has an empty or unterminated name", v);
    for (int k = 0; k < v; k++)
      if (strcmp(c->variables[k].name, var->name) == 0) fuzz_fail("variables[%d] and [%d] share a name", k, v);
  }
  if (!c->has_steps && !c->has_rank_steps) fuzz_fail("a loaded case has neither steps nor rank_steps");
  if (c->has_rank_steps && (c->num_ranks < 1 || c->num_rank_steps < 1 || c->rank_steps == NULL))
    fuzz_fail("a loaded case has rank_steps for %d ranks and %d steps", c->num_ranks, c->num_rank_steps);
  for (int r = 0; c->has_rank_steps && r < c->num_ranks; r++)
    for (int s = 0; s < c->num_rank_steps; s++)
      if (c->rank_steps[r] == NULL || c->rank_steps[r][s] == NULL) fuzz_fail("rank_steps[%d][%d] is missing", s, r);
  if (cuoptimConfigValidate(&c->config) != CUOPTIM_STATUS_SUCCESS)
    fuzz_fail("a loaded case's config does not validate: %s", cuoptimGetLastErrorMessage());
  cuoptimConfig_t again;
  char why[128];
  if (cuoptimConfigFromKerasJSON(&again, c->optimizer_json) != CUOPTIM_STATUS_SUCCESS ||
      !fuzz_configs_equal(&c->config, &again, 0, why, sizeof why))
    fuzz_fail("a loaded case's optimizer_json does not read to its config");
}

static int small_enough_to_run(const cuoptimCase *c) {
  size_t elements = 0;
  for (int v = 0; v < c->num_variables; v++) elements += c->variables[v].count;
  return elements <= RUN_MAX_ELEMENTS && c->num_steps <= RUN_MAX_STEPS && c->num_rank_steps <= RUN_MAX_STEPS;
}

/* Runs the case; returns 1 with *r filled on success. */
static int run_once(const cuoptimCase *c, cuoptimCaseResult *r) {
  char error[512] = "";
  int rc = cuoptim_case_run(c, CUOPTIM_BACKEND_HOST, r, error, sizeof error);
  if (rc < 0 || rc >= CUOPTIM_STATUS_INTERNAL_ERROR) fuzz_fail("cuoptim_case_run returned %d: %s", rc, error);
  if (rc != 0 && error[0] == '\0') fuzz_fail("cuoptim_case_run failed (%d) without a message", rc);
  return rc == 0;
}

/* Rank 0's steps, in one process (no communicator). */
static void run_first_rank(const cuoptimCase *c) {
  cuoptimCaseRunOptions options;
  memset(&options, 0, sizeof options);
  options.steps = c->rank_steps[0];
  options.num_steps = c->num_rank_steps;
  options.label = "rank 0's rank_steps";
  cuoptimCaseResult r;
  char error[512] = "";
  int rc = cuoptim_case_run_with(c, CUOPTIM_BACKEND_HOST, &options, &r, error, sizeof error);
  if (rc < 0 || rc >= CUOPTIM_STATUS_INTERNAL_ERROR) fuzz_fail("cuoptim_case_run_with returned %d: %s", rc, error);
  if (rc != 0 && error[0] == '\0') fuzz_fail("cuoptim_case_run_with failed (%d) without a message", rc);
  if (rc == 0) cuoptim_case_result_free(&r);
}

static void run_case(const cuoptimCase *c) {
  if (c->has_rank_steps) run_first_rank(c);
  cuoptimCaseResult first, second;
  if (!run_once(c, &first)) return;
  if (!run_once(c, &second)) fuzz_fail("cuoptim_case_run succeeded once and then failed");
  cuoptimCaseComparison cmp;
  if (cuoptim_case_compare_results(c, &first, &second, 0.0, 0.0, &cmp) != 0)
    fuzz_fail("two host runs of the same case differ");
  if (cuoptim_case_compare_results(c, &first, &first, 0.0, 0.0, &cmp) != 0)
    fuzz_fail("a result does not compare equal to itself");
  cuoptim_case_compare(c, &first, 1e-6, 1e-6, &cmp);
  for (int g = 0; g < CUOPTIM_CASE_GROUP_COUNT; g++) {
    char line[1024];
    cuoptim_case_format_group(&cmp.groups[g], line, sizeof line);
  }
  cuoptim_case_result_free(&first);
  cuoptim_case_result_free(&second);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int fd = memfd_create("case", 0);
  if (fd < 0 || write(fd, data, size) != (ssize_t)size) abort();
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

  cuoptimCase c;
  char error[1024] = "";
  if (cuoptim_case_load(path, &c, error, sizeof error) != 0) {
    check_failure(&c, error);
  } else {
    check_loaded(&c);
    if (small_enough_to_run(&c)) run_case(&c);
    cuoptim_case_free(&c);
  }
  close(fd);
  return 0;
}
