/*
 * test_cases.c — every case under tests/data/cases (generated from real Keras by
 * scripts/gen_reference.py) replayed on each backend and compared with what Keras produced.
 *
 * Each test walks the whole directory and fails at the end listing every failing case with its
 * largest error, so one run shows the full picture instead of the first failure.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "case.h"
#include "testutil.h"

#define DEFAULT_RTOL 1e-5
#define DEFAULT_ATOL 1e-6
/* Host and CUDA run the same per-element math (cuda/rules.h, no FMA contraction); only the order
 * of reductions (norms) may differ, by an ulp or so. */
#define BACKEND_RTOL 1e-6
#define BACKEND_ATOL 1e-7
#define MIN_CASES 40

typedef struct {
  char **paths;
  char **names;
  int n;
} case_list;

static int is_case_file(const struct dirent *e) {
  size_t n = strlen(e->d_name);
  return e->d_name[0] != '.' && n > 5 && strcmp(e->d_name + n - 5, ".json") == 0;
}

/* Every .json file under tests/data/cases, sorted by name. */
static case_list list_cases(void) {
  case_list list = {NULL, NULL, 0};
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", test_data_path("cases"));
  struct dirent **entries = NULL;
  int n = scandir(dir, &entries, is_case_file, alphasort);
  cr_assert(n >= 0, "cannot read the case directory %s", dir);
  list.paths = calloc((size_t)n + 1, sizeof *list.paths);
  list.names = calloc((size_t)n + 1, sizeof *list.names);
  cr_assert(list.paths != NULL && list.names != NULL);
  for (int i = 0; i < n; i++) {
    size_t len = strlen(dir) + strlen(entries[i]->d_name) + 2;
    list.paths[i] = malloc(len);
    cr_assert(list.paths[i] != NULL);
    snprintf(list.paths[i], len, "%s/%s", dir, entries[i]->d_name);
    list.names[i] = strdup(entries[i]->d_name);
    free(entries[i]);
  }
  free(entries);
  list.n = n;
  return list;
}

static void free_cases(case_list *list) {
  for (int i = 0; i < list->n; i++) {
    free(list->paths[i]);
    free(list->names[i]);
  }
  free(list->paths);
  free(list->names);
}

/* A growing text of failures, reported once at the end. */
typedef struct {
  char *text;
  size_t len;
  int count;
} report_t;

static void report_add(report_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void report_add(report_t *r, const char *fmt, ...) {
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  size_t n = strlen(line);
  char *p = realloc(r->text, r->len + n + 2);
  cr_assert(p != NULL);
  r->text = p;
  memcpy(r->text + r->len, line, n);
  r->len += n;
  r->text[r->len++] = '\n';
  r->text[r->len] = '\0';
}

/* Adds every failing group of `cmp` to the report under the case's name. */
static void report_comparison(report_t *r, const char *name, const cuoptimCaseComparison *cmp) {
  r->count++;
  report_add(r, "  %s: max abs err %.3g, max rel err %.3g", name, cmp->max_abs, cmp->max_rel);
  for (int g = 0; g < CUOPTIM_CASE_GROUP_COUNT; g++) {
    if (!cmp->groups[g].compared || cmp->groups[g].pass) continue;
    char line[2048];
    cuoptim_case_format_group(&cmp->groups[g], line, sizeof line);
    report_add(r, "    %s", line);
  }
}

static void report_finish(report_t *r, const char *what, int total) {
  if (r->count > 0) {
    cr_assert_fail("%s: %d of %d cases fail:\n%s", what, r->count, total, r->text);
  }
  free(r->text);
}

/* Replays every case on `backend`; with state_only, compares only the optimizer state. */
static void check_all_cases(cuoptimBackend_t backend, int state_only, const char *what) {
  case_list list = list_cases();
  cr_assert(list.n > 0, "no cases in %s", test_data_path("cases"));
  report_t report = {NULL, 0, 0};
  int compared = 0;
  for (int i = 0; i < list.n; i++) {
    char error[2048];
    cuoptimCase c;
    if (cuoptim_case_load(list.paths[i], &c, error, sizeof error) != 0) {
      report.count++;
      report_add(&report, "  %s: does not load: %s", list.names[i], error);
      continue;
    }
    if (!c.has_expected || (state_only && !c.has_expected_state)) {
      if (!state_only) {
        report.count++;
        report_add(&report, "  %s: has no expected result", list.names[i]);
      }
      cuoptim_case_free(&c);
      continue;
    }
    cuoptimCaseResult r;
    int rc = cuoptim_case_run(&c, backend, &r, error, sizeof error);
    if (rc != 0) {
      report.count++;
      report_add(&report, "  %s: run failed (%s): %s", list.names[i],
                 cuoptimGetStatusString((cuoptimStatus_t)rc), error);
      cuoptim_case_free(&c);
      continue;
    }
    compared++;
    cuoptimCaseComparison cmp;
    cuoptim_case_compare(&c, &r, DEFAULT_RTOL, DEFAULT_ATOL, &cmp);
    if (state_only) {
      const cuoptimCaseGroupComparison *g = &cmp.groups[CUOPTIM_CASE_GROUP_STATE];
      if (!g->pass) {
        char line[2048];
        cuoptim_case_format_group(g, line, sizeof line);
        report.count++;
        report_add(&report, "  %s: %s", list.names[i], line);
      }
    } else if (!cmp.pass) {
      report_comparison(&report, list.names[i], &cmp);
    }
    cuoptim_case_result_free(&r);
    cuoptim_case_free(&c);
  }
  cr_log_info("%s: %d cases compared, %d failing", what, compared, report.count);
  report_finish(&report, what, list.n);
  free_cases(&list);
}

Test(cases, directory_holds_enough_cases) {
  case_list list = list_cases();
  cr_expect(list.n >= MIN_CASES, "%s holds %d case files, expected at least %d (run scripts/gen_reference.py)",
            test_data_path("cases"), list.n, MIN_CASES);
  free_cases(&list);
}

Test(cases, host_matches_keras) {
  check_all_cases(CUOPTIM_BACKEND_HOST, 0, "host backend vs Keras");
}

Test(cases, cuda_matches_keras) {
  if (!test_has_gpu()) cr_skip("no usable CUDA device");
  check_all_cases(CUOPTIM_BACKEND_CUDA, 0, "CUDA backend vs Keras");
}

Test(cases, cases_state_matches_keras_order) {
  check_all_cases(CUOPTIM_BACKEND_HOST, 1, "optimizer state (names, order, values) vs Keras");
}

Test(cases, host_and_cuda_agree) {
  if (!test_has_gpu()) cr_skip("no usable CUDA device");
  case_list list = list_cases();
  report_t report = {NULL, 0, 0};
  for (int i = 0; i < list.n; i++) {
    char error[2048];
    cuoptimCase c;
    if (cuoptim_case_load(list.paths[i], &c, error, sizeof error) != 0) {
      report.count++;
      report_add(&report, "  %s: does not load: %s", list.names[i], error);
      continue;
    }
    cuoptimCaseResult host, cuda;
    int rc = cuoptim_case_run(&c, CUOPTIM_BACKEND_HOST, &host, error, sizeof error);
    if (rc != 0) {
      report.count++;
      report_add(&report, "  %s: host run failed: %s", list.names[i], error);
      cuoptim_case_free(&c);
      continue;
    }
    rc = cuoptim_case_run(&c, CUOPTIM_BACKEND_CUDA, &cuda, error, sizeof error);
    if (rc != 0) {
      report.count++;
      report_add(&report, "  %s: CUDA run failed: %s", list.names[i], error);
    } else {
      cuoptimCaseComparison cmp;
      if (cuoptim_case_compare_results(&c, &cuda, &host, BACKEND_RTOL, BACKEND_ATOL, &cmp) != 0)
        report_comparison(&report, list.names[i], &cmp);
      cuoptim_case_result_free(&cuda);
    }
    cuoptim_case_result_free(&host);
    cuoptim_case_free(&c);
  }
  report_finish(&report, "CUDA vs host backend", list.n);
  free_cases(&list);
}
