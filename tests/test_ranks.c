/*
 * test_ranks.c — the host backend's data-parallel path over MPI, for real: each test starts
 * `mpirun -np R` (R = 1 to 4) as a child process on cuoptim-replay or on a program of tests/mpi/
 * and checks its output, exit status and time (Criterion forks every test, and a world of several
 * ranks needs the launcher, so MPI never runs inside a test with more than one rank). The
 * argument checks of the calls run in the test process itself, on a singleton MPI world.
 *
 * What must hold: R ranks end bit for bit where one process ends on the mean of their gradients,
 * every rank holds the same bytes, a world of one is an optimizer without communicator, sharded
 * is unsharded (skipped until sharded state exists), and every fault (the ranks' variable tables,
 * options or gradient lists differ; a rank never steps) fails on every rank with a message that
 * says what differs, in bounded time.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "case.h"
#include "testutil.h"

#if !defined(CUOPTIM_MPIEXEC) || !defined(CUOPTIM_MPI_SPLIT_CASES) || !defined(CUOPTIM_MPI_FAULTS)
#error "CMakeLists.txt defines the launcher and the MPI programs for this suite"
#endif

/* Every run is bounded: a hang fails the test (the launcher is stopped and the test says which
 * run hung) instead of stalling the suite. A test gets more time than the runs it makes. */
#define RUN_LIMIT_SECONDS 120
#define TEST_LIMIT_SECONDS 600
/* The collectives of the replays and of split_cases give up after this (their failure, not a
 * hang, then shows what waited). */
#define COLLECTIVE_TIMEOUT "60"

/* In the sanitizer build, leaks inside Open MPI are not cuoptim's (tests/mpi/lsan-openmpi.supp):
 * every MPI process gets the suppressions and the complete stacks they need, this process through
 * the sanitizer's hooks, the ones mpirun starts through their environment. Complete stacks make
 * every allocation slow: split_cases, which loads every case of tests/data, runs without leak
 * checks there (its memory errors are still caught); the rest, small programs and the small rank
 * cases, with them. */
#ifdef CUOPTIM_TEST_SANITIZED
const char *__asan_default_options(void);
const char *__lsan_default_suppressions(void);
const char *__asan_default_options(void) { return "fast_unwind_on_malloc=0"; }
/* The list of tests/mpi/lsan-openmpi.supp. */
const char *__lsan_default_suppressions(void) {
  return "leak:libmpi.so\nleak:libopen-pal.so\nleak:libopen-rte.so\nleak:libhwloc.so\nleak:libpmix.so\n"
         "leak:libevent\nleak:mca_\n";
}
#define SANITIZER_ENVIRONMENT                                        \
  "ASAN_OPTIONS=\"$ASAN_OPTIONS:fast_unwind_on_malloc=0\" "          \
  "LSAN_OPTIONS=\"$LSAN_OPTIONS:suppressions=" CUOPTIM_MPI_LSAN_SUPPRESSIONS "\" "
#define SANITIZER_ENVIRONMENT_NO_LEAKS "ASAN_OPTIONS=\"$ASAN_OPTIONS:detect_leaks=0\" "
#else
#define SANITIZER_ENVIRONMENT ""
#define SANITIZER_ENVIRONMENT_NO_LEAKS ""
#endif

static char tmpdir[256];

static void make_tmpdir(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/cuoptim-ranks-test-XXXXXX");
  cr_assert(mkdtemp(tmpdir) != NULL, "mkdtemp failed");
}

static void remove_tmpdir(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) cr_log_warn("could not remove %s", tmpdir);
}

TestSuite(ranks, .init = make_tmpdir, .fini = remove_tmpdir);

/* ---------------------------------------------------------------------------------------------
 * Running mpirun
 * ------------------------------------------------------------------------------------------- */

typedef struct {
  int status;     /* exit status, or -1 when the launcher did not exit normally */
  double seconds; /* wall time */
  char *out, *err;
} run_result;

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  cr_assert(f != NULL, "cannot open %s", path);
  size_t cap = 4096, len = 0, got;
  char *buf = malloc(cap);
  cr_assert(buf != NULL);
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

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* `mpirun -np ranks program args` (args already shell-quoted), bounded by RUN_LIMIT_SECONDS. As
 * root, Open MPI also needs --allow-run-as-root. `check_leaks` 0: no leak check in a sanitizer
 * build. */
static run_result mpirun_checking(int ranks, const char *program, const char *args, int check_leaks) {
  char out_path[512], err_path[512], cmd[8192];
  snprintf(out_path, sizeof out_path, "%s/stdout", tmpdir);
  snprintf(err_path, sizeof err_path, "%s/stderr", tmpdir);
  const char *root_flag = geteuid() == 0 ? CUOPTIM_MPIEXEC_ROOT_FLAG : "";
  const char *environment = check_leaks ? SANITIZER_ENVIRONMENT : SANITIZER_ENVIRONMENT_NO_LEAKS;
  snprintf(cmd, sizeof cmd, "%stimeout -k 5 %d '%s' %s %d %s %s '%s' %s >'%s' 2>'%s'", environment, RUN_LIMIT_SECONDS,
           CUOPTIM_MPIEXEC, CUOPTIM_MPIEXEC_NUMPROC_FLAG, ranks, CUOPTIM_MPIEXEC_FLAGS, root_flag, program, args,
           out_path, err_path);
  double start = now_seconds();
  int raw = system(cmd);
  run_result r;
  r.seconds = now_seconds() - start;
  r.status = (raw != -1 && WIFEXITED(raw)) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  cr_assert_neq(r.status, 124, "mpirun -np %d %s %s did not end within %d s:\n%s%s", ranks, program, args,
                RUN_LIMIT_SECONDS, r.out, r.err);
  return r;
}

static run_result mpirun(int ranks, const char *program, const char *args) {
  return mpirun_checking(ranks, program, args, 1);
}

static void free_result(run_result *r) {
  free(r->out);
  free(r->err);
}

/* The lines of `text` that start with `prefix`, counted. */
static int count_lines_starting(const char *text, const char *prefix) {
  int n = 0;
  size_t len = strlen(prefix);
  for (const char *line = text; *line != '\0';) {
    if (strncmp(line, prefix, len) == 0) n++;
    const char *end = strchr(line, '\n');
    if (end == NULL) break;
    line = end + 1;
  }
  return n;
}

/* The line of `text` that starts with `prefix` (a static copy, "" when none). */
static const char *line_starting(const char *text, const char *prefix) {
  static char line[4096];
  line[0] = '\0';
  size_t len = strlen(prefix);
  for (const char *p = text; *p != '\0';) {
    const char *end = strchr(p, '\n');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (strncmp(p, prefix, len) == 0) {
      snprintf(line, sizeof line, "%.*s", (int)n, p);
      return line;
    }
    if (end == NULL) break;
    p = end + 1;
  }
  return line;
}

/* ---------------------------------------------------------------------------------------------
 * The rank cases of tests/data (generated by real Keras: steps are the mean of rank_steps)
 * ------------------------------------------------------------------------------------------- */

typedef struct {
  char path[4096 + 258];
  char name[256];
  int ranks;
  cuoptimOptimizerKind_t kind;
  int lso, clip, loss_scale_factor, accumulation, null_gradient, nonfinite;
} rank_case;

static int is_case_file(const struct dirent *e) {
  size_t n = strlen(e->d_name);
  return e->d_name[0] != '.' && n > 5 && strcmp(e->d_name + n - 5, ".json") == 0;
}

/* Every case of tests/data/cases with rank_steps, and what it exercises. */
static int list_rank_cases(rank_case **out) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", test_data_path("cases"));
  struct dirent **entries = NULL;
  int n = scandir(dir, &entries, is_case_file, alphasort);
  cr_assert(n > 0, "no cases in %s", dir);
  rank_case *list = calloc((size_t)n, sizeof *list);
  cr_assert(list != NULL);
  int count = 0;
  for (int i = 0; i < n; i++) {
    rank_case *rc = &list[count];
    snprintf(rc->path, sizeof rc->path, "%s/%s", dir, entries[i]->d_name);
    snprintf(rc->name, sizeof rc->name, "%s", entries[i]->d_name);
    free(entries[i]);
    /* Only files that mention rank_steps are loaded (loading every case is slow under ASan). */
    char *text = slurp(rc->path);
    int mentions = strstr(text, "\"rank_steps\"") != NULL;
    free(text);
    if (!mentions) continue;
    cuoptimCase c;
    char error[2048];
    cr_assert_eq(cuoptim_case_load(rc->path, &c, error, sizeof error), 0, "%s", error);
    if (c.has_rank_steps) {
      rc->ranks = c.num_ranks;
      rc->kind = c.config.kind;
      rc->lso = c.config.dynamic_loss_scale;
      rc->clip = c.config.clipnorm > 0 || c.config.global_clipnorm > 0 || c.config.clipvalue > 0;
      rc->loss_scale_factor = c.config.loss_scale_factor > 0;
      rc->accumulation = c.config.gradient_accumulation_steps > 0;
      for (int r = 0; r < c.num_ranks; r++)
        for (int s = 0; s < c.num_rank_steps; s++)
          for (int v = 0; v < c.num_variables; v++) {
            const float *g = c.rank_steps[r][s][v];
            if (g == NULL) {
              rc->null_gradient = 1;
              continue;
            }
            for (size_t k = 0; k < c.variables[v].count; k++)
              if (!isfinite(g[k])) rc->nonfinite = 1;
          }
      count++;
    }
    cuoptim_case_free(&c);
  }
  free(entries);
  *out = list;
  return count;
}

/* The cases cover what the data-parallel path must get right. */
Test(ranks, rank_cases_cover_every_optimizer_and_feature) {
  rank_case *list = NULL;
  int n = list_rank_cases(&list);
  int kinds[CUOPTIM_OPTIMIZER_COUNT] = {0}, ranks[5] = {0}, lso = 0, clip = 0, lsf = 0, accumulation = 0, null = 0,
      nonfinite_lso = 0;
  for (int i = 0; i < n; i++) {
    cr_assert(list[i].ranks >= 1 && list[i].ranks <= 4, "%s: %d ranks", list[i].name, list[i].ranks);
    kinds[list[i].kind]++;
    ranks[list[i].ranks]++;
    lso += list[i].lso;
    clip += list[i].clip;
    lsf += list[i].loss_scale_factor;
    accumulation += list[i].accumulation;
    null += list[i].null_gradient;
    nonfinite_lso += list[i].nonfinite && list[i].lso;
  }
  for (int k = 0; k < CUOPTIM_OPTIMIZER_COUNT; k++)
    if (cuoptimOptimizerName((cuoptimOptimizerKind_t)k)) /* a value no kind has is skipped */
      cr_expect(kinds[k] > 0, "no rank case for optimizer kind %d", k);
  for (int r = 2; r <= 4; r++) cr_expect(ranks[r] > 0, "no rank case for %d ranks", r);
  cr_expect(lso > 0 && clip > 0 && lsf > 0 && accumulation > 0 && null > 0 && nonfinite_lso > 0,
            "rank cases: %d LossScaleOptimizer, %d clipping, %d loss_scale_factor, %d accumulation, %d with None "
            "gradients, %d with a non-finite gradient under dynamic loss scaling",
            lso, clip, lsf, accumulation, null, nonfinite_lso);
  free(list);
}

/* `mpirun -np R cuoptim-replay --check` on every rank case: Keras's mean-gradient result on every
 * rank, every rank's result bit for bit rank 0's. */
Test(ranks, replay_check_passes_on_every_rank_case, .timeout = TEST_LIMIT_SECONDS) {
  rank_case *list = NULL;
  int n = list_rank_cases(&list);
  cr_assert(n >= 11, "only %d rank cases in tests/data/cases", n);
  int leaks_checked[5] = {0}; /* in a sanitizer build: the first case of each world (MPI_Init is slow there) */
  for (int i = 0; i < n; i++) {
    char args[4400], ranks_line[128];
    snprintf(args, sizeof args, "--check --timeout " COLLECTIVE_TIMEOUT " '%s'", list[i].path);
    run_result r = mpirun_checking(list[i].ranks, CUOPTIM_REPLAY_PATH, args, !leaks_checked[list[i].ranks]++);
    snprintf(ranks_line, sizeof ranks_line,
             "ranks: %d ranks (rank_steps, mean of the gradients): every rank's result is bit for bit rank 0's: ok",
             list[i].ranks);
    cr_expect_eq(r.status, 0, "%s, %d ranks: exit %d\n%s%s", list[i].name, list[i].ranks, r.status, r.out, r.err);
    cr_expect(strstr(r.out, ranks_line) != NULL, "%s: no \"%s\" line:\n%s", list[i].name, ranks_line, r.out);
    cr_expect_eq(count_lines_starting(r.out, "PASS"), 1, "%s: one PASS line (rank 0 prints):\n%s", list[i].name, r.out);
    cr_expect_eq(count_lines_starting(r.out, "iterations:"), 1, "%s: rank 0 alone prints:\n%s", list[i].name, r.out);
    free_result(&r);
  }
  free(list);
}

/* The same with --shard: sharded == unsharded, bit for bit (the printed state included: every
 * rank gathers it). */
Test(ranks, replay_sharded_equals_unsharded, .timeout = TEST_LIMIT_SECONDS) {
  rank_case *list = NULL;
  int n = list_rank_cases(&list);
  cr_assert(n > 0);
  for (int i = 0; i < n; i++) {
    if (list[i].kind == CUOPTIM_MUON) continue; /* Muon refuses sharded state (include/cuoptim.h) */
    char args[4608]; /* the longest option string and a path of up to 4352 bytes */
    snprintf(args, sizeof args, "--state --shard --timeout " COLLECTIVE_TIMEOUT " '%s'", list[i].path);
    run_result sharded = mpirun(list[i].ranks, CUOPTIM_REPLAY_PATH, args);
    if (list[i].kind == CUOPTIM_ADAFACTOR) { /* refused: its factored state is never sharded */
      cr_expect_neq(sharded.status, 0, "%s --shard: Adafactor was not refused", list[i].name);
      cr_expect(strstr(sharded.err, "shard_state") != NULL, "%s --shard: %s", list[i].name, sharded.err);
      free_result(&sharded);
      continue;
    }
    /* Sharded state reduces every micro-step's gradients (into the accumulators' shares). */
    snprintf(args, sizeof args, "--state --reduce-every-micro-step --timeout " COLLECTIVE_TIMEOUT " '%s'", list[i].path);
    run_result plain = mpirun(list[i].ranks, CUOPTIM_REPLAY_PATH, args);
    cr_expect_eq(sharded.status, 0, "%s --shard: exit %d\n%s", list[i].name, sharded.status, sharded.err);
    cr_expect_eq(plain.status, 0, "%s: exit %d\n%s", list[i].name, plain.status, plain.err);
    cr_expect_str_eq(sharded.out, plain.out, "%s: sharded and unsharded results differ", list[i].name);
    free_result(&sharded);
    free_result(&plain);
  }
  free(list);
}

/* ---------------------------------------------------------------------------------------------
 * Every single-process case split over R ranks (tests/mpi/split_cases.c says how)
 * ------------------------------------------------------------------------------------------- */

static void split_cases_with(int ranks, const char *options) {
  char args[4300], summary[64];
  snprintf(args, sizeof args, "%s --timeout " COLLECTIVE_TIMEOUT " '%s'", options, test_data_path("cases"));
  run_result r = mpirun_checking(ranks, CUOPTIM_MPI_SPLIT_CASES, args, 0);
  cr_log_info("%d ranks: %.1f s: %s", ranks, r.seconds, line_starting(r.out, "split_cases:"));
  snprintf(summary, sizeof summary, "split_cases: %d ranks: ", ranks);
  const char *line = line_starting(r.out, summary);
  cr_expect_eq(r.status, 0, "exit %d\n%s%s", r.status, r.out, r.err);
  cr_assert(line[0] != '\0', "no summary line:\n%s%s", r.out, r.err);
  int cases = 0, failed = -1, split = 0;
  cr_assert_eq(sscanf(line + strlen(summary), "%d cases, %d failed: %d split", &cases, &failed, &split), 3, "%s", line);
  cr_expect_eq(failed, 0, "%s\n%s", line, r.err);
  cr_expect(split >= 100, "only %d single-process cases split: %s", split, line);
  free_result(&r);
}

/* Local accumulators (the default): cases with gradient accumulation within tolerance, the
 * others bit for bit. */
static void split_cases_on(int ranks) { split_cases_with(ranks, ""); }

/* Every micro-step reduced: bit for bit, accumulation too. */
Test(ranks, every_case_split_over_2_ranks_reducing_every_micro_step, .timeout = TEST_LIMIT_SECONDS) {
  split_cases_with(2, "--reduce-every-micro-step");
}
Test(ranks, every_case_split_over_3_ranks_reducing_every_micro_step, .timeout = TEST_LIMIT_SECONDS) {
  split_cases_with(3, "--reduce-every-micro-step");
}

Test(ranks, every_case_split_over_1_rank, .timeout = TEST_LIMIT_SECONDS) { split_cases_on(1); }
Test(ranks, every_case_split_over_2_ranks, .timeout = TEST_LIMIT_SECONDS) { split_cases_on(2); }
Test(ranks, every_case_split_over_3_ranks, .timeout = TEST_LIMIT_SECONDS) { split_cases_on(3); }
Test(ranks, every_case_split_over_4_ranks, .timeout = TEST_LIMIT_SECONDS) { split_cases_on(4); }

Test(ranks, every_case_split_sharded_equals_unsharded, .timeout = TEST_LIMIT_SECONDS) {
  char args[4200];
  snprintf(args, sizeof args, "--shard --timeout " COLLECTIVE_TIMEOUT " '%s'", test_data_path("cases"));
  run_result r = mpirun_checking(2, CUOPTIM_MPI_SPLIT_CASES, args, 0);
  cr_expect_eq(r.status, 0, "exit %d\n%s%s", r.status, r.out, r.err);
  free_result(&r);
}

/* ---------------------------------------------------------------------------------------------
 * The aggregate itself: buckets, reduce ops, dtypes (tests/mpi/faults.c "sums")
 * ------------------------------------------------------------------------------------------- */

/* Gradient accumulation with local accumulators (tests/mpi/faults.c "local_accumulation"): the
 * gradients reduced once per applied step, within float32 rounding of every micro-step reduced,
 * the ranks bit for bit alike, mid-cycle reads and writes and checkpoints as documented. */
Test(ranks, local_accumulation_reduces_once_per_applied_step, .timeout = TEST_LIMIT_SECONDS) {
  for (int ranks = 1; ranks <= 4; ranks++) {
    run_result r = mpirun(ranks, CUOPTIM_MPI_FAULTS, "local_accumulation");
    cr_expect_eq(r.status, 0, "%d ranks: exit %d\n%s%s", ranks, r.status, r.out, r.err);
    for (int k = 0; k < ranks; k++) {
      char line[96];
      snprintf(line, sizeof line, "rank %d: local_accumulation: passed", k);
      cr_expect(strstr(r.out, line) != NULL, "%d ranks: no \"%s\":\n%s", ranks, line, r.out);
    }
    free_result(&r);
  }
}

/* A MultiOptimizer attached to the world (tests/mpi/faults.c "multi"): bit for bit its two
 * optimizers attached on their own, unsharded and sharded; a refused attach names the
 * sub-optimizer and attaches none; saved and loaded (a file per rank), unsharded and sharded, it
 * resumes bit for bit. */
Test(ranks, multi_optimizer_steps_as_its_sub_optimizers_over_the_world, .timeout = TEST_LIMIT_SECONDS) {
  for (int ranks = 1; ranks <= 3; ranks++) {
    run_result r = mpirun(ranks, CUOPTIM_MPI_FAULTS, "multi --timeout " COLLECTIVE_TIMEOUT);
    cr_expect_eq(r.status, 0, "%d ranks: exit %d\n%s%s", ranks, r.status, r.out, r.err);
    for (int k = 0; k < ranks; k++) {
      static const char *const passed[] = {"multi: passed", "multi resume: bit for bit the straight run",
                                           "multi sharded resume: bit for bit the straight run"};
      for (int c = 0; c < 3; c++) {
        char line[96];
        snprintf(line, sizeof line, "rank %d: %s", k, passed[c]);
        cr_expect(strstr(r.out, line) != NULL, "%d ranks: no \"%s\":\n%s", ranks, line, r.out);
      }
    }
    free_result(&r);
  }
}

Test(ranks, sums_are_exact_over_buckets_reduce_ops_and_dtypes, .timeout = TEST_LIMIT_SECONDS) {
  for (int ranks = 2; ranks <= 4; ranks++) {
    run_result r = mpirun(ranks, CUOPTIM_MPI_FAULTS, "sums");
    cr_expect_eq(r.status, 0, "%d ranks: exit %d\n%s%s", ranks, r.status, r.out, r.err);
    for (int k = 0; k < ranks; k++) {
      char prefix[64];
      snprintf(prefix, sizeof prefix, "rank %d: sums: ", k);
      cr_expect_eq(count_lines_starting(r.out, prefix), 7, "%d ranks, rank %d: 7 configurations\n%s", ranks, k, r.out);
      for (const char *line = strstr(r.out, prefix); line != NULL; line = strstr(line + 1, prefix)) {
        const char *end = strchr(line, '\n');
        cr_expect(end != NULL && end - line >= 4 && strncmp(end - 4, ": ok", 4) == 0, "%d ranks: %.*s", ranks,
                  end ? (int)(end - line) : 80, line);
      }
    }
    free_result(&r);
  }
}

/* A gradient MPI cannot count fails the step on every rank before anything is summed, also when
 * an earlier bucket could have been (a failed step changes nothing), and the next step works. */
Test(ranks, a_gradient_too_large_for_mpi_fails_before_summing_anything, .timeout = TEST_LIMIT_SECONDS) {
  run_result r = mpirun(2, CUOPTIM_MPI_FAULTS, "huge_gradient --timeout " COLLECTIVE_TIMEOUT);
  cr_expect_eq(r.status, 0, "exit %d\n%s%s", r.status, r.out, r.err);
  for (int k = 0; k < 2; k++) {
    char prefix[96];
    snprintf(prefix, sizeof prefix, "rank %d: step with the huge gradient: CUOPTIM_STATUS_NOT_SUPPORTED: ", k);
    cr_expect_eq(count_lines_starting(r.out, prefix), 2, "rank %d\n%s", k, r.out);
    snprintf(prefix, sizeof prefix, "rank %d: the small gradient after the failed step: unchanged", k);
    cr_expect_eq(count_lines_starting(r.out, prefix), 2, "rank %d: the failed step summed a gradient\n%s", k, r.out);
    snprintf(prefix, sizeof prefix, "rank %d: the small gradient after the next step: the sum", k);
    cr_expect_eq(count_lines_starting(r.out, prefix), 2, "rank %d\n%s", k, r.out);
  }
  cr_expect(strstr(r.out, "is more than MPI counts") != NULL, "%s", r.out);
  free_result(&r);
}

/* ---------------------------------------------------------------------------------------------
 * A world of one
 * ------------------------------------------------------------------------------------------- */

Test(ranks, world_of_one_is_bit_for_bit_no_communicator, .timeout = TEST_LIMIT_SECONDS) {
  run_result r = mpirun(1, CUOPTIM_MPI_FAULTS, "world_of_one_is_plain");
  cr_expect_eq(r.status, 0, "exit %d\n%s%s", r.status, r.out, r.err);
  cr_expect(strstr(r.out, "rank 0: world of one: bit for bit as without a communicator") != NULL, "%s", r.out);
  free_result(&r);
  /* The replay of cases with every feature: under mpirun -np 1 (a communicator) as without. */
  static const char *const cases[] = {"cases/adam_combo_amsgrad_accum.json", "cases/lso_adamw_combo.json",
                                      "cases/sgd_combo.json", "cases/lamb_combo.json"};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char args[4200], cmd[8600], out_path[512];
    snprintf(args, sizeof args, "--state '%s'", test_data_path(cases[i]));
    run_result ranked = mpirun_checking(1, CUOPTIM_REPLAY_PATH, args, 0); /* large cases: slow with leak checks */
    snprintf(out_path, sizeof out_path, "%s/plain", tmpdir);
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s'", CUOPTIM_REPLAY_PATH, args, out_path);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    char *plain = slurp(out_path);
    cr_expect_eq(ranked.status, 0, "%s: exit %d\n%s", cases[i], ranked.status, ranked.err);
    cr_expect_str_eq(ranked.out, plain, "%s: mpirun -np 1 differs from a plain run", cases[i]);
    free(plain);
    free_result(&ranked);
  }
}

/* ---------------------------------------------------------------------------------------------
 * Faults (tests/mpi/faults.c): the last rank differs; every rank must fail the same way
 * ------------------------------------------------------------------------------------------- */

/* Runs `scenario` on `ranks` ranks: exit 0, every rank's "step 1" line has `status` and each of
 * the needles, and every rank reaches "done" with its iterations unchanged (a failed step changes
 * nothing). */
static void expect_every_rank_fails_step_1(const char *scenario, int ranks, const char *status, const char *needle1,
                                           const char *needle2) {
  run_result r = mpirun(ranks, CUOPTIM_MPI_FAULTS, scenario);
  cr_expect_eq(r.status, 0, "%s on %d ranks: exit %d\n%s%s", scenario, ranks, r.status, r.out, r.err);
  char first[4096] = "";
  for (int k = 0; k < ranks; k++) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "rank %d: step 1: ", k);
    const char *line = line_starting(r.out, prefix);
    cr_expect(strstr(line, status) != NULL, "%s, rank %d: not %s: \"%s\"\n%s", scenario, k, status, line, r.out);
    cr_expect(strstr(line, needle1) != NULL, "%s, rank %d: \"%s\" does not say \"%s\"", scenario, k, line, needle1);
    if (needle2 != NULL)
      cr_expect(strstr(line, needle2) != NULL, "%s, rank %d: \"%s\" does not say \"%s\"", scenario, k, line, needle2);
    /* Every rank reaches the same verdict: the same message. */
    if (k == 0)
      snprintf(first, sizeof first, "%s", line + strlen(prefix));
    else
      cr_expect_str_eq(line + strlen(prefix), first, "%s: rank %d's message differs from rank 0's", scenario, k);
    snprintf(prefix, sizeof prefix, "rank %d: iterations 0", k);
    cr_expect_eq(count_lines_starting(r.out, prefix), 1, "%s, rank %d: iterations changed\n%s", scenario, k, r.out);
    snprintf(prefix, sizeof prefix, "rank %d: done", k);
    cr_expect_eq(count_lines_starting(r.out, prefix), 1, "%s, rank %d did not finish\n%s", scenario, k, r.out);
  }
  free_result(&r);
}

Test(ranks, a_variable_name_that_differs_is_named_on_every_rank, .timeout = TEST_LIMIT_SECONDS) {
  expect_every_rank_fails_step_1("name_differs", 3, "CUOPTIM_STATUS_INVALID_VALUE",
                                 "variable 1 is \"dense/bias\" (3 float32, shape [3]) on rank 0",
                                 "\"dense/bias_other\" (3 float32, shape [3]) on rank 2");
  expect_every_rank_fails_step_1("name_differs", 2, "CUOPTIM_STATUS_INVALID_VALUE", "\"dense/bias\" (3 float32, shape [3]) on rank 0",
                                 "\"dense/bias_other\" (3 float32, shape [3]) on rank 1");
}

Test(ranks, a_variable_count_shape_or_dtype_that_differs_is_named_on_every_rank, .timeout = TEST_LIMIT_SECONDS) {
  expect_every_rank_fails_step_1("count_differs", 3, "CUOPTIM_STATUS_INVALID_VALUE",
                                 "variable 1 is \"dense/bias\" (3 float32, shape [3]) on rank 0",
                                 "\"dense/bias\" (4 float32, shape [4]) on rank 2");
  expect_every_rank_fails_step_1("shape_differs", 2, "CUOPTIM_STATUS_INVALID_VALUE",
                                 "variable 0 is \"dense/kernel\" (12 float32, shape [12]) on rank 0",
                                 "\"dense/kernel\" (12 float32, shape [3, 4]) on rank 1");
  expect_every_rank_fails_step_1("dtype_differs", 4, "CUOPTIM_STATUS_INVALID_VALUE",
                                 "variable 1 is \"dense/bias\" (3 float32, shape [3]) on rank 0",
                                 "\"dense/bias\" (3 bfloat16, shape [3]) on rank 3");
}

Test(ranks, a_missing_or_extra_variable_is_named_on_every_rank, .timeout = TEST_LIMIT_SECONDS) {
  /* Rank 2 registers kernel and embedding only: its variable 1 is the embedding. */
  expect_every_rank_fails_step_1("variable_missing", 3, "CUOPTIM_STATUS_INVALID_VALUE",
                                 "variable 1 is \"dense/bias\" (3 float32, shape [3]) on rank 0",
                                 "\"embedding\" (10 float32, shape [10]) on rank 2");
  expect_every_rank_fails_step_1("extra_variable", 2, "CUOPTIM_STATUS_INVALID_VALUE",
                                 "variable 3 is \"extra\" (5 float32, shape [5]) on rank 1", "rank 0 has 3 variables");
}

/* Sharded state: each rank saves its shares to its own file; a resumed run ends bit for bit where
 * the straight one does; a file is refused by another rank and by unsharded state. */
Test(ranks, checkpoints_of_sharded_state_are_one_file_per_rank, .timeout = TEST_LIMIT_SECONDS) {
  for (int ranks = 1; ranks <= 3; ranks++) {
    run_result r = mpirun(ranks, CUOPTIM_MPI_FAULTS, "sharded_checkpoint");
    cr_expect_eq(r.status, 0, "%d ranks: exit %d\n%s%s", ranks, r.status, r.out, r.err);
    for (int k = 0; k < ranks; k++) {
      char prefix[96];
      const char *ok[] = {"cuoptimSave: CUOPTIM_STATUS_SUCCESS", "cuoptimLoad: CUOPTIM_STATUS_SUCCESS",
                          "sharded resume: bit for bit the straight run"};
      for (int c = 0; c < 3; c++) {
        snprintf(prefix, sizeof prefix, "rank %d: %s", k, ok[c]);
        cr_expect(strstr(r.out, prefix) != NULL, "%d ranks: no \"%s\"\n%s", ranks, prefix, r.out);
      }
      snprintf(prefix, sizeof prefix, "rank %d: cuoptimLoad of another rank's file: ", k);
      const char *line = line_starting(r.out, prefix);
      if (ranks > 1)
        cr_expect(strstr(line, "CUOPTIM_STATUS_INVALID_VALUE") && strstr(line, "each rank loads the file it saved"),
                  "%d ranks, rank %d: \"%s\"", ranks, k, line);
      snprintf(prefix, sizeof prefix, "rank %d: cuoptimLoad into unsharded state: ", k);
      line = line_starting(r.out, prefix);
      /* A world of one is not sharded: its file is whole state. */
      if (ranks > 1)
        cr_expect(strstr(line, "CUOPTIM_STATUS_INVALID_VALUE") && strstr(line, "not sharded"), "%d ranks, rank %d: \"%s\"",
                  ranks, k, line);
      else
        cr_expect(strstr(line, "CUOPTIM_STATUS_SUCCESS") != NULL, "rank 0: \"%s\"", line);
    }
    free_result(&r);
  }
}

Test(ranks, options_that_differ_are_named_on_every_rank, .timeout = TEST_LIMIT_SECONDS) {
  expect_every_rank_fails_step_1("bucket_differs", 2, "CUOPTIM_STATUS_INVALID_VALUE", "options->bucket_bytes",
                                 "rank 1 has 64, rank 0 has 26214400");
  expect_every_rank_fails_step_1("reduce_differs", 3, "CUOPTIM_STATUS_INVALID_VALUE", "options->reduce", "rank 2 has 1");
  expect_every_rank_fails_step_1("aggregate_differs", 2, "CUOPTIM_STATUS_INVALID_VALUE", "options->aggregate",
                                 "rank 1 has 0");
  expect_every_rank_fails_step_1("accumulate_locally_differs", 2, "CUOPTIM_STATUS_INVALID_VALUE",
                                 "options->accumulate_locally", "rank 1 has 0");
  /* A hyperparameter (SGD's momentum) that differs: the configs' Keras JSON differ. */
  expect_every_rank_fails_step_1("config_differs", 3, "CUOPTIM_STATUS_INVALID_VALUE", "optimizer's config",
                                 "rank 2 has");
}

/* Step 2 differs on the last rank: every rank fails it, nothing changes, step 3 works. */
static void expect_step_2_fails_everywhere(const char *scenario, int ranks, const char *needle1, const char *needle2) {
  run_result r = mpirun(ranks, CUOPTIM_MPI_FAULTS, scenario);
  cr_expect_eq(r.status, 0, "%s on %d ranks: exit %d\n%s%s", scenario, ranks, r.status, r.out, r.err);
  for (int k = 0; k < ranks; k++) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "rank %d: cuoptimGetRank: rank %d of %d", k, k, ranks);
    cr_expect_eq(count_lines_starting(r.out, prefix), 1, "%s: \"%s\" missing\n%s", scenario, prefix, r.out);
    snprintf(prefix, sizeof prefix, "rank %d: step 1: CUOPTIM_STATUS_SUCCESS", k);
    cr_expect_eq(count_lines_starting(r.out, prefix), 1, "%s, rank %d: step 1\n%s", scenario, k, r.out);
    snprintf(prefix, sizeof prefix, "rank %d: step 2: ", k);
    const char *line = line_starting(r.out, prefix);
    cr_expect(strstr(line, "CUOPTIM_STATUS_INVALID_VALUE") != NULL, "%s, rank %d: \"%s\"", scenario, k, line);
    cr_expect(strstr(line, needle1) != NULL, "%s, rank %d: \"%s\" does not say \"%s\"", scenario, k, line, needle1);
    cr_expect(strstr(line, needle2) != NULL, "%s, rank %d: \"%s\" does not say \"%s\"", scenario, k, line, needle2);
    snprintf(prefix, sizeof prefix, "rank %d: step 3: CUOPTIM_STATUS_SUCCESS", k);
    cr_expect_eq(count_lines_starting(r.out, prefix), 1, "%s, rank %d: step 3\n%s", scenario, k, r.out);
    snprintf(prefix, sizeof prefix, "rank %d: iterations 2", k);
    cr_expect_eq(count_lines_starting(r.out, prefix), 1, "%s, rank %d\n%s", scenario, k, r.out);
    snprintf(prefix, sizeof prefix, "rank %d: done", k);
    cr_expect_eq(count_lines_starting(r.out, prefix), 1, "%s, rank %d did not finish\n%s", scenario, k, r.out);
  }
  for (int k = 1; k < ranks; k++) {
    char line[128];
    snprintf(line, sizeof line, "rank 0: rank %d's parameters are bit for bit rank 0's", k);
    cr_expect(strstr(r.out, line) != NULL, "%s: \"%s\" missing\n%s", scenario, line, r.out);
  }
  free_result(&r);
}

Test(ranks, ranks_listing_other_gradients_fail_the_step_on_every_rank, .timeout = TEST_LIMIT_SECONDS) {
  expect_step_2_fails_everywhere("gradients_differ", 3, "variable 0 (\"dense/kernel\")",
                                 "a float32 gradient on rank 0 but none on rank 2");
  expect_step_2_fails_everywhere("gradient_dtype_differs", 4, "variable 0 (\"dense/kernel\")",
                                 "a float32 gradient on rank 0 but a bfloat16 one on rank 3");
}

/* The last rank never makes step `stuck`: the others fail with TIMEOUT within the timeout, naming
 * the stage that waited, refuse the next step, and abort. */
static void expect_timeout(const char *scenario, int ranks, int stuck, const char *stage) {
  run_result r = mpirun(ranks, CUOPTIM_MPI_FAULTS, scenario);
  cr_expect_neq(r.status, 0, "%s: the ranks abort: exit %d", scenario, r.status);
  cr_expect(r.seconds < 30, "%s: took %.1f s", scenario, r.seconds);
  for (int k = 0; k < ranks - 1; k++) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "rank %d: step %d: ", k, stuck);
    const char *line = line_starting(r.out, prefix);
    cr_expect(strstr(line, "CUOPTIM_STATUS_TIMEOUT") != NULL, "%s, rank %d: \"%s\"\n%s%s", scenario, k, line, r.out,
              r.err);
    cr_expect(strstr(line, stage) != NULL, "%s, rank %d: \"%s\" does not name the stage \"%s\"", scenario, k, line,
              stage);
    cr_expect(strstr(line, "within 1 s") != NULL, "%s, rank %d: \"%s\"", scenario, k, line);
    snprintf(prefix, sizeof prefix, "rank %d: waited ", k);
    double waited = -1;
    line = line_starting(r.out, prefix);
    cr_expect(sscanf(line + (line[0] ? strlen(prefix) : 0), "%lf", &waited) == 1 && waited >= 1.0 && waited < 10.0,
              "%s, rank %d: \"%s\"", scenario, k, line);
    char refused[128];
    snprintf(refused, sizeof refused, "rank %d: the step after the timeout: CUOPTIM_STATUS_INVALID_STATE", k);
    cr_expect_eq(count_lines_starting(r.out, refused), 1, "%s, rank %d: the next step is not refused\n%s", scenario, k,
                 r.out);
  }
  char prefix[64];
  snprintf(prefix, sizeof prefix, "rank %d: stops before step %d", ranks - 1, stuck);
  cr_expect_eq(count_lines_starting(r.out, prefix), 1, "%s\n%s", scenario, r.out);
  free_result(&r);
}

/* The last rank's first step fails before the ranks compare their tables: the others fail it too,
 * naming that rank, instead of waiting for it. */
Test(ranks, a_first_step_that_fails_on_one_rank_fails_on_every_rank, .timeout = TEST_LIMIT_SECONDS) {
  const char *scenarios[] = {"state_fails", "bad_first_gradient"};
  const char *own[] = {"CUOPTIM_STATUS_ALLOC_FAILED", "CUOPTIM_STATUS_INVALID_VALUE"};
  for (int i = 0; i < 2; i++) {
    run_result r = mpirun(3, CUOPTIM_MPI_FAULTS, scenarios[i]);
    cr_expect_eq(r.status, 0, "%s: exit %d\n%s%s", scenarios[i], r.status, r.out, r.err);
    for (int k = 0; k < 3; k++) {
      char prefix[64];
      snprintf(prefix, sizeof prefix, "rank %d: step 1: ", k);
      const char *line = line_starting(r.out, prefix);
      if (k == 2)
        cr_expect(strstr(line, own[i]) != NULL, "%s, rank 2: \"%s\"", scenarios[i], line);
      else
        cr_expect(strstr(line, "CUOPTIM_STATUS_INVALID_STATE") && strstr(line, "rank 2's first step failed"),
                  "%s, rank %d: \"%s\"", scenarios[i], k, line);
      if (i == 1) {
        snprintf(prefix, sizeof prefix, "rank %d: step 2: CUOPTIM_STATUS_SUCCESS", k);
        cr_expect_eq(count_lines_starting(r.out, prefix), 1, "%s, rank %d: step 2\n%s", scenarios[i], k, r.out);
      }
    }
    free_result(&r);
  }
}

/* The last rank never attaches: the others' cuoptimSetCommunicator (its MPI_Comm_idup) fails with
 * TIMEOUT after options.timeout_seconds, attaching nothing. */
Test(ranks, a_rank_that_never_attaches_times_out_the_others, .timeout = TEST_LIMIT_SECONDS) {
  run_result r = mpirun(3, CUOPTIM_MPI_FAULTS, "timeout_attach --timeout 1");
  cr_expect_neq(r.status, 0, "the ranks abort: exit %d", r.status);
  cr_expect(r.seconds < 30, "took %.1f s", r.seconds);
  for (int k = 0; k < 2; k++) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "rank %d: cuoptimSetCommunicator: ", k);
    const char *line = line_starting(r.out, prefix);
    cr_expect(strstr(line, "CUOPTIM_STATUS_TIMEOUT") && strstr(line, "MPI_Comm_idup") && strstr(line, "within 1 s"),
              "rank %d: \"%s\"\n%s%s", k, line, r.out, r.err);
    snprintf(prefix, sizeof prefix, "rank %d: waited ", k);
    double waited = -1;
    line = line_starting(r.out, prefix);
    cr_expect(sscanf(line + (line[0] ? strlen(prefix) : 0), "%lf", &waited) == 1 && waited >= 1.0 && waited < 10.0,
              "rank %d: \"%s\"", k, line);
    snprintf(prefix, sizeof prefix, "rank %d: after the timeout: rank 0 of 1", k);
    cr_expect_eq(count_lines_starting(r.out, prefix), 1, "rank %d: still attached?\n%s", k, r.out);
  }
  free_result(&r);
}

Test(ranks, a_rank_that_never_steps_times_out_the_others, .timeout = TEST_LIMIT_SECONDS) {
  expect_timeout("timeout_first_step --timeout 1", 2, 1, "the variable table check");
  expect_timeout("timeout_later_step --timeout 1", 3, 2, "aggregate (gradient list check)");
}

/* A rank case on another number of ranks, and a case without rank_steps on several: exit 2 on
 * every rank, no hang, nothing on stdout. */
Test(ranks, replay_refuses_a_world_the_case_is_not_for, .timeout = TEST_LIMIT_SECONDS) {
  rank_case *list = NULL;
  int n = list_rank_cases(&list);
  cr_assert(n > 0);
  char args[4400];
  snprintf(args, sizeof args, "--check '%s'", list[0].path);
  int other = list[0].ranks == 2 ? 3 : 2;
  run_result r = mpirun(other, CUOPTIM_REPLAY_PATH, args);
  cr_expect_eq(r.status, 2, "exit %d\n%s", r.status, r.err);
  char needle[256];
  snprintf(needle, sizeof needle, "the case's rank_steps are for %d ranks, this run has %d: run it with mpirun -np %d",
           list[0].ranks, other, list[0].ranks);
  for (int k = 0; k < other; k++) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "cuoptim-replay: rank %d of %d: ", k, other);
    const char *line = line_starting(r.err, prefix);
    cr_expect(strstr(line, needle) != NULL, "rank %d: \"%s\"\n%s", k, line, r.err);
  }
  cr_expect_str_empty(r.out);
  free_result(&r);

  snprintf(args, sizeof args, "--check '%s'", test_data_path("cases/sgd_defaults.json"));
  r = mpirun(2, CUOPTIM_REPLAY_PATH, args);
  cr_expect_eq(r.status, 2, "exit %d\n%s", r.status, r.err);
  cr_expect(strstr(r.err, "rank 1 of 2: ") != NULL && strstr(r.err, "the case has no rank_steps") != NULL, "%s", r.err);
  cr_expect_str_empty(r.out);
  free_result(&r);
  free(list);
}

/* The replay compares the ranks' results: with --no-aggregate each rank applies its own gradients,
 * so ranks with different gradients end apart (exit 1, and the line says which rank), ranks with
 * the same gradients end together, where one process ends. */
Test(ranks, replay_reports_ranks_whose_results_differ, .timeout = TEST_LIMIT_SECONDS) {
  char args[4400];
  snprintf(args, sizeof args, "--check --no-aggregate '%s'", test_data_path("cases/ranks_adadelta_r2.json"));
  run_result r = mpirun(2, CUOPTIM_REPLAY_PATH, args);
  cr_expect_eq(r.status, 1, "exit %d\n%s%s", r.status, r.out, r.err);
  cr_expect(strstr(r.out, "ranks: 2 ranks (rank_steps, each rank's own gradients): rank 1's result differs from rank "
                          "0's (bit for bit): FAIL") != NULL,
            "%s", r.out);
  cr_expect_eq(count_lines_starting(r.out, "FAIL"), 1, "%s", r.out);
  free_result(&r);
  snprintf(args, sizeof args, "--no-aggregate '%s'", test_data_path("cases/ranks_adadelta_r2.json"));
  r = mpirun(2, CUOPTIM_REPLAY_PATH, args);
  cr_expect_eq(r.status, 1, "exit %d\n%s%s", r.status, r.out, r.err);
  cr_expect(strstr(r.err, "rank 0 of 2: ") != NULL && strstr(r.err, "rank 1's result differs from rank 0's") != NULL,
            "%s", r.err);
  cr_expect_eq(r.out[0], '{', "rank 0's result is printed: %s", r.out);
  free_result(&r);

  /* Two ranks with the steps of bad/no_expected.json each: no reduction, the same bytes. */
  char path[512];
  snprintf(path, sizeof path, "%s/same.json", tmpdir);
  char *text = slurp(test_data_path("bad/no_expected.json"));
  cJSON *root = cJSON_Parse(text);
  free(text);
  cr_assert(root != NULL);
  cJSON *rank_steps = cJSON_CreateArray(), *step;
  cJSON_ArrayForEach(step, cJSON_GetObjectItem(root, "steps")) {
    cJSON *per_rank = cJSON_CreateArray();
    cJSON_AddItemToArray(per_rank, cJSON_Duplicate(step, 1));
    cJSON_AddItemToArray(per_rank, cJSON_Duplicate(step, 1));
    cJSON_AddItemToArray(rank_steps, per_rank);
  }
  cJSON_AddItemToObject(root, "rank_steps", rank_steps);
  char *printed = cJSON_Print(root);
  FILE *f = fopen(path, "wb");
  cr_assert(f != NULL && printed != NULL);
  fputs(printed, f);
  fclose(f);
  cJSON_free(printed);
  cJSON_Delete(root);
  snprintf(args, sizeof args, "--state --no-aggregate '%s'", path);
  r = mpirun(2, CUOPTIM_REPLAY_PATH, args);
  char cmd[8600], out_path[512];
  snprintf(out_path, sizeof out_path, "%s/plain", tmpdir);
  snprintf(cmd, sizeof cmd, "'%s' --state '%s' >'%s'", CUOPTIM_REPLAY_PATH, test_data_path("bad/no_expected.json"),
           out_path);
  cr_assert_eq(system(cmd), 0, "%s", cmd);
  char *plain = slurp(out_path);
  cr_expect_eq(r.status, 0, "exit %d\n%s", r.status, r.err);
  cr_expect_str_eq(r.out, plain);
  free(plain);
  free_result(&r);
}

/* A case whose ranks list different gradients: the library's refusal on every rank, exit 2. */
Test(ranks, replay_reports_ranks_listing_other_gradients, .timeout = TEST_LIMIT_SECONDS) {
  char path[512];
  snprintf(path, sizeof path, "%s/uneven.json", tmpdir);
  char *text = slurp(test_data_path("cases/ranks_adadelta_r2.json"));
  cuoptimCase c;
  char error[2048];
  cr_assert_eq(cuoptim_case_load(test_data_path("cases/ranks_adadelta_r2.json"), &c, error, sizeof error), 0, "%s",
               error);
  cr_assert_eq(c.num_ranks, 2);
  cuoptim_case_free(&c);
  /* rank_steps[0][1][0] becomes null: the second rank has no gradient for variable 0 in step 0. */
  char *at = strstr(text, "\"rank_steps\": [\n[[");
  cr_assert(at != NULL, "no rank_steps in the case's text");
  char *rank1 = strstr(at, "],[[");
  cr_assert(rank1 != NULL);
  rank1 += 3; /* at "[" of rank 1's first gradient */
  char *close = strchr(rank1, ']');
  cr_assert(close != NULL);
  FILE *f = fopen(path, "wb");
  cr_assert(f != NULL);
  fwrite(text, 1, (size_t)(rank1 - text), f);
  fputs("null", f);
  fputs(close + 1, f);
  fclose(f);
  free(text);
  cr_assert_eq(cuoptim_case_load(path, &c, error, sizeof error), 0, "the edited case must load: %s", error);
  cr_assert(c.rank_steps[1][0][0] == NULL && c.rank_steps[0][0][0] != NULL);
  cuoptim_case_free(&c);

  char args[1024];
  snprintf(args, sizeof args, "--check --timeout " COLLECTIVE_TIMEOUT " '%s'", path);
  run_result r = mpirun(2, CUOPTIM_REPLAY_PATH, args);
  cr_expect_eq(r.status, 2, "exit %d\n%s%s", r.status, r.out, r.err);
  for (int k = 0; k < 2; k++) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "cuoptim-replay: rank %d of 2: ", k);
    const char *line = line_starting(r.err, prefix);
    cr_expect(strstr(line, "rank 1's rank_steps[0]: cuoptimApplyGradients") != NULL ||
                  strstr(line, "rank 0's rank_steps[0]: cuoptimApplyGradients") != NULL,
              "rank %d: \"%s\"\n%s", k, line, r.err);
    cr_expect(strstr(line, "none on rank 1") != NULL, "rank %d: \"%s\"", k, line);
  }
  cr_expect_str_empty(r.out);
  free_result(&r);
}

/* ---------------------------------------------------------------------------------------------
 * Bad arguments, in this process (a singleton MPI world)
 * ------------------------------------------------------------------------------------------- */

static cuoptimOptimizer_t host_optimizer(float *param) {
  cuoptimConfig_t config = test_config(CUOPTIM_SGD);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_HOST, 0));
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "w", param, CUOPTIM_FLOAT32, 4, &v));
  return opt;
}

static void expect_status(cuoptimStatus_t got, cuoptimStatus_t want, const char *what, const char *needle) {
  cr_expect_eq(got, want, "%s: status %d (%s), expected %d: %s", what, (int)got, cuoptimGetStatusString(got), (int)want,
               cuoptimGetLastErrorMessage());
  if (needle != NULL)
    cr_expect(strstr(cuoptimGetLastErrorMessage(), needle) != NULL, "%s: \"%s\" does not say \"%s\"", what,
              cuoptimGetLastErrorMessage(), needle);
}

static void expect_single_process(cuoptimOptimizer_t opt) {
  int rank = -1, world = -1;
  OK(cuoptimGetRank(opt, &rank, &world));
  cr_expect(rank == 0 && world == 1, "rank %d of %d", rank, world);
}

Test(ranks, options_init_and_get_rank_check_their_arguments) {
  expect_status(cuoptimCommOptionsInit(NULL), CUOPTIM_STATUS_NULL_POINTER, "cuoptimCommOptionsInit(NULL)",
                "cuoptimCommOptionsInit");
  cuoptimCommOptions_t o;
  memset(&o, 0x5a, sizeof o);
  OK(cuoptimCommOptionsInit(&o));
  cr_expect(o.aggregate == 1 && o.reduce == CUOPTIM_REDUCE_MEAN && o.bucket_bytes == (size_t)25 << 20 &&
            o.shard_state == 0 && o.timeout_seconds == 0.0 && o.accumulate_locally == 1);
  float param[4] = {1, 2, 3, 4};
  cuoptimOptimizer_t opt = host_optimizer(param);
  int rank = 7, world = 7;
  expect_status(cuoptimGetRank(NULL, &rank, &world), CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetRank(NULL optimizer)",
                "cuoptimGetRank");
  expect_status(cuoptimGetRank(opt, NULL, &world), CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetRank(NULL rank)", "rank");
  expect_status(cuoptimGetRank(opt, &rank, NULL), CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetRank(NULL world)", "world");
  cr_expect(rank == 7 && world == 7, "a failed call changes nothing");
  expect_single_process(opt);
  OK(cuoptimDestroy(opt));
}

Test(ranks, set_communicator_checks_its_arguments) {
  float param[4] = {1, 2, 3, 4};
  cuoptimOptimizer_t opt = host_optimizer(param);
  MPI_Comm comm = MPI_COMM_WORLD;
  cuoptimCommOptions_t o;
  OK(cuoptimCommOptionsInit(&o));
  /* Before MPI_Init. */
  int initialized = 1;
  MPI_Initialized(&initialized);
  cr_assert(!initialized);
  expect_status(cuoptimSetCommunicator(opt, &comm, &o), CUOPTIM_STATUS_INVALID_STATE, "before MPI_Init",
                "MPI is not initialized");
  expect_single_process(opt);
  cr_assert_eq(MPI_Init(NULL, NULL), MPI_SUCCESS);

  expect_status(cuoptimSetCommunicator(NULL, &comm, &o), CUOPTIM_STATUS_NULL_POINTER, "NULL optimizer",
                "cuoptimSetCommunicator");
  expect_status(cuoptimSetCommunicator(opt, &comm, NULL), CUOPTIM_STATUS_NULL_POINTER, "NULL options", "options");
  /* Each option out of range: refused, nothing attached. */
  cuoptimCommOptions_t b;
#define EXPECT_BAD(assignment, status, needle)                                                            \
  do {                                                                                                    \
    OK(cuoptimCommOptionsInit(&b));                                                                       \
    b.assignment;                                                                                         \
    expect_status(cuoptimSetCommunicator(opt, &comm, &b), status, "options." #assignment, needle);        \
    expect_single_process(opt);                                                                           \
  } while (0)
  EXPECT_BAD(aggregate = 2, CUOPTIM_STATUS_INVALID_VALUE, "options->aggregate = 2");
  EXPECT_BAD(aggregate = -1, CUOPTIM_STATUS_INVALID_VALUE, "options->aggregate = -1");
  EXPECT_BAD(reduce = (cuoptimReduceOp_t)2, CUOPTIM_STATUS_INVALID_VALUE, "options->reduce = 2");
  EXPECT_BAD(bucket_bytes = 0, CUOPTIM_STATUS_INVALID_VALUE, "options->bucket_bytes = 0");
  EXPECT_BAD(shard_state = 2, CUOPTIM_STATUS_INVALID_VALUE, "options->shard_state = 2");
  EXPECT_BAD(accumulate_locally = 2, CUOPTIM_STATUS_INVALID_VALUE, "options->accumulate_locally = 2");
  EXPECT_BAD(accumulate_locally = -1, CUOPTIM_STATUS_INVALID_VALUE, "options->accumulate_locally = -1");
  EXPECT_BAD(timeout_seconds = -1, CUOPTIM_STATUS_INVALID_VALUE, "options->timeout_seconds = -1");
  EXPECT_BAD(timeout_seconds = NAN, CUOPTIM_STATUS_INVALID_VALUE, "options->timeout_seconds");
  EXPECT_BAD(timeout_seconds = INFINITY, CUOPTIM_STATUS_INVALID_VALUE, "options->timeout_seconds = inf");
  MPI_Comm null_comm = MPI_COMM_NULL;
  expect_status(cuoptimSetCommunicator(opt, &null_comm, &o), CUOPTIM_STATUS_INVALID_VALUE, "MPI_COMM_NULL",
                "MPI_COMM_NULL");
  expect_single_process(opt);

  /* A good one, a detach, and again. */
  OK(cuoptimSetCommunicator(opt, &comm, &o));
  expect_single_process(opt); /* rank 0 of a world of 1 */
  OK(cuoptimSetCommunicator(opt, NULL, NULL));
  OK(cuoptimSetCommunicator(opt, &comm, &o));
  /* A failed call keeps the communicator that is attached: the step still runs with it. */
  EXPECT_BAD(bucket_bytes = 0, CUOPTIM_STATUS_INVALID_VALUE, "options->bucket_bytes = 0");
  float grad[4] = {1, 1, 1, 1};
  cuoptimGradient_t pair = {0, grad, CUOPTIM_FLOAT32};
  OK(cuoptimApplyGradients(opt, 1, &pair, NULL));
  /* After the state is built. */
  expect_status(cuoptimSetCommunicator(opt, &comm, &o), CUOPTIM_STATUS_INVALID_STATE, "after the first step",
                "the optimizer state is built");
  expect_status(cuoptimSetCommunicator(opt, NULL, NULL), CUOPTIM_STATUS_INVALID_STATE, "detach after the first step",
                "the optimizer state is built");
  OK(cuoptimDestroy(opt));

  cuoptimOptimizer_t built = host_optimizer(param);
  int count = 0;
  OK(cuoptimGetWeightCount(built, &count)); /* builds the state */
  expect_status(cuoptimSetCommunicator(built, &comm, &o), CUOPTIM_STATUS_INVALID_STATE, "after a state access",
                "the optimizer state is built");
  OK(cuoptimDestroy(built));

  /* A MultiOptimizer's sub-optimizer: refused (the MultiOptimizer attaches all of them). */
  cuoptimConfig_t subs[2];
  OK(cuoptimConfigInit(&subs[0], CUOPTIM_SGD));
  OK(cuoptimConfigInit(&subs[1], CUOPTIM_ADAM));
  const char *patterns[] = {"kernel"};
  const int pattern_optimizer[] = {0};
  const cuoptimMultiConfig_t mc = {.num_optimizers = 2, .optimizers = subs, .num_patterns = 1, .patterns = patterns,
                                   .pattern_optimizer = pattern_optimizer, .default_optimizer = 1,
                                   .loss_scale_factor = CUOPTIM_NONE}; /* the name "": Keras's default */
  cuoptimOptimizer_t multi = NULL, sub = NULL;
  OK(cuoptimCreateMulti(&multi, &mc, CUOPTIM_BACKEND_HOST, 0));
  OK(cuoptimGetSubOptimizer(multi, 1, &sub));
  expect_status(cuoptimSetCommunicator(sub, &comm, &o), CUOPTIM_STATUS_INVALID_VALUE, "a sub-optimizer",
                "set the communicator on the MultiOptimizer");
  expect_single_process(sub);
  OK(cuoptimSetCommunicator(multi, &comm, &o));
  expect_single_process(multi);
  OK(cuoptimDestroy(multi));

  MPI_Finalize();
  cuoptimOptimizer_t late = host_optimizer(param);
  expect_status(cuoptimSetCommunicator(late, &comm, &o), CUOPTIM_STATUS_INVALID_STATE, "after MPI_Finalize",
                "MPI is finalized");
  expect_single_process(late);
  OK(cuoptimDestroy(late));
}
