/*
 * test_replay_cli.c — the cuoptim-replay command line: exit statuses (0 done / within tolerance,
 * 1 beyond tolerance, 2 bad usage or input), its output, and a one-line message for every
 * malformed file under tests/data/bad/.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "case.h"
#include "testutil.h"

#ifndef CUOPTIM_REPLAY_PATH
#error "CUOPTIM_REPLAY_PATH must name the built cuoptim-replay"
#endif

/* A reference case that exercises the plain path (no slots beyond iteration/learning_rate). */
#define REFERENCE_CASE "cases/sgd_defaults.json"

typedef struct {
  int status; /* exit status, or -1 when the program did not exit normally */
  char *out;  /* stdout */
  char *err;  /* stderr */
} run_result;

static char tmpdir[256];

static void make_tmpdir(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/cuoptim-replay-test-XXXXXX");
  cr_assert(mkdtemp(tmpdir) != NULL, "mkdtemp failed");
}

static void remove_tmpdir(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) cr_log_warn("could not remove %s", tmpdir);
}

TestSuite(replay_cli, .init = make_tmpdir, .fini = remove_tmpdir);

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  cr_assert(f != NULL, "cannot open %s", path);
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  size_t got;
  while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += got;
    if (len + 1 >= cap) {
      cap *= 2;
      buf = realloc(buf, cap);
      cr_assert(buf != NULL);
    }
  }
  buf[len] = '\0';
  fclose(f);
  return buf;
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  cr_assert(f != NULL, "cannot write %s", path);
  fputs(text, f);
  fclose(f);
}

/* A shell prefix that makes the replay fail any allocation beyond 1 GiB. An address-space limit
 * does it, except under AddressSanitizer, which reserves terabytes of shadow memory at start; its
 * own per-allocation limit does it there (ASAN_OPTIONS from the environment kept). */
#ifdef CUOPTIM_TEST_SANITIZED
#define MEMORY_LIMIT_1GIB "ASAN_OPTIONS=\"$ASAN_OPTIONS:max_allocation_size_mb=1024:allocator_may_return_null=1\""
#else
#define MEMORY_LIMIT_1GIB "ulimit -v 1048576;"
#endif

/* Runs cuoptim-replay with `args` (already shell-quoted where needed), after the shell commands
 * `prefix` ("" or e.g. "ulimit -v N;"). */
static run_result replay_after(const char *prefix, const char *args) {
  char out_path[512], err_path[512], cmd[4096];
  snprintf(out_path, sizeof out_path, "%s/stdout", tmpdir);
  snprintf(err_path, sizeof err_path, "%s/stderr", tmpdir);
  snprintf(cmd, sizeof cmd, "%s '%s' %s >'%s' 2>'%s'", prefix, CUOPTIM_REPLAY_PATH, args, out_path, err_path);
  int raw = system(cmd);
  run_result r;
  r.status = (raw != -1 && WIFEXITED(raw)) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  return r;
}

static run_result replay(const char *args) { return replay_after("", args); }

static void free_result(run_result *r) {
  free(r->out);
  free(r->err);
}

static int count_lines(const char *s) {
  int n = 0;
  for (; *s; s++)
    if (*s == '\n') n++;
  return n;
}

/* Exit status 2 with exactly one line on stderr (containing `needle` when given) and nothing on
 * stdout. */
static void expect_input_error(const char *args, const char *needle) {
  run_result r = replay(args);
  cr_expect_eq(r.status, 2, "cuoptim-replay %s: exit status %d, expected 2 (stderr: %s)", args, r.status, r.err);
  cr_expect_eq(count_lines(r.err), 1, "cuoptim-replay %s: expected a one-line message, stderr: \"%s\"", args, r.err);
  cr_expect(strlen(r.err) > 20, "cuoptim-replay %s: message too short: \"%s\"", args, r.err);
  if (needle != NULL)
    cr_expect(strstr(r.err, needle) != NULL, "cuoptim-replay %s: message \"%s\" does not mention \"%s\"", args,
              r.err, needle);
  cr_expect_eq(r.out[0], '\0', "cuoptim-replay %s: unexpected stdout \"%s\"", args, r.out);
  free_result(&r);
}

static cJSON *load_json(const char *path) {
  char *text = slurp(path);
  cJSON *json = cJSON_Parse(text);
  cr_assert(json != NULL, "%s does not parse", path);
  free(text);
  return json;
}

static void save_json(const char *path, const cJSON *json) {
  char *text = cJSON_Print(json);
  cr_assert(text != NULL);
  write_text(path, text);
  cJSON_free(text);
}

/* The element of expected.variables with the largest magnitude, multiplied by (1 + rel). */
static void perturb_largest_expected(cJSON *root, double rel, char *where, size_t where_size) {
  cJSON *vars = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "expected"), "variables");
  cr_assert(cJSON_IsArray(vars));
  cJSON *best = NULL;
  int best_v = -1, best_i = -1, v = 0;
  cJSON *arr;
  cJSON_ArrayForEach(arr, vars) {
    int i = 0;
    cJSON *x;
    cJSON_ArrayForEach(x, arr) {
      if (cJSON_IsNumber(x) && (best == NULL || fabs(x->valuedouble) > fabs(best->valuedouble))) {
        best = x;
        best_v = v;
        best_i = i;
      }
      i++;
    }
    v++;
  }
  cr_assert(best != NULL && best->valuedouble != 0);
  cJSON_SetNumberValue(best, best->valuedouble * (1 + rel));
  cJSON *name = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "variables"), best_v), "name");
  /* Single-element variables are reported by name alone. */
  if (cJSON_GetArraySize(cJSON_GetArrayItem(vars, best_v)) == 1)
    snprintf(where, where_size, "%s", name->valuestring);
  else
    snprintf(where, where_size, "%s[%d]", name->valuestring, best_i);
}

/* ---------------------------------------------------------------------------------------------
 * Good input
 * ------------------------------------------------------------------------------------------- */

Test(replay_cli, help_exits_0) {
  run_result r = replay("--help");
  cr_expect_eq(r.status, 0);
  cr_expect(strstr(r.out, "usage:") != NULL && strstr(r.out, "--check") != NULL, "usage text: %s", r.out);
  free_result(&r);
}

Test(replay_cli, check_on_reference_case_passes) {
  char args[4200];
  snprintf(args, sizeof args, "--check '%s'", test_data_path(REFERENCE_CASE));
  run_result r = replay(args);
  cr_expect_eq(r.status, 0, "exit %d; stdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
  cr_expect(strstr(r.out, "iterations: ") != NULL, "%s", r.out);
  cr_expect(strstr(r.out, "variables: ") != NULL, "%s", r.out);
  cr_expect(strstr(r.out, "max abs err") != NULL && strstr(r.out, "max rel err") != NULL, "%s", r.out);
  size_t n = strlen(r.out);
  cr_expect(n >= 5 && strcmp(r.out + n - 5, "PASS\n") == 0, "last line is not PASS:\n%s", r.out);
  free_result(&r);
}

Test(replay_cli, perturbed_expected_fails_with_status_1) {
  cJSON *root = load_json(test_data_path(REFERENCE_CASE));
  char where[256], path[512], args[600];
  perturb_largest_expected(root, 1e-3, where, sizeof where);
  snprintf(path, sizeof path, "%s/perturbed.json", tmpdir);
  save_json(path, root);
  cJSON_Delete(root);

  snprintf(args, sizeof args, "--check '%s'", path);
  run_result r = replay(args);
  cr_expect_eq(r.status, 1, "exit %d; stdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
  size_t n = strlen(r.out);
  cr_expect(n >= 5 && strcmp(r.out + n - 5, "FAIL\n") == 0, "last line is not FAIL:\n%s", r.out);
  cr_expect(strstr(r.out, where) != NULL, "the report does not point at %s:\n%s", where, r.out);
  free_result(&r);

  /* The same case passes when the tolerance covers the change. */
  snprintf(args, sizeof args, "--check --rtol 2e-3 '%s'", path);
  r = replay(args);
  cr_expect_eq(r.status, 0, "with --rtol 2e-3: exit %d\n%s", r.status, r.out);
  free_result(&r);
}

/* A small case covering a scalar, a null gradient and non-finite inputs; its own output, used as
 * `expected`, must pass --check exactly (%.9g round-trips float32). */
static const char *SMALL_CASE =
    "{\"format\": \"cuoptim-case-1\", \"source\": \"test_replay_cli.c\", \"description\": \"small\",\n"
    " \"optimizer\": {\"module\": \"keras.optimizers\", \"class_name\": \"Adam\", \"config\": {\"name\": \"adam\",\n"
    "   \"learning_rate\": 0.01, \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null,\n"
    "   \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null,\n"
    "   \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null, \"beta_1\": 0.9, \"beta_2\": 0.999,\n"
    "   \"epsilon\": 1e-07, \"amsgrad\": false}, \"registered_name\": null},\n"
    " \"variables\": [{\"name\": \"w\", \"shape\": [2, 2], \"value\": [0.1, -0.2, 0.3, 0.7]},\n"
    "               {\"name\": \"s\", \"shape\": [], \"value\": [1.5]},\n"
    "               {\"name\": \"n\", \"shape\": [3], \"value\": [1.0, 2.0, 3.0]}],\n"
    " \"steps\": [[[0.5, -1.0, 0.25, 3.0], [0.1], [\"nan\", \"inf\", \"-inf\"]],\n"
    "           [[0.4, -0.9, 0.2, 2.5], null, [1.0, 1.0, 1.0]],\n"
    "           [[0.3, -0.8, 0.1, 2.0], [-0.2], null]]}\n";

Test(replay_cli, output_is_json_and_round_trips) {
  char path[512], args[600];
  snprintf(path, sizeof path, "%s/small.json", tmpdir);
  write_text(path, SMALL_CASE);
  snprintf(args, sizeof args, "'%s'", path);
  run_result r = replay(args);
  cr_assert_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
  cr_expect_eq(count_lines(r.out), 1, "expected one line of JSON:\n%s", r.out);
  cJSON *out = cJSON_Parse(r.out);
  cr_assert(out != NULL, "the output is not JSON: %s", r.out);
  cJSON *it = cJSON_GetObjectItem(out, "iterations");
  cr_expect(cJSON_IsNumber(it) && it->valuedouble == 3, "iterations: %s", r.out);
  cJSON *vars = cJSON_GetObjectItem(out, "variables");
  cr_assert(cJSON_IsArray(vars) && cJSON_GetArraySize(vars) == 3, "%s", r.out);
  const char *names[] = {"w", "s", "n"};
  const int sizes[] = {4, 1, 3};
  for (int v = 0; v < 3; v++) {
    cJSON *var = cJSON_GetArrayItem(vars, v);
    cr_expect_str_eq(cJSON_GetObjectItem(var, "name")->valuestring, names[v]);
    cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItem(var, "value")), sizes[v]);
  }
  /* A NaN or infinite gradient makes its variable non-finite, written as strings. */
  cJSON *n_value = cJSON_GetObjectItem(cJSON_GetArrayItem(vars, 2), "value");
  for (int i = 0; i < 3; i++) {
    cJSON *x = cJSON_GetArrayItem(n_value, i);
    cr_expect(cJSON_IsString(x) && (strcmp(x->valuestring, "nan") == 0 || strcmp(x->valuestring, "inf") == 0 ||
                                    strcmp(x->valuestring, "-inf") == 0),
              "n[%d] should be written as \"nan\", \"inf\" or \"-inf\": %s", i, r.out);
  }
  cr_expect(strstr(r.out, "\"nan\"") != NULL, "no \"nan\" in %s", r.out);
  free_result(&r);

  /* The output as `expected`: --check passes with zero error, even with zero tolerance. */
  cJSON *root = cJSON_Parse(SMALL_CASE);
  cr_assert(root != NULL);
  cJSON *expected = cJSON_CreateObject();
  cJSON_AddNumberToObject(expected, "iterations", it->valuedouble);
  cJSON *values = cJSON_AddArrayToObject(expected, "variables");
  cJSON *var;
  cJSON_ArrayForEach(var, vars) cJSON_AddItemToArray(values, cJSON_Duplicate(cJSON_GetObjectItem(var, "value"), 1));
  cJSON_AddItemToObject(root, "expected", expected);
  snprintf(path, sizeof path, "%s/small_expected.json", tmpdir);
  save_json(path, root);
  snprintf(args, sizeof args, "--check --rtol 0 --atol 0 '%s'", path);
  r = replay(args);
  cr_expect_eq(r.status, 0, "exit %d\n%s%s", r.status, r.out, r.err);
  cr_expect(strstr(r.out, "max abs err 0,") != NULL, "%s", r.out);
  free_result(&r);

  /* One expected value changed by 1e-3 relative: beyond the default tolerance. */
  char where[256];
  perturb_largest_expected(root, 1e-3, where, sizeof where);
  save_json(path, root);
  snprintf(args, sizeof args, "--check '%s'", path);
  r = replay(args);
  cr_expect_eq(r.status, 1, "exit %d\n%s%s", r.status, r.out, r.err);
  cr_expect(strstr(r.out, where) != NULL, "the report does not point at %s:\n%s", where, r.out);
  free_result(&r);

  /* --quiet leaves only the verdict. */
  snprintf(args, sizeof args, "--check --quiet '%s'", path);
  r = replay(args);
  cr_expect_eq(r.status, 1);
  cr_expect_str_eq(r.out, "FAIL\n");
  free_result(&r);
  cJSON_Delete(root);
  cJSON_Delete(out);
}

/* ---------------------------------------------------------------------------------------------
 * Bad input: exit 2 and a one-line message
 * ------------------------------------------------------------------------------------------- */

/* Every file under tests/data/bad/ and a phrase its message must contain. */
static const struct {
  const char *file;
  const char *needle;
} BAD_FILES[] = {
    {"not_json.json", "not valid JSON"},
    {"truncated.json", "not valid JSON"},
    {"wrong_format.json", "format"},
    {"value_length.json", "variables[0].value: expected 6 numbers, got 5"},
    {"step_gradient_count.json", "steps[1]: expected 2 gradients"},
    {"gradient_length.json", "steps[0][1]: expected 3 numbers, got 4"},
    {"unknown_optimizer_class.json", "SuperAdam"},
    {"unknown_optimizer_key.json", "betta_1"},
    {"non_number_value.json", "variables[1].value[2]"},
    {"expected_length.json", "expected.variables[1]: expected 3 numbers, got 2"},
    {"no_expected.json", "expected"}, /* only with --check */
};

Test(replay_cli, each_bad_file_exits_2_with_a_message) {
  for (size_t i = 0; i < sizeof BAD_FILES / sizeof BAD_FILES[0]; i++) {
    char rel[256], args[4200];
    snprintf(rel, sizeof rel, "bad/%s", BAD_FILES[i].file);
    snprintf(args, sizeof args, "--check '%s'", test_data_path(rel));
    expect_input_error(args, BAD_FILES[i].needle);
  }
}

Test(replay_cli, every_file_under_bad_is_covered) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", test_data_path("bad"));
  DIR *d = opendir(dir);
  cr_assert(d != NULL, "cannot open %s", dir);
  struct dirent *e;
  int files = 0;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    files++;
    int listed = 0;
    for (size_t i = 0; i < sizeof BAD_FILES / sizeof BAD_FILES[0]; i++)
      if (strcmp(BAD_FILES[i].file, e->d_name) == 0) listed = 1;
    cr_expect(listed, "tests/data/bad/%s has no entry in BAD_FILES", e->d_name);
  }
  closedir(d);
  cr_expect_eq(files, (int)(sizeof BAD_FILES / sizeof BAD_FILES[0]));
}

Test(replay_cli, case_without_expected_runs_without_check) {
  char args[4200];
  snprintf(args, sizeof args, "'%s'", test_data_path("bad/no_expected.json"));
  run_result r = replay(args);
  cr_expect_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
  cr_expect(strstr(r.out, "\"iterations\": 2") != NULL, "%s", r.out);
  free_result(&r);
}

Test(replay_cli, unknown_flag_exits_2) {
  char args[4200];
  snprintf(args, sizeof args, "--frobnicate '%s'", test_data_path(REFERENCE_CASE));
  expect_input_error(args, "--frobnicate");
}

Test(replay_cli, missing_file_exits_2) {
  char args[600];
  snprintf(args, sizeof args, "--check '%s/no_such_case.json'", tmpdir);
  expect_input_error(args, "no_such_case.json");
}

Test(replay_cli, bad_usage_exits_2) {
  char args[4200];
  expect_input_error("", "no case file");
  expect_input_error("--check", "no case file");
  snprintf(args, sizeof args, "--rtol abc '%s'", test_data_path(REFERENCE_CASE));
  expect_input_error(args, "--rtol");
  snprintf(args, sizeof args, "--atol -1 '%s'", test_data_path(REFERENCE_CASE));
  expect_input_error(args, "--atol");
  snprintf(args, sizeof args, "--backend tpu '%s'", test_data_path(REFERENCE_CASE));
  expect_input_error(args, "--backend");
  snprintf(args, sizeof args, "'%s' '%s'", test_data_path(REFERENCE_CASE), test_data_path(REFERENCE_CASE));
  expect_input_error(args, "more than one");
}

/* ---------------------------------------------------------------------------------------------
 * rank_steps outside mpirun (tests/test_ranks.c runs them under mpirun)
 * ------------------------------------------------------------------------------------------- */

/* bad/no_expected.json (variables kernel [2,3] and bias [3], 2 steps, one null gradient) with
 * rank_steps for `num_ranks` ranks: rank r's gradients are the step's times 2^r (exact);
 * `keep_steps` 0 drops "steps". Written to tmpdir/name; the path in `path`. */
static void write_rank_case(const char *name, int num_ranks, int keep_steps, char *path, size_t size) {
  snprintf(path, size, "%s/%s", tmpdir, name);
  cJSON *root = load_json(test_data_path("bad/no_expected.json"));
  cJSON *steps = cJSON_GetObjectItem(root, "steps");
  cJSON *rank_steps = cJSON_CreateArray();
  cJSON *step;
  cJSON_ArrayForEach(step, steps) {
    cJSON *per_rank = cJSON_CreateArray();
    for (int r = 0; r < num_ranks; r++) {
      cJSON *grads = cJSON_Duplicate(step, 1);
      cJSON *grad;
      cJSON_ArrayForEach(grad, grads) {
        cJSON *x;
        cJSON_ArrayForEach(x, grad) cJSON_SetNumberValue(x, x->valuedouble * (1 << r));
      }
      cJSON_AddItemToArray(per_rank, grads);
    }
    cJSON_AddItemToArray(rank_steps, per_rank);
  }
  cJSON_AddItemToObject(root, "rank_steps", rank_steps);
  if (!keep_steps) cJSON_DeleteItemFromObject(root, "steps");
  save_json(path, root);
  cJSON_Delete(root);
}

Test(replay_cli, rank_steps_alone_need_mpirun) {
  char path[512], args[600];
  write_rank_case("ranks_only.json", 3, 0, path, sizeof path);
  snprintf(args, sizeof args, "'%s'", path);
  expect_input_error(args, "the case has only rank_steps (a data-parallel run of 3 ranks): run it with mpirun -np 3");
}

/* Without mpirun a case with both runs its steps, exactly as without rank_steps. */
Test(replay_cli, rank_steps_beside_steps_run_the_steps) {
  char path[512], args[600];
  write_rank_case("ranks_and_steps.json", 2, 1, path, sizeof path);
  snprintf(args, sizeof args, "--state '%s'", path);
  run_result with = replay(args);
  snprintf(args, sizeof args, "--state '%s'", test_data_path("bad/no_expected.json"));
  run_result without = replay(args);
  cr_expect_eq(with.status, 0, "exit %d, stderr: %s", with.status, with.err);
  cr_expect_eq(without.status, 0, "exit %d, stderr: %s", without.status, without.err);
  cr_expect_str_eq(with.out, without.out);
  cr_expect_str_eq(with.err, "");
  free_result(&with);
  free_result(&without);
}

Test(replay_cli, rank_options_need_mpirun) {
  char args[4200];
  snprintf(args, sizeof args, "--shard '%s'", test_data_path(REFERENCE_CASE));
  expect_input_error(args, "--shard: it concerns the ranks of a data-parallel run: start cuoptim-replay under mpirun");
  snprintf(args, sizeof args, "--no-aggregate '%s'", test_data_path(REFERENCE_CASE));
  expect_input_error(args, "--no-aggregate: it concerns the ranks of a data-parallel run");
  snprintf(args, sizeof args, "--timeout -1 '%s'", test_data_path(REFERENCE_CASE));
  expect_input_error(args, "--timeout");
}

/* Malformed rank_steps: exit 2 and the JSON path of the problem. `edit` changes the parsed case. */
static void expect_bad_rank_steps(const char *label, void (*edit)(cJSON *root), const char *needle) {
  char path[512], args[600];
  write_rank_case("bad_ranks.json", 2, 1, path, sizeof path);
  cJSON *root = load_json(path);
  edit(root);
  save_json(path, root);
  cJSON_Delete(root);
  snprintf(args, sizeof args, "'%s'", path);
  cr_log_info("%s", label);
  expect_input_error(args, needle);
}

static cJSON *rank_steps_of(cJSON *root) { return cJSON_GetObjectItem(root, "rank_steps"); }

static void rank_steps_not_array(cJSON *root) {
  cJSON_ReplaceItemInObject(root, "rank_steps", cJSON_CreateNumber(3));
}
static void rank_steps_empty(cJSON *root) { cJSON_ReplaceItemInObject(root, "rank_steps", cJSON_CreateArray()); }
static void no_ranks_in_step_0(cJSON *root) { cJSON_ReplaceItemInArray(rank_steps_of(root), 0, cJSON_CreateArray()); }
static void step_not_array(cJSON *root) { cJSON_ReplaceItemInArray(rank_steps_of(root), 1, cJSON_CreateNull()); }
static void step_has_fewer_ranks(cJSON *root) {
  cJSON_DeleteItemFromArray(cJSON_GetArrayItem(rank_steps_of(root), 1), 1);
}
static void rank_has_one_gradient(cJSON *root) {
  cJSON_DeleteItemFromArray(cJSON_GetArrayItem(cJSON_GetArrayItem(rank_steps_of(root), 1), 1), 0);
}
static void gradient_too_long(cJSON *root) {
  cJSON *grad = cJSON_GetArrayItem(cJSON_GetArrayItem(cJSON_GetArrayItem(rank_steps_of(root), 0), 1), 1);
  cJSON_AddItemToArray(grad, cJSON_CreateNumber(1));
}
static void gradient_is_string(cJSON *root) {
  cJSON *per_rank = cJSON_GetArrayItem(cJSON_GetArrayItem(rank_steps_of(root), 1), 0);
  cJSON_ReplaceItemInArray(per_rank, 0, cJSON_CreateString("x"));
}
static void element_not_number(cJSON *root) {
  cJSON *grad = cJSON_GetArrayItem(cJSON_GetArrayItem(cJSON_GetArrayItem(rank_steps_of(root), 1), 1), 0);
  cJSON_ReplaceItemInArray(grad, 4, cJSON_CreateTrue());
}
static void neither_steps(cJSON *root) {
  cJSON_DeleteItemFromObject(root, "steps");
  cJSON_DeleteItemFromObject(root, "rank_steps");
}

Test(replay_cli, malformed_rank_steps_exit_2_naming_the_json_path) {
  expect_bad_rank_steps("not an array", rank_steps_not_array, "rank_steps: expected an array of steps");
  expect_bad_rank_steps("no steps", rank_steps_empty, "rank_steps: expected at least one step, got an empty array");
  expect_bad_rank_steps("no ranks", no_ranks_in_step_0, "rank_steps[0]: expected the gradients of at least one rank");
  expect_bad_rank_steps("step not an array", step_not_array,
                        "rank_steps[1]: expected an array with the gradients of each of the 2 ranks, got null");
  expect_bad_rank_steps("fewer ranks", step_has_fewer_ranks,
                        "rank_steps[1]: expected the gradients of 2 ranks (as rank_steps[0]), got 1");
  expect_bad_rank_steps("one gradient", rank_has_one_gradient,
                        "rank_steps[1][1]: expected 2 gradients (one per variable, null for none), got 1");
  expect_bad_rank_steps("too long", gradient_too_long, "rank_steps[0][1][1]: expected 3 numbers, got 4");
  expect_bad_rank_steps("string", gradient_is_string,
                        "rank_steps[1][0][0]: expected null or an array of 6 numbers (gradient of \"kernel\")");
  expect_bad_rank_steps("boolean", element_not_number, "rank_steps[1][1][0][4]: expected a number, got a boolean");
  expect_bad_rank_steps("neither", neither_steps, "steps: missing (and no rank_steps)");
}

/* The loader keeps rank r's gradients of step s as rank_steps[r][s], each the file's values. */
Test(replay_cli, loader_stores_each_ranks_gradients) {
  char path[512], error[2048];
  write_rank_case("ranks_loaded.json", 3, 0, path, sizeof path);
  cuoptimCase c;
  cr_assert_eq(cuoptim_case_load(path, &c, error, sizeof error), 0, "%s", error);
  cr_expect(!c.has_steps);
  cr_expect(c.has_rank_steps);
  cr_expect_eq(c.num_ranks, 3);
  cr_expect_eq(c.num_rank_steps, 2);
  cuoptimCase plain;
  cr_assert_eq(cuoptim_case_load(test_data_path("bad/no_expected.json"), &plain, error, sizeof error), 0, "%s", error);
  for (int r = 0; r < 3; r++)
    for (int s = 0; s < 2; s++)
      for (int v = 0; v < 2; v++) {
        const float *want = plain.steps[s][v], *got = c.rank_steps[r][s][v];
        cr_expect_eq(got == NULL, want == NULL, "rank_steps[%d][%d][%d]: null or not as steps[%d][%d]", s, r, v, s, v);
        for (size_t i = 0; got != NULL && want != NULL && i < c.variables[v].count; i++)
          cr_expect_eq(got[i], want[i] * (float)(1 << r), "rank_steps[%d][%d][%d][%zu]", s, r, v, i);
      }
  /* A case without steps runs only with steps given (the ranks'). */
  cuoptimCaseResult result;
  cr_expect_eq(cuoptim_case_run(&c, CUOPTIM_BACKEND_HOST, &result, error, sizeof error), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect(strstr(error, "no \"steps\", only rank_steps for 3 ranks") != NULL, "%s", error);
  cuoptim_case_free(&plain);
  cuoptim_case_free(&c);
}

Test(replay_cli, cuda_backend_without_gpu_exits_2) {
  if (test_has_gpu()) cr_skip("a GPU is present; cases_cuda covers the CUDA backend");
  char args[4200];
  snprintf(args, sizeof args, "--backend cuda --check '%s'", test_data_path(REFERENCE_CASE));
  expect_input_error(args, "GPU");
}

Test(replay_cli, cuda_backend_with_gpu_passes) {
  if (!test_has_gpu()) cr_skip("no usable CUDA device");
  char args[4200];
  snprintf(args, sizeof args, "--backend cuda --check '%s'", test_data_path(REFERENCE_CASE));
  run_result r = replay(args);
  cr_expect_eq(r.status, 0, "exit %d\n%s%s", r.status, r.out, r.err);
  free_result(&r);
}

/* ---------------------------------------------------------------------------------------------
 * The optimizer reaches the library as the file writes it
 * ------------------------------------------------------------------------------------------- */

/* A one-variable SGD case; `config_extra` goes into the optimizer's config. */
static void write_sgd_case(const char *path, const char *config_extra) {
  char text[2048];
  snprintf(text, sizeof text,
           "{\"format\": \"cuoptim-case-1\",\n"
           " \"optimizer\": {\"module\": \"keras.optimizers\", \"class_name\": \"SGD\",\n"
           "   \"config\": {\"name\": \"sgd\", \"learning_rate\": 0.01%s}, \"registered_name\": null},\n"
           " \"variables\": [{\"name\": \"w\", \"shape\": [2], \"value\": [0.5, -0.5]}],\n"
           " \"steps\": [[[0.25, 0.125]]]}\n",
           config_extra);
  write_text(path, text);
}

/* Printed back by cJSON, 1e999 became null (None): the case ran without weight decay. */
Test(replay_cli, infinite_hyperparameter_is_refused) {
  static const struct {
    const char *extra;
    const char *needle;
  } cases[] = {
      {", \"weight_decay\": 1e999", "weight_decay"},
      {", \"clipnorm\": 1E+999", "clipnorm"},
      {", \"momentum\": -1e999", "momentum"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char path[512], args[600];
    snprintf(path, sizeof path, "%s/infinite_%zu.json", tmpdir, i);
    write_sgd_case(path, cases[i].extra);
    snprintf(args, sizeof args, "'%s'", path);
    expect_input_error(args, cases[i].needle);
  }
  /* The same case with a finite value runs. */
  char path[512], args[600];
  snprintf(path, sizeof path, "%s/finite.json", tmpdir);
  write_sgd_case(path, ", \"weight_decay\": 1e9");
  snprintf(args, sizeof args, "'%s'", path);
  run_result r = replay(args);
  cr_expect_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
  free_result(&r);
}

/* ---------------------------------------------------------------------------------------------
 * Messages stay on one line whatever the input holds
 * ------------------------------------------------------------------------------------------- */

/* Exit 2 and one printable line on stderr: no control byte but its final newline, no DEL, and
 * (when given) `escaped` written out in it. */
static void expect_printable_error(const char *args, const char *escaped) {
  run_result r = replay(args);
  cr_expect_eq(r.status, 2, "%s: exit status %d, expected 2 (stderr: %s)", args, r.status, r.err);
  size_t n = strlen(r.err);
  cr_expect(n > 1 && r.err[n - 1] == '\n', "%s: stderr does not end with a newline: \"%s\"", args, r.err);
  for (size_t i = 0; i + 1 < n; i++)
    cr_expect((unsigned char)r.err[i] >= 0x20 && (unsigned char)r.err[i] != 0x7f,
              "%s: stderr holds the raw byte 0x%02x at %zu: \"%s\"", args, (unsigned char)r.err[i], i, r.err);
  if (escaped != NULL)
    cr_expect(strstr(r.err, escaped) != NULL, "%s: stderr does not show %s: \"%s\"", args, escaped, r.err);
  free_result(&r);
}

Test(replay_cli, messages_escape_control_bytes_of_the_input) {
  /* Each case file is JSON text: \n and \u001b are JSON escapes that cJSON turns into the bytes. */
  static const struct {
    const char *file;
    const char *escaped; /* how the message must show the bytes */
  } cases[] = {
      /* a variable name, repeated */
      {"{\"format\": \"cuoptim-case-1\", \"optimizer\": {\"class_name\": \"SGD\", \"config\": {}},\n"
       " \"variables\": [{\"name\": \"a\\n\\u001b[31mb\", \"shape\": [], \"value\": 1},\n"
       "               {\"name\": \"a\\n\\u001b[31mb\", \"shape\": [], \"value\": 2}], \"steps\": []}",
       "\"a\\n\\u001b[31mb\""},
      /* an unknown key at the top */
      {"{\"format\": \"cuoptim-case-1\", \"k\\n\\u001b]0;x\\u0007\": 1}", "\"k\\n\\u001b]0;x\\u0007\""},
      /* an unknown key of a variable */
      {"{\"format\": \"cuoptim-case-1\", \"optimizer\": {\"class_name\": \"SGD\", \"config\": {}},\n"
       " \"variables\": [{\"name\": \"w\", \"shape\": [], \"value\": 1, \"\\r\\u001b[2K\\u007f\": 0}], \"steps\": []}",
       "\"\\r\\u001b[2K\\u007f\""},
      /* a string where a number belongs */
      {"{\"format\": \"cuoptim-case-1\", \"optimizer\": {\"class_name\": \"SGD\", \"config\": {}},\n"
       " \"variables\": [{\"name\": \"w\", \"shape\": [2], \"value\": [1, \"x\\ny\\u009b\"]}], \"steps\": []}",
       "\"x\\ny\\u009b\""},
      /* the format string */
      {"{\"format\": \"cuoptim-case-1\\n\\u001b\"}", "\"cuoptim-case-1\\n\\u001b\""},
      /* an unknown key of the optimizer's config: the library's message echoes it */
      {"{\"format\": \"cuoptim-case-1\", \"optimizer\": {\"class_name\": \"SGD\", \"config\": {\"x\\ny\\u001b\": 1}},\n"
       " \"variables\": [{\"name\": \"w\", \"shape\": [], \"value\": 1}], \"steps\": []}",
       NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char path[512], args[600];
    snprintf(path, sizeof path, "%s/control_%zu.json", tmpdir, i);
    write_text(path, cases[i].file);
    snprintf(args, sizeof args, "'%s'", path);
    expect_printable_error(args, cases[i].escaped);
  }
  /* A case path and an argument holding a newline and an escape. */
  char args[600];
  snprintf(args, sizeof args, "'%s/no\nsuch\033[1m.json'", tmpdir);
  expect_printable_error(args, "no\\nsuch\\u001b[1m.json");
  expect_printable_error("--backend 'x\ny' case.json", "\"x\\ny\"");
  expect_printable_error("'--x\n\033[31m' case.json", "\"--x\\n\\u001b[31m\"");
}

/* A name longer than a message shows is cut, and says so. */
Test(replay_cli, messages_bound_the_input_they_quote) {
  char name[121], text[1024], path[512], args[600];
  memset(name, 'n', sizeof name - 1);
  name[sizeof name - 1] = '\0';
  snprintf(text, sizeof text,
           "{\"format\": \"cuoptim-case-1\", \"optimizer\": {\"class_name\": \"SGD\", \"config\": {}},\n"
           " \"variables\": [{\"name\": \"%s\", \"shape\": [], \"value\": 1}, {\"name\": \"%s\", \"shape\": [],"
           " \"value\": 2}], \"steps\": []}",
           name, name);
  snprintf(path, sizeof path, "%s/long_name.json", tmpdir);
  write_text(path, text);
  snprintf(args, sizeof args, "'%s'", path);
  run_result r = replay(args);
  cr_expect_eq(r.status, 2);
  cr_expect(strstr(r.err, name) == NULL, "the whole name is in the message: %s", r.err);
  cr_expect(strstr(r.err, "nnnnnnnnnn\"... is also the name of variables[0]") != NULL, "%s", r.err);
  free_result(&r);
}

/* ---------------------------------------------------------------------------------------------
 * --check on a large case
 * ------------------------------------------------------------------------------------------- */

#define LARGE_VARIABLES 20000

/* SGD with momentum: one state entry per variable, after "iteration" and "learning_rate". */
static void write_large_case(const char *path) {
  FILE *f = fopen(path, "wb");
  cr_assert(f != NULL, "cannot write %s", path);
  fputs("{\"format\": \"cuoptim-case-1\", \"optimizer\": {\"module\": \"keras.optimizers\", \"class_name\": \"SGD\", "
        "\"config\": {\"name\": \"sgd\", \"learning_rate\": 0.01, \"momentum\": 0.9}, \"registered_name\": null},\n"
        "\"variables\": [",
        f);
  for (int v = 0; v < LARGE_VARIABLES; v++)
    fprintf(f, "%s{\"name\": \"v%d\", \"shape\": [1], \"value\": [%d.5]}", v ? ", " : "", v, v % 7);
  fputs("],\n\"steps\": [[", f);
  for (int v = 0; v < LARGE_VARIABLES; v++) fprintf(f, "%s[0.%d]", v ? ", " : "", 1 + v % 9);
  fputs("]]}\n", f);
  fclose(f);
}

/* The alignment of state entries whose names differ took a table of (n+1) x (m+1) integers:
 * 20,000 variables took 1.6 GB and many seconds. Under a 1 GiB address-space limit it must still
 * list what is missing and compare the values of the rest. */
Test(replay_cli, check_aligns_20000_state_entries_in_little_time_and_memory, .timeout = 20) {
  char path[512], args[600];
  snprintf(path, sizeof path, "%s/large.json", tmpdir);
  write_large_case(path);
  snprintf(args, sizeof args, "--state '%s'", path);
  run_result r = replay(args);
  cr_assert_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
  cJSON *out = cJSON_Parse(r.out);
  cr_assert(out != NULL, "the output is not JSON");
  free_result(&r);

  /* Expected: the run's own result, with one state entry left out and one value changed. */
  cJSON *state = cJSON_DetachItemFromObject(out, "optimizer_variables");
  cr_assert(cJSON_GetArraySize(state) == LARGE_VARIABLES + 2, "%d state entries", cJSON_GetArraySize(state));
  const int dropped = 5000, changed = 100;
  char dropped_name[64], changed_name[64];
  snprintf(dropped_name, sizeof dropped_name, "%s", cJSON_GetObjectItem(cJSON_GetArrayItem(state, dropped), "name")->valuestring);
  snprintf(changed_name, sizeof changed_name, "%s", cJSON_GetObjectItem(cJSON_GetArrayItem(state, changed), "name")->valuestring);
  cJSON *entry;
  int k = 0;
  cJSON_ArrayForEach(entry, state) {
    int count = cJSON_GetArraySize(cJSON_GetObjectItem(entry, "value"));
    cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
    if (k >= 2) cJSON_AddItemToArray(shape, cJSON_CreateNumber(count)); /* the counters are scalars */
    if (k == changed) {
      cJSON *x = cJSON_GetArrayItem(cJSON_GetObjectItem(entry, "value"), 0);
      cJSON_SetNumberValue(x, x->valuedouble * 1.01);
    }
    k++;
  }
  cJSON_DeleteItemFromArray(state, dropped);
  cJSON *expected = cJSON_CreateObject();
  cJSON_AddItemToObject(expected, "iterations", cJSON_Duplicate(cJSON_GetObjectItem(out, "iterations"), 1));
  cJSON *values = cJSON_AddArrayToObject(expected, "variables");
  cJSON *var;
  cJSON_ArrayForEach(var, cJSON_GetObjectItem(out, "variables"))
      cJSON_AddItemToArray(values, cJSON_Duplicate(cJSON_GetObjectItem(var, "value"), 1));
  cJSON_AddItemToObject(expected, "optimizer_variables", state);
  cJSON_Delete(out);

  cJSON *root = load_json(path);
  cJSON_AddItemToObject(root, "expected", expected);
  char *text = cJSON_PrintUnformatted(root);
  cr_assert(text != NULL);
  write_text(path, text);
  cJSON_free(text);
  cJSON_Delete(root);

  snprintf(args, sizeof args, "--check '%s'", path);
  r = replay_after(MEMORY_LIMIT_1GIB, args);
  cr_expect_eq(r.status, 1, "exit %d\n%s%s", r.status, r.out, r.err);
  char want[256];
  snprintf(want, sizeof want, "(%d vs %d); extra [%d] \"%s\"", LARGE_VARIABLES + 2, LARGE_VARIABLES + 1, dropped,
           dropped_name);
  cr_expect(strstr(r.out, want) != NULL, "the report does not say %s:\n%s", want, r.out);
  snprintf(want, sizeof want, "optimizer_variables: %d values", LARGE_VARIABLES + 1);
  cr_expect(strstr(r.out, want) != NULL, "the entries both sides have are not all compared:\n%s", r.out);
  snprintf(want, sizeof want, "1 values beyond tolerance, first %s:", changed_name);
  cr_expect(strstr(r.out, want) != NULL, "the changed value of %s is not reported:\n%s", changed_name, r.out);
  free_result(&r);
}

/* A shape that promises billions of elements beside a short value array is refused by its length,
 * before anything is allocated for it (under a 1 GiB address-space limit, so an allocation of the
 * promised 16 GiB would fail as "out of memory" instead). */
Test(replay_cli, huge_shapes_with_short_values_are_refused_before_allocating) {
  static const char *const variants[][2] = {
      {"[{\"name\": \"w\", \"shape\": [65536, 65536], \"value\": [1.0]}]", "[[[0.5]]]"},
      {"[{\"name\": \"w\", \"shape\": [1], \"value\": [1.0]}, {\"name\": \"v\", \"shape\": [65536, 65536], "
       "\"value\": [0.0]}]",
       "[[[0.5], null]]"},
  };
  for (size_t k = 0; k < sizeof variants / sizeof variants[0]; k++) {
    char path[512], args[600], text[2048];
    snprintf(path, sizeof path, "%s/huge_shape_%zu.json", tmpdir, k);
    snprintf(text, sizeof text,
             "{\"format\": \"cuoptim-case-1\", \"optimizer\": {\"module\": \"keras.optimizers\", \"class_name\": "
             "\"SGD\", \"config\": {\"learning_rate\": 0.1}, \"registered_name\": null}, \"variables\": %s, "
             "\"steps\": %s}",
             variants[k][0], variants[k][1]);
    write_text(path, text);
    snprintf(args, sizeof args, "'%s'", path);
    run_result r = replay_after(MEMORY_LIMIT_1GIB, args);
    cr_expect_eq(r.status, 2, "variant %zu: exit %d, stderr: %s", k, r.status, r.err);
    cr_expect(strstr(r.err, "expected 4294967296 numbers, got 1") != NULL,
              "variant %zu: not refused by its length: %s", k, r.err);
    free_result(&r);
  }
}

/* rank_steps whose first step lists many ranks and whose later steps are not arrays: refused by
 * their shape before a pointer per rank and step is allocated (20000 x 20000 of them would be
 * 3.2 GB). */
Test(replay_cli, many_ranks_with_short_steps_are_refused_before_allocating) {
  enum { N = 20000 };
  size_t cap = 64 * (size_t)N + 1024, len = 0;
  char *text = malloc(cap);
  cr_assert(text != NULL);
  len += (size_t)snprintf(text + len, cap - len,
                          "{\"format\": \"cuoptim-case-1\", \"optimizer\": {\"module\": \"keras.optimizers\", "
                          "\"class_name\": \"SGD\", \"config\": {\"learning_rate\": 0.1}, \"registered_name\": null}, "
                          "\"variables\": [{\"name\": \"w\", \"shape\": [1], \"value\": [1.0]}], \"rank_steps\": [[");
  for (int r = 0; r < N; r++) len += (size_t)snprintf(text + len, cap - len, "%snull", r ? "," : "");
  len += (size_t)snprintf(text + len, cap - len, "]");
  for (int s = 1; s < N; s++) len += (size_t)snprintf(text + len, cap - len, ",null");
  snprintf(text + len, cap - len, "]}");
  char path[512], args[600];
  snprintf(path, sizeof path, "%s/many_ranks.json", tmpdir);
  write_text(path, text);
  free(text);
  snprintf(args, sizeof args, "'%s'", path);
  run_result r = replay_after(MEMORY_LIMIT_1GIB, args);
  cr_expect_eq(r.status, 2, "exit %d, stderr: %s", r.status, r.err);
  cr_expect(strstr(r.err, "rank_steps[1]: expected an array with the gradients of each of the 20000 ranks, got null") !=
                NULL,
            "not refused by its shape: %s", r.err);
  free_result(&r);
}
