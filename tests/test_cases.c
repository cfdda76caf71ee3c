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
#include <unistd.h>

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
    } else if (rc == 0) {
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

/* ---------------------------------------------------------------------------------------------
 * The loader: the optimizer's own text, quoting, state alignment
 * ------------------------------------------------------------------------------------------- */

/* Writes `text` to a new temporary file; its path in path[]. */
static void write_temp_case(const char *text, char *path, size_t path_size) {
  snprintf(path, path_size, "/tmp/cuoptim-case-XXXXXX");
  int fd = mkstemp(path);
  cr_assert(fd >= 0, "mkstemp failed");
  FILE *f = fdopen(fd, "wb");
  cr_assert(f != NULL);
  fputs(text, f);
  fclose(f);
}

/* 0.9000000000000001 is the double after 0.9; cJSON prints it with %1.15g as 0.9, so a case
 * printed back through cJSON gave the library 0.9. The optimizer also sits after members whose
 * strings hold braces, quotes and backslashes, under a key spelled with an escape, with a
 * string escape of its own. */
#define EXACT_OPTIMIZER                                                                             \
  "{\"module\": \"keras.optimizers\",\t\"class_name\": \"SGD\",\n  \"config\": {\"name\": \"sg\\u0064\", " \
  "\"learning_rate\": 0.0010000000000000002, \"momentum\": 0.9000000000000001},  \"registered_name\": null}"

Test(cases, optimizer_reaches_the_library_byte_for_byte) {
  const char *layouts[] = {
      "{\"format\": \"cuoptim-case-1\", \"description\": \"a } { [ \\\" \\\\\", \"source\": \"\\\\\",\n"
      " \"variables\": [{\"name\": \"w\", \"shape\": [1], \"value\": [1.0]}], \"steps\": [[[-0.5]]],\n"
      " \"optimi\\u007aer\" :\n " EXACT_OPTIMIZER "\n}\n",
      /* a byte order mark, the optimizer first */
      "\xEF\xBB\xBF {\"optimizer\":" EXACT_OPTIMIZER ",\"format\":\"cuoptim-case-1\",\"steps\":[],"
      "\"variables\":[{\"name\":\"optimizer\",\"shape\":[],\"value\":2}]}",
  };
  for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
    char path[64], error[2048];
    write_temp_case(layouts[i], path, sizeof path);
    cuoptimCase c;
    int rc = cuoptim_case_load(path, &c, error, sizeof error);
    unlink(path);
    cr_assert_eq(rc, 0, "layout %zu does not load: %s", i, error);
    cr_expect_str_eq(c.optimizer_json, EXACT_OPTIMIZER, "layout %zu", i);
    cuoptimConfig_t want;
    cr_assert_eq(cuoptimConfigFromKerasJSON(&want, EXACT_OPTIMIZER), CUOPTIM_STATUS_SUCCESS, "%s",
                 cuoptimGetLastErrorMessage());
    cr_expect(c.config.momentum == strtod("0.9000000000000001", NULL) && c.config.momentum != 0.9,
              "layout %zu: momentum %.17g", i, c.config.momentum);
    cr_expect(c.config.momentum == want.momentum);
    cr_expect(c.config.learning_rate.initial_learning_rate == want.learning_rate.initial_learning_rate,
              "layout %zu: learning rate %.17g", i, c.config.learning_rate.initial_learning_rate);
    cr_expect_str_eq(c.config.name, "sgd");
    cuoptim_case_free(&c);
  }
}

/* Printed back by cJSON, 1e999 became null: SGD without weight decay. */
Test(cases, infinite_hyperparameter_does_not_load) {
  char path[64], error[2048];
  write_temp_case("{\"format\": \"cuoptim-case-1\", \"optimizer\": {\"class_name\": \"SGD\", \"config\": "
                  "{\"weight_decay\": 1e999}}, \"variables\": [{\"name\": \"w\", \"shape\": [], \"value\": 1}], "
                  "\"steps\": []}",
                  path, sizeof path);
  cuoptimCase c;
  int rc = cuoptim_case_load(path, &c, error, sizeof error);
  unlink(path);
  cr_assert_neq(rc, 0, "a case with weight_decay 1e999 loads (weight decay %g)", c.config.weight_decay);
  cr_expect(strstr(error, "optimizer: ") != NULL && strstr(error, "weight_decay") != NULL, "%s", error);
}

Test(cases, quote_escapes_and_bounds) {
  char out[CUOPTIM_CASE_QUOTED_SIZE];
  cuoptim_case_quote("a\"b\\c\n\t\x1b\x7f\xc2\x9b\xe2\x80\xa8\xff \xc3\xa9", out, sizeof out);
  cr_expect_str_eq(out, "\"a\\\"b\\\\c\\n\\t\\u001b\\u007f\\u009b\\u2028\\xff \xc3\xa9\"");
  /* Cut at CUOPTIM_CASE_QUOTE_BYTES, never inside a character. */
  char text[CUOPTIM_CASE_QUOTE_BYTES + 8];
  memset(text, 'x', CUOPTIM_CASE_QUOTE_BYTES - 1);
  strcpy(text + CUOPTIM_CASE_QUOTE_BYTES - 1, "\xc3\xa9yz");
  cuoptim_case_quote(text, out, sizeof out);
  size_t n = strlen(out);
  cr_expect(n == CUOPTIM_CASE_QUOTE_BYTES - 1 + 5 && strcmp(out + n - 4, "\"...") == 0 && out[n - 5] == 'x', "%s", out);
  /* The worst case fits its buffer; a small buffer gets whole escapes only. */
  char worst[CUOPTIM_CASE_QUOTE_BYTES + 2];
  memset(worst, 0x01, sizeof worst - 1);
  worst[sizeof worst - 1] = '\0';
  cuoptim_case_quote(worst, out, sizeof out);
  cr_expect_eq(strlen(out), (size_t)CUOPTIM_CASE_QUOTE_BYTES * 6 + 5, "%s", out);
  char small[10];
  cuoptim_case_quote("\x01\x02", small, sizeof small);
  cr_expect_str_eq(small, "\"\\u0001");
  cuoptim_case_printable("say \"a\\b\"\n", out, sizeof out);
  cr_expect_str_eq(out, "say \"a\\b\"\\n");
}

/* Entries named `names` (space-separated), entry k holding the value k. */
static void make_state(cuoptimCaseResult *r, const char *names) {
  memset(r, 0, sizeof *r);
  r->has_finalized = 1;
  r->state = calloc(32, sizeof *r->state);
  cr_assert(r->state != NULL);
  char copy[256];
  snprintf(copy, sizeof copy, "%s", names);
  for (char *save = NULL, *name = strtok_r(copy, " ", &save); name != NULL; name = strtok_r(NULL, " ", &save)) {
    cuoptimCaseState *e = &r->state[r->num_state];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->count = 1;
    e->value = malloc(sizeof *e->value);
    cr_assert(e->value != NULL);
    e->value[0] = r->num_state++;
  }
}

/* Entries that differ in name are aligned on the longest common subsequence of the names: what
 * is left over on either side is listed, the rest compared by value. */
Test(cases, state_alignment_lists_missing_and_extra) {
  cuoptimCase c;
  memset(&c, 0, sizeof c);
  static const struct {
    const char *got, *want;
    const char *message;
    size_t compared;
  } cases[] = {
      {"a b c d e", "a c x d e",
       "entries differ from the reference's (5 vs 5); missing the reference's [2] \"x\"; extra [1] \"b\"", 4},
      {"a b", "a b c d e f g",
       "entries differ from the reference's (2 vs 7); missing the reference's [2] \"c\", [3] \"d\", [4] \"e\", "
       "[5] \"f\", ...", 2},
      {"z a b", "a b", "entries differ from the reference's (3 vs 2); extra [0] \"z\"", 2},
      {"a a b", "a b b", NULL, 2}, /* repeated names: either "a" may be the extra one */
      {"c b a", "a b c", NULL, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cuoptimCaseResult got, want;
    make_state(&got, cases[i].got);
    make_state(&want, cases[i].want);
    cuoptimCaseComparison cmp;
    cr_expect_eq(cuoptim_case_compare_results(&c, &got, &want, 0, 1e9, &cmp), 1, "%s vs %s", cases[i].got,
                 cases[i].want);
    const cuoptimCaseGroupComparison *g = &cmp.groups[CUOPTIM_CASE_GROUP_STATE];
    if (cases[i].message != NULL) cr_expect_str_eq(g->message, cases[i].message, "%s vs %s", cases[i].got, cases[i].want);
    cr_expect_eq(g->count, cases[i].compared, "%s vs %s: %zu values compared (%s)", cases[i].got, cases[i].want,
                 g->count, g->message);
    cuoptim_case_result_free(&got);
    cuoptim_case_result_free(&want);
  }
}
