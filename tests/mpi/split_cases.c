/*
 * split_cases.c — run under `mpirun -np R` by tests/test_ranks.c: every case of a directory is
 * replayed by R data-parallel ranks (host backend, MPI_COMM_WORLD, CUOPTIM_REDUCE_MEAN) and must
 * end bit for bit where one process ends on the mean gradients.
 *
 * A case with rank_steps for R ranks: rank r applies rank_steps[.][r]; the reference is the
 * single-process run of its steps (gradients on an exact-sum grid: the mean is exactly those
 * steps, see scripts/gen_reference.py). A case with rank_steps for another number of ranks is
 * skipped. A case with only single-process steps is split, per gradient element g:
 * - a target sum x with float32(x * float32(1/R)) == g when one exists: x = R g for R = 1, 2, 4
 *   (exact: a power of two), the float32 nearest 3 g or a neighbour for R = 3 (which some g lack);
 * - rank r gets the bits of x's 24-bit significand at the positions b with b % R == r, with x's
 *   sign and exponent (-0.0, the identity of addition, when it gets none): the pieces of every
 *   rank are disjoint parts of x, so every partial sum is exact and they add up to x in whatever
 *   order MPI adds them. A non-finite or zero x goes whole to rank 0, the others get -0.0.
 * The ranks' mean is then m = float32(x * float32(1/R)), and the reference is the single-process
 * run of the case with m as gradients (m == g everywhere for R = 1, 2, 4: the reference is the
 * case itself; for R = 3, m is within an ulp of g).
 *
 * Each rank checks that its result's bits equal the reference's, that every rank holds rank 0's
 * bytes, and, where the ranks' mean is the case's gradients exactly, that the result is within
 * the default tolerance of Keras's (the case's "expected"). Where it is not (R = 3), the result
 * answers gradients an ulp away from Keras's, which sensitive cases (Ftrl, large velocities)
 * amplify beyond that tolerance: the bitwise comparison is the claim there.
 *
 * With local accumulation (the default options.accumulate_locally, unsharded), each rank
 * accumulates its own pieces and the sums come once per applied step: the sums are added in
 * another order than the single process adds the means, so a case with
 * gradient_accumulation_steps is compared with the reference within the default tolerance
 * instead of bit for bit (every rank must still hold rank 0's bits). --reduce-every-micro-step
 * (options.accumulate_locally = 0) makes the bitwise claim for those too.
 *
 * Usage: split_cases [--shard] [--reduce-every-micro-step] [--timeout S] DIR. Rank 0 prints failures and a summary. Exit 0
 * when every case passes, 1 when one fails, 2 on bad usage, 77 (every rank) when the library
 * refuses the options, with its message.
 */
#include <dirent.h>
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "case.h"

#define EXIT_SKIP 77
/* run_and_compare: this case's optimizer refuses the options (Adafactor or Muon with sharded
 * state, on its own or in a MultiOptimizer); the other cases go on. */
#define CASE_REFUSED 3
#define DEFAULT_RTOL 1e-5
#define DEFAULT_ATOL 1e-6

static int rank, world;

static uint32_t bits_of(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
}

/* What the library computes from a sum when it averages over the world (cuda/rules.h
 * cuoptim_unscale): nothing for one rank, else float32 x * float32(1 / world). */
static float mean_of(float x) {
  if (world == 1) return x;
  float inv = (float)(1.0 / (double)world);
  return x * inv;
}

/* A float32 x whose mean is g, or the nearest candidate when none is. */
static float target_sum(float g) {
  if (world == 1 || !isfinite(g) || g == 0.0f) return g;
  float x0 = (float)((double)g * world);
  if (!isfinite(x0)) return g;
  float candidates[5] = {x0, nextafterf(x0, INFINITY), nextafterf(x0, -INFINITY), 0, 0};
  candidates[3] = nextafterf(candidates[1], INFINITY);
  candidates[4] = nextafterf(candidates[2], -INFINITY);
  for (int k = 0; k < 5; k++)
    if (bits_of(mean_of(candidates[k])) == bits_of(g)) return candidates[k];
  return x0;
}

/* Rank r's part of x: the significand bits at positions b with b % world == r. */
static float piece_of(float x, int r) {
  if (world == 1) return x;
  if (!isfinite(x) || x == 0.0f) return r == 0 ? x : -0.0f;
  int e = 0;
  float f = frexpf(fabsf(x), &e); /* |x| = f 2^e, f in [0.5, 1) */
  uint32_t m = (uint32_t)ldexpf(f, 24), mine = 0;
  for (int b = 0; b < 24; b++)
    if (b % world == r) mine |= m & (1u << b);
  if (mine == 0) return -0.0f;
  float p = ldexpf((float)mine, e - 24); /* exact: a part of x's own bits */
  return signbit(x) ? -p : p;
}

/* Checks the construction for one element: the pieces add up to x forwards and backwards. */
static int pieces_sum_exactly(float x) {
  float forward = piece_of(x, 0), backward = piece_of(x, world - 1);
  for (int r = 1; r < world; r++) forward += piece_of(x, r);
  for (int r = world - 2; r >= 0; r--) backward += piece_of(x, r);
  return bits_of(forward) == bits_of(x) && bits_of(backward) == bits_of(x);
}

typedef struct {
  float ***mine; /* [s][v]: this rank's pieces */
  float ***mean; /* [s][v]: what the ranks' mean is */
  size_t not_exact;  /* elements whose mean differs from the case's gradient */
  size_t bad_split;  /* elements whose pieces do not add up to x exactly, or whose mean is more
                        than an ulp from the gradient (a bug of this program) */
} split_t;

/* Whether a and b are the same or neighbouring float32 values. */
static int within_an_ulp(float a, float b) {
  if (bits_of(a) == bits_of(b)) return 1;
  return nextafterf(a, INFINITY) == b || nextafterf(a, -INFINITY) == b;
}

static void free_split(const cuoptimCase *c, split_t *sp) {
  for (int s = 0; s < c->num_steps; s++) {
    for (int v = 0; v < c->num_variables; v++) {
      if (sp->mine && sp->mine[s]) free(sp->mine[s][v]);
      if (sp->mean && sp->mean[s]) free(sp->mean[s][v]);
    }
    if (sp->mine) free(sp->mine[s]);
    if (sp->mean) free(sp->mean[s]);
  }
  free(sp->mine);
  free(sp->mean);
}

static void split_case(const cuoptimCase *c, split_t *sp) {
  memset(sp, 0, sizeof *sp);
  sp->mine = calloc((size_t)c->num_steps + 1, sizeof *sp->mine);
  sp->mean = calloc((size_t)c->num_steps + 1, sizeof *sp->mean);
  if (!sp->mine || !sp->mean) {
    fprintf(stderr, "split_cases: out of memory\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  for (int s = 0; s < c->num_steps; s++) {
    sp->mine[s] = calloc((size_t)c->num_variables, sizeof *sp->mine[s]);
    sp->mean[s] = calloc((size_t)c->num_variables, sizeof *sp->mean[s]);
    if (!sp->mine[s] || !sp->mean[s]) MPI_Abort(MPI_COMM_WORLD, 1);
    for (int v = 0; v < c->num_variables; v++) {
      const float *g = c->steps[s][v];
      if (!g) continue;
      size_t n = c->variables[v].count;
      sp->mine[s][v] = malloc((n ? n : 1) * sizeof(float));
      sp->mean[s][v] = malloc((n ? n : 1) * sizeof(float));
      if (!sp->mine[s][v] || !sp->mean[s][v]) MPI_Abort(MPI_COMM_WORLD, 1);
      for (size_t i = 0; i < n; i++) {
        float x = target_sum(g[i]);
        sp->mine[s][v][i] = piece_of(x, rank);
        sp->mean[s][v][i] = mean_of(x);
        if (bits_of(sp->mean[s][v][i]) != bits_of(g[i])) sp->not_exact++;
        if (!pieces_sum_exactly(x) || !within_an_ulp(sp->mean[s][v][i], g[i])) sp->bad_split++;
      }
    }
  }
}

static int is_case_file(const struct dirent *e) {
  size_t n = strlen(e->d_name);
  return e->d_name[0] != '.' && n > 5 && strcmp(e->d_name + n - 5, ".json") == 0;
}

/* Whether any rank failed, on every rank. */
static int any_rank(int failed) {
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return any;
}

/* The first failing group of a comparison, as one line. */
static void first_failure(const cuoptimCaseComparison *cmp, char *line, size_t size) {
  snprintf(line, size, "the bits differ");
  for (int g = 0; g < CUOPTIM_CASE_GROUP_COUNT; g++)
    if (cmp->groups[g].compared && !cmp->groups[g].pass) {
      cuoptim_case_format_group(&cmp->groups[g], line, size);
      return;
    }
}

/* Runs `mine` (this rank's gradients) on every rank with the communicator and `reference` in
 * one process, and compares. Returns 0 when the case passes on every rank, 1 when it fails on
 * one, EXIT_SKIP when the library refuses the options. */
static int run_and_compare(const cuoptimCase *c, const char *name, const cuoptimCaseRunOptions *base, float ***mine,
                           float ***reference, int num_steps, int keras_check, const char *problem) {
  cuoptimCaseRunOptions ranked = *base, single;
  memset(&single, 0, sizeof single);
  ranked.steps = mine;
  ranked.num_steps = num_steps;
  ranked.label = "this rank's steps";
  single.steps = reference;
  single.num_steps = num_steps;
  single.label = "the steps of the mean";

  char error[2048], why[4096] = "";
  cuoptimCaseResult got, want;
  /* Local accumulators sum in another order (see the top of the file). */
  int bitwise = !(c->config.gradient_accumulation_steps > 0 && base->comm_options.accumulate_locally &&
                  !base->comm_options.shard_state && world > 1);
  int rc = cuoptim_case_run_with(c, CUOPTIM_BACKEND_HOST, &ranked, &got, error, sizeof error);
  /* Adafactor's factored state and Muon's matrices are never sharded (cuoptimSetCommunicator
   * refuses them, a MultiOptimizer's among its sub-optimizers too). */
  const unsigned never_sharded = (1u << CUOPTIM_ADAFACTOR) | (1u << CUOPTIM_MUON);
  int refused = rc == CUOPTIM_STATUS_INVALID_VALUE && base->comm_options.shard_state && (c->kinds & never_sharded);
  if (refused) {
    if (rank == 0) printf("REFUSED: %s: %s\n", name, error);
    fflush(stdout);
    return CASE_REFUSED;
  }
  if (rc == CUOPTIM_STATUS_NOT_SUPPORTED) {
    if (rank == 0) printf("SKIP: %s: %s\n", name, error);
    fflush(stdout);
    return EXIT_SKIP;
  }
  if (rc == CUOPTIM_STATUS_TIMEOUT || rc == CUOPTIM_STATUS_MPI_ERROR) {
    fprintf(stderr, "split_cases: rank %d: %s: %s\n", rank, name, error);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  int failed = 0;
  uint64_t hash = 0;
  if (rc != 0) {
    snprintf(why, sizeof why, "the %d-rank run failed: %s", world, error);
    failed = 1;
  } else {
    hash = cuoptim_case_result_hash(c, &got);
    int rc_single = cuoptim_case_run_with(c, CUOPTIM_BACKEND_HOST, &single, &want, error, sizeof error);
    cuoptimCaseComparison cmp;
    char line[2048];
    if (rc_single != 0) {
      snprintf(why, sizeof why, "the single-process run on the mean failed: %s", error);
      failed = 1;
    } else if (hash != cuoptim_case_result_hash(c, &want) &&
               (cuoptim_case_compare_results(c, &got, &want, bitwise ? 0.0 : DEFAULT_RTOL,
                                             bitwise ? 0.0 : DEFAULT_ATOL, &cmp) != 0 ||
                bitwise)) {
      first_failure(&cmp, line, sizeof line);
      snprintf(why, sizeof why, "differs from the single-process run on the mean gradients: %s", line);
      failed = 1;
    } else if (keras_check && c->has_expected && cuoptim_case_compare(c, &got, DEFAULT_RTOL, DEFAULT_ATOL, &cmp) != 0) {
      first_failure(&cmp, line, sizeof line);
      snprintf(why, sizeof why, "beyond the default tolerance of Keras: %s", line);
      failed = 1;
    }
    if (rc_single == 0) cuoptim_case_result_free(&want);
    cuoptim_case_result_free(&got);
  }
  if (problem != NULL) {
    snprintf(why, sizeof why, "%s", problem);
    failed = 1;
  }

  uint64_t *hashes = malloc((size_t)world * sizeof *hashes);
  if (!hashes) MPI_Abort(MPI_COMM_WORLD, 1);
  MPI_Allgather(&hash, 1, MPI_UINT64_T, hashes, 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (int r = 1; r < world && !failed; r++)
    if (hashes[r] != hashes[0]) {
      snprintf(why, sizeof why, "rank %d's result differs from rank 0's (bit for bit)", r);
      failed = 1;
    }
  free(hashes);
  if (failed) fprintf(stderr, "FAIL: %s (rank %d of %d): %s\n", name, rank, world, why);
  return any_rank(failed);
}

typedef struct {
  int split, ranked, skipped, refused, failed, exact;
  size_t not_exact_elements;
} totals_t;

/* A single-process case, split over the ranks. */
static int check_split_case(const cuoptimCase *c, const char *name, const cuoptimCaseRunOptions *base, totals_t *t) {
  split_t sp;
  split_case(c, &sp);
  char problem[256] = "";
  if (sp.bad_split > 0)
    snprintf(problem, sizeof problem, "%zu elements: the pieces do not add up exactly or the mean is not within an ulp",
             sp.bad_split);
  else if (sp.not_exact > 0 && (world == 1 || world == 2 || world == 4))
    snprintf(problem, sizeof problem, "%zu elements' mean differs from the case's gradient with %d ranks", sp.not_exact,
             world);
  int rc = run_and_compare(c, name, base, sp.mine, sp.mean, c->num_steps, sp.not_exact == 0,
                           problem[0] ? problem : NULL);
  if (rc == CASE_REFUSED) {
    t->refused++;
  } else if (rc != EXIT_SKIP) {
    t->split++;
    t->failed += rc;
    t->exact += sp.not_exact == 0;
    t->not_exact_elements += sp.not_exact;
  }
  free_split(c, &sp);
  return rc;
}

/* A case with rank_steps for this world: its steps are the ranks' mean exactly. */
static int check_rank_case(const cuoptimCase *c, const char *name, const cuoptimCaseRunOptions *base, totals_t *t) {
  const char *problem = c->num_rank_steps != c->num_steps ? "rank_steps and steps have different lengths" : NULL;
  int steps = c->num_rank_steps < c->num_steps ? c->num_rank_steps : c->num_steps;
  int rc = run_and_compare(c, name, base, c->rank_steps[rank], c->steps, steps, 1, problem);
  if (rc == CASE_REFUSED) {
    t->refused++;
  } else if (rc != EXIT_SKIP) {
    t->ranked++;
    t->failed += rc;
  }
  return rc;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm comm = MPI_COMM_WORLD;
  cuoptimCaseRunOptions base;
  memset(&base, 0, sizeof base);
  base.communicator = &comm;
  cuoptimCommOptionsInit(&base.comm_options);
  const char *dir = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--shard") == 0)
      base.comm_options.shard_state = 1;
    else if (strcmp(argv[i], "--reduce-every-micro-step") == 0)
      base.comm_options.accumulate_locally = 0;
    else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
      base.comm_options.timeout_seconds = atof(argv[++i]);
    else
      dir = argv[i];
  }
  if (!dir) {
    if (rank == 0) fprintf(stderr, "usage: split_cases [--shard] [--reduce-every-micro-step] [--timeout S] DIR\n");
    MPI_Finalize();
    return 2;
  }
  struct dirent **entries = NULL;
  int n = scandir(dir, &entries, is_case_file, alphasort);
  if (n <= 0) {
    if (rank == 0) fprintf(stderr, "split_cases: no case files in %s\n", dir);
    MPI_Finalize();
    return 2;
  }
  totals_t t = {0, 0, 0, 0, 0, 0, 0};
  int status = 0;
  for (int i = 0; i < n && status != EXIT_SKIP; i++) {
    char path[4096], error[2048];
    snprintf(path, sizeof path, "%s/%s", dir, entries[i]->d_name);
    cuoptimCase c;
    int loaded = cuoptim_case_load(path, &c, error, sizeof error) == 0;
    if (!loaded) fprintf(stderr, "FAIL: %s (rank %d): %s\n", entries[i]->d_name, rank, error);
    if (any_rank(!loaded)) {
      t.failed++;
    } else if (c.has_rank_steps && c.num_ranks == world && c.has_steps) {
      if (check_rank_case(&c, entries[i]->d_name, &base, &t) == EXIT_SKIP) status = EXIT_SKIP;
    } else if (c.has_rank_steps || !c.has_steps) {
      t.skipped++;
    } else if (check_split_case(&c, entries[i]->d_name, &base, &t) == EXIT_SKIP) {
      status = EXIT_SKIP;
    }
    if (loaded) cuoptim_case_free(&c);
  }
  for (int i = 0; i < n; i++) free(entries[i]);
  free(entries);
  if (status != EXIT_SKIP) {
    status = t.failed ? 1 : 0;
    if (rank == 0)
      printf("split_cases: %d ranks: %d cases, %d failed: %d split (the mean is the case's gradient bit for bit in %d; "
             "%zu elements an ulp away in the others), %d from their rank_steps, %d rank cases for another world "
             "skipped, %d refused by their optimizer\n",
             world, t.split + t.ranked, t.failed, t.split, t.exact, t.not_exact_elements, t.ranked, t.skipped,
             t.refused);
  }
  fflush(stdout);
  MPI_Finalize();
  return status;
}
