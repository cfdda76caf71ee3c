/*
 * fuzz_case_load — cuoptim_case_load (tools/case.c) on an arbitrary file.
 *
 * Properties: a failure leaves a one-line message and a zeroed case; a loaded case is consistent
 * (a count per variable equal to its shape's product, names unique and non-empty, a config that
 * validates and equals what its optimizer JSON reads to). A small loaded case is also run on the
 * host backend twice: a run fails with a cuoptimStatus_t and a message or succeeds, two runs agree
 * bit for bit, and a result compares equal to itself; comparing with the case's expected values
 * must not crash.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
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

/* KNOWN BUG (remove with its fix): see fuzz_regex_is_tame; the loader compiles the case's
 * exclusion patterns. 1 when every pattern of the case is tame. */
static int exclusions_are_tame(const cJSON *root) {
  const cJSON *item, *pattern;
  cJSON_ArrayForEach(item, root) {
    if (item->string == NULL || strcmp(item->string, "exclude_from_weight_decay") != 0) continue;
    cJSON_ArrayForEach(pattern, item) {
      if (cJSON_IsString(pattern) && !fuzz_regex_is_tame(pattern->valuestring, strlen(pattern->valuestring)))
        return 0;
    }
  }
  return 1;
}

/* FOUND BUG (remove with its fix): the loader allocates a variable's (or an expected state
 * entry's) values from its "shape" before it checks that "value" holds that many numbers, so a
 * file of a few bytes asks for up to 2^40 floats. 1 when some "shape" in the text holds more than
 * 2^24 elements (more numbers than a fuzz input can hold). */
static int found_bug_huge_shape(const cJSON *item) {
  const cJSON *child, *dim;
  cJSON_ArrayForEach(child, item) {
    if (child->string != NULL && strcmp(child->string, "shape") == 0 && cJSON_IsArray(child)) {
      double elements = 1;
      cJSON_ArrayForEach(dim, child) elements *= cJSON_IsNumber(dim) ? fabs(dim->valuedouble) : 1;
      if (elements > 16777216.0) return 1;
    }
    if (found_bug_huge_shape(child)) return 1;
  }
  return 0;
}

/* 1 when the loader may be given the text: no input of the bugs above. */
static int input_avoids_open_bugs(const char *text, size_t size) {
  cJSON *root = cJSON_ParseWithLength(text, size);
  int ok = exclusions_are_tame(root) && !found_bug_huge_shape(root);
  cJSON_Delete(root);
  return ok;
}

/* FOUND BUG (remove with its fix): messages quote keys and strings of the input as they are, so a
 * key holding a newline (raw, which cJSON accepts, or escaped) breaks the message's one line. 1
 * when a string of the input holds a control character or an escape. */
static int found_bug_input_may_break_lines(const uint8_t *data, size_t size) {
  int in_string = 0;
  for (size_t i = 0; i < size; i++) {
    if (in_string && (data[i] < 0x20 || data[i] == '\\')) return 1;
    if (data[i] == '"') in_string = !in_string;
  }
  return 0;
}

static void check_failure(const cuoptimCase *c, const char *error, int may_break_lines) {
  static const cuoptimCase zero;
  if (error[0] == '\0') fuzz_fail("cuoptim_case_load failed without a message");
  if (strchr(error, '\n') != NULL && !may_break_lines)
    fuzz_fail("cuoptim_case_load's message is not one line: %s", error);
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
  return elements <= RUN_MAX_ELEMENTS && c->num_steps <= RUN_MAX_STEPS;
}

/* Runs the case; returns 1 with *r filled on success. */
static int run_once(const cuoptimCase *c, cuoptimCaseResult *r) {
  char error[512] = "";
  int rc = cuoptim_case_run(c, CUOPTIM_BACKEND_HOST, r, error, sizeof error);
  if (rc < 0 || rc >= CUOPTIM_STATUS_INTERNAL_ERROR) fuzz_fail("cuoptim_case_run returned %d: %s", rc, error);
  if (rc != 0 && error[0] == '\0') fuzz_fail("cuoptim_case_run failed (%d) without a message", rc);
  return rc == 0;
}

static void run_case(const cuoptimCase *c) {
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
  if (!input_avoids_open_bugs((const char *)data, size)) return 0;
  int fd = memfd_create("case", 0);
  if (fd < 0 || write(fd, data, size) != (ssize_t)size) abort();
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

  cuoptimCase c;
  char error[1024] = "";
  if (cuoptim_case_load(path, &c, error, sizeof error) != 0) {
    check_failure(&c, error, found_bug_input_may_break_lines(data, size));
  } else {
    check_loaded(&c);
    if (small_enough_to_run(&c)) run_case(&c);
    cuoptim_case_free(&c);
  }
  close(fd);
  return 0;
}
