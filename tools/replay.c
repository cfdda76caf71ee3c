/*
 * cuoptim-replay — applies the steps of a case file (DESIGN.md "Case files and cuoptim-replay")
 * and prints the result, or, with --check, compares it with what Keras produced.
 *
 * Under mpirun (or another MPI launcher) every process is one rank of a data-parallel run: rank r
 * applies the case's rank_steps[s][r] with the optimizer attached to MPI_COMM_WORLD (the mean of
 * the ranks' gradients), and the ranks compare their results bit for bit. MPI is initialized only
 * when a launcher started the process (it sets OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK), so a
 * plain run never touches MPI and behaves as in a build without it.
 *
 * Exit status: 0 done (within tolerance with --check), 1 beyond tolerance (or, with ranks, a rank
 * whose result differs from rank 0's), 2 bad usage or input (or a backend or feature that cannot
 * run here), 3 the library failed on a valid case. With ranks, every rank exits with the worst
 * status of all ranks.
 */
#ifdef CUOPTIM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef CUOPTIM_REPLAY_MPI
#include <mpi.h>
#endif
#ifdef CUOPTIM_REPLAY_NCCL
#include <nccl.h>

#include "nccl_bootstrap.h"
#endif

#include "case.h"
#include "cuoptim.h"

enum { EXIT_PASS = 0, EXIT_BEYOND = 1, EXIT_INPUT = 2, EXIT_LIBRARY = 3 };

static const char *program = "cuoptim-replay";

/* This process's place in a multi-rank run (rank 0 of 1 for a plain run). */
typedef struct {
  int mpi; /* MPI was initialized: this process is one rank of the launcher's world */
  int rank, world;
  int device; /* --backend cuda: this rank's CUDA device */
#ifdef CUOPTIM_REPLAY_NCCL
  int have_nccl; /* --backend cuda: the NCCL communicator of the ranks, made from MPI */
  ncclComm_t nccl;
#endif
} ranks_t;

static ranks_t ranks = {.mpi = 0, .rank = 0, .world = 1};


static void usage(FILE *out) {
  fprintf(out,
          "usage: %s [--check] [--rtol X] [--atol Y] [--backend host|cuda] [--state] [--quiet]\n"
          "       [--shard] [--no-aggregate] [--reduce-every-micro-step] [--timeout S] CASE.json\n"
          "       mpirun -np R %s [options] CASE.json\n"
          "\n"
          "Applies the optimizer steps of a case file (format \"" CUOPTIM_CASE_FORMAT "\") with cuoptim.\n"
          "Without --check, prints {\"iterations\": N, \"variables\": [{\"name\": .., \"value\": [..]}, ..]}.\n"
          "\n"
          "  --check           compare with the case's \"expected\": one line per group with the largest\n"
          "                    absolute and relative error and where, then PASS or FAIL\n"
          "  --rtol X          relative tolerance of --check (default 1e-5)\n"
          "  --atol Y          absolute tolerance of --check (default 1e-6);\n"
          "                    a value passes when |got - want| <= atol + rtol * |want|\n"
          "  --backend B       host (default) or cuda (device 0; with ranks, see below)\n"
          "  --shard           with ranks: shard the optimizer state across them (ZeRO-1)\n"
          "  --no-aggregate    with ranks: no reduction (options.aggregate = 0), each rank applies its\n"
          "                    own gradients as if already reduced: the ranks' results differ unless\n"
          "                    their gradients are equal\n"
          "  --reduce-every-micro-step\n"
          "                    with ranks and gradient accumulation: reduce the gradients of every\n"
          "                    micro-step (options.accumulate_locally = 0) instead of each rank\n"
          "                    accumulating its own and the sums once per applied step\n"
          "  --timeout S       with ranks: seconds a collective waits for the other ranks before the\n"
          "                    step fails (default 0: forever)\n"
          "  --state           without --check, also print the optimizer state (\"optimizer_variables\",\n"
          "                    Keras's order) and, with use_ema, \"finalized_variables\"\n"
          "  --quiet           print nothing but the PASS/FAIL line of --check\n"
          "  --help            this text\n"
          "\n"
          "Under mpirun -np R, rank r applies the case's rank_steps[s][r] (R must be the case's number of\n"
          "ranks; a case without rank_steps runs its steps with R = 1) and the gradients are averaged\n"
          "over the ranks before each step. Rank 0 prints the result; the ranks compare theirs bit for\n"
          "bit (with --check, a \"ranks:\" line says whether they agree). The host backend reduces\n"
          "over MPI; --backend cuda over NCCL, with a communicator made from MPI: each rank on a GPU of\n"
          "its own where its host has as many as it has ranks, else every rank on device 0 (the emulated\n"
          "device, or one GPU with NCCL 2.30+ and NCCL_MULTI_RANK_GPU_ENABLE=1).\n"
          "\n"
          "Exit status: 0 done (within tolerance), 1 beyond tolerance (or the ranks' results differ),\n"
          "2 bad usage or input, or a backend or feature that cannot run here, 3 the library failed on\n"
          "a valid case. Every rank exits with the worst status of all ranks.\n",
          program, program);
}

/* `fmt` has one %s, for `arg` quoted (an argument may hold any byte; the message is one line). */
static int bad_usage(const char *fmt, const char *arg) {
  char q[CUOPTIM_CASE_QUOTED_SIZE];
  cuoptim_case_quote(arg, q, sizeof q);
  fprintf(stderr, "%s: ", program);
  if (ranks.mpi) fprintf(stderr, "rank %d of %d: ", ranks.rank, ranks.world);
  fprintf(stderr, fmt, q);
  fprintf(stderr, " (see --help)\n");
  return EXIT_INPUT;
}

/* One line on stderr: "cuoptim-replay: " and the message, made printable (it may hold the case's
 * path or text). */
static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void report(const char *fmt, ...) {
  char message[2048], shown[4096], prefix[64] = "";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  cuoptim_case_printable(message, shown, sizeof shown);
  if (ranks.mpi) snprintf(prefix, sizeof prefix, "rank %d of %d: ", ranks.rank, ranks.world);
  fprintf(stderr, "%s: %s%s\n", program, prefix, shown);
}

/* A tolerance: a finite non-negative number, the whole argument. */
static int parse_tolerance(const char *text, double *out) {
  char *end = NULL;
  errno = 0;
  double x = strtod(text, &end);
  if (end == text || *end != '\0' || errno != 0 || !isfinite(x) || x < 0) return -1;
  *out = x;
  return 0;
}

static void print_float(double x) {
  if (isnan(x))
    fputs("\"nan\"", stdout);
  else if (isinf(x))
    fputs(x > 0 ? "\"inf\"" : "\"-inf\"", stdout);
  else
    printf("%.9g", x);
}

static void print_string(const char *s) {
  putchar('"');
  for (; *s != '\0'; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      printf("\\%c", ch);
    else if (ch < 0x20)
      printf("\\u%04x", ch);
    else
      putchar(ch);
  }
  putchar('"');
}

static void print_entry(const char *name, const float *fvalues, const double *dvalues, size_t count) {
  printf("{\"name\": ");
  print_string(name);
  printf(", \"value\": [");
  for (size_t i = 0; i < count; i++) {
    if (i) fputs(", ", stdout);
    print_float(fvalues != NULL ? fvalues[i] : dvalues[i]);
  }
  printf("]}");
}

static void print_result(const cuoptimCase *c, const cuoptimCaseResult *r, int state) {
  printf("{\"iterations\": %lld, \"variables\": [", (long long)r->iterations);
  for (int v = 0; v < c->num_variables; v++) {
    if (v) fputs(", ", stdout);
    print_entry(c->variables[v].name, r->variables[v], NULL, c->variables[v].count);
  }
  printf("]");
  if (state) {
    printf(", \"optimizer_variables\": [");
    for (int i = 0; i < r->num_state; i++) {
      if (i) fputs(", ", stdout);
      print_entry(r->state[i].name, NULL, r->state[i].value, r->state[i].count);
    }
    printf("]");
    if (c->config.use_ema) {
      printf(", \"finalized_variables\": [");
      for (int v = 0; v < c->num_variables; v++) {
        if (v) fputs(", ", stdout);
        print_entry(c->variables[v].name, r->finalized[v], NULL, c->variables[v].count);
      }
      printf("]");
    }
  }
  printf("}\n");
}

/* Whether cudaGetDeviceCount finds a device (never in a host-only build); the reason in `why` when
 * not. */
#ifdef CUOPTIM_HAVE_CUDA
static int have_gpu(char *why, size_t size) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    snprintf(why, size, "%s", cudaGetErrorString(err));
    (void)cudaGetLastError();
    return 0;
  }
  if (count == 0) {
    snprintf(why, size, "no CUDA device");
    return 0;
  }
  return 1;
}
#else
static int have_gpu(char *why, size_t size) {
  snprintf(why, size, "this build has no CUDA backend (CUOPTIM_WITH_CUDA=OFF)");
  return 0;
}
#endif

/* ---------------------------------------------------------------------------------------------
 * Ranks: MPI only when a launcher started the process
 * ------------------------------------------------------------------------------------------- */

/* The variables that MPI launchers set in every process they start: Open MPI's mpirun, Hydra
 * (MPICH, Intel MPI) and PMIx launchers (Open MPI 5, srun --mpi=pmix). `size` gets the world size
 * when the launcher says it, else 0. */
static int launched_by_mpi(long *size) {
  static const char *const sized[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
  *size = 0;
  for (size_t i = 0; i < sizeof sized / sizeof sized[0]; i++) {
    const char *value = getenv(sized[i]);
    if (value != NULL) {
      *size = strtol(value, NULL, 10);
      return 1;
    }
  }
  return getenv("PMIX_RANK") != NULL;
}

/* Initializes MPI when a launcher started the process. Returns EXIT_PASS, or EXIT_INPUT when it
 * did but this build has no MPI and the world has more than one rank. */
static int start_ranks(int *argc, char ***argv) {
  long size = 0;
  if (!launched_by_mpi(&size)) return EXIT_PASS;
#ifdef CUOPTIM_REPLAY_MPI
  MPI_Init(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &ranks.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks.world);
  ranks.mpi = 1;
  return EXIT_PASS;
#else
  (void)argc;
  (void)argv;
  if (size > 1) {
    report("started as one of %ld ranks, but this build of cuoptim-replay has no MPI", size);
    return EXIT_INPUT;
  }
  return EXIT_PASS;
#endif
}

static void finish_ranks(void) {
#ifdef CUOPTIM_REPLAY_NCCL
  if (ranks.have_nccl) ncclCommDestroy(ranks.nccl); /* after the case's optimizer is gone */
#endif
#ifdef CUOPTIM_REPLAY_MPI
  if (ranks.mpi) MPI_Finalize();
#endif
}

/* The worst of the ranks' statuses (EXIT_* grow with severity), the same on every rank. Every
 * rank calls it at the same points, whatever happened to it before, so no rank waits for one
 * that gave up. */
static int agree(int status) {
#ifdef CUOPTIM_REPLAY_MPI
  if (ranks.mpi) {
    int worst = status;
    MPI_Allreduce(&status, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return worst;
  }
#endif
  return status;
}

/* After a collective timed out or failed, the other ranks may never reach the next collective:
 * the whole run is aborted (cuoptimSetCommunicator's contract). */
static void abort_ranks(int status) {
#ifdef CUOPTIM_REPLAY_MPI
  if (ranks.mpi) {
    report("aborting every rank (a collective timed out or failed)");
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, status);
  }
#endif
  (void)status;
}

/* What every rank tells rank 0 after its run. */
typedef struct {
  uint64_t status; /* EXIT_* */
  uint64_t hash;   /* cuoptim_case_result_hash, when the run succeeded */
} rank_outcome_t;

/* Every rank's outcome (outcomes[0 .. world)), the same on every rank. */
static void gather_outcomes(const rank_outcome_t *mine, rank_outcome_t *outcomes) {
#ifdef CUOPTIM_REPLAY_MPI
  if (ranks.mpi) {
    MPI_Allgather(mine, 2, MPI_UINT64_T, outcomes, 2, MPI_UINT64_T, MPI_COMM_WORLD);
    return;
  }
#endif
  outcomes[0] = *mine;
}

/* The communicator handle cuoptimSetCommunicator takes for `backend` (an MPI_Comm * on the host
 * backend, an ncclComm_t * on the CUDA backend), or NULL with the reason in `why`. */
static const void *communicator_for(cuoptimBackend_t backend, char *why, size_t size) {
#ifdef CUOPTIM_REPLAY_MPI
  static MPI_Comm world;
  if (backend == CUOPTIM_BACKEND_HOST) {
    world = MPI_COMM_WORLD;
    return &world;
  }
#endif
#ifdef CUOPTIM_REPLAY_NCCL
  if (backend == CUOPTIM_BACKEND_CUDA) {
    /* One GPU per rank where the host has enough for its ranks; else every rank on device 0:
     * the emulated device, or one GPU with NCCL 2.30+ (NCCL_MULTI_RANK_GPU_ENABLE=1). */
    if (!ranks.have_nccl) {
      char err[512];
      nccl_bootstrap_info_t where = {0, 0, 0, 0};
      int devices = 0, local_ranks = 1;
      MPI_Comm local;
      if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, ranks.rank, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
        MPI_Comm_size(local, &local_ranks);
        MPI_Comm_free(&local);
      }
      if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
      if (nccl_bootstrap_from_mpi(&ranks.nccl, MPI_COMM_WORLD, devices >= local_ranks ? -1 : 0, &where, err,
                                  sizeof err) != 0) {
        snprintf(why, size, "--backend cuda with ranks: %.200s", err);
        return NULL;
      }
      ranks.have_nccl = 1;
      ranks.device = where.device;
    }
    return &ranks.nccl;
  }
#endif
  if (backend == CUOPTIM_BACKEND_CUDA)
    snprintf(why, size,
             "--backend cuda with ranks: this build of cuoptim-replay has no NCCL; --backend host replays rank cases "
             "over MPI");
  else
    snprintf(why, size, "this build of cuoptim-replay has no MPI");
  return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * The run
 * ------------------------------------------------------------------------------------------- */

typedef struct {
  int check, quiet, state, shard, no_aggregate, every_micro_step;
  double rtol, atol, timeout;
  cuoptimBackend_t backend;
  const char *path;
} options_t;

static int parse_seconds(const char *text, double *out) { return parse_tolerance(text, out); }

/* Returns -1 when the options are valid, else the exit status (usage printed or reported). */
static int parse_options(int argc, char **argv, options_t *o) {
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    /* --opt=value and --opt value are both accepted. */
    const char *value = NULL;
    char name[32];
    const char *eq = strchr(arg, '=');
    if (strncmp(arg, "--", 2) == 0 && eq != NULL && (size_t)(eq - arg) < sizeof name) {
      memcpy(name, arg, (size_t)(eq - arg));
      name[eq - arg] = '\0';
      value = eq + 1;
    } else {
      snprintf(name, sizeof name, "%s", strlen(arg) < sizeof name ? arg : "--?");
    }
    int takes_value = strcmp(name, "--rtol") == 0 || strcmp(name, "--atol") == 0 || strcmp(name, "--backend") == 0 ||
                      strcmp(name, "--timeout") == 0;
    if (takes_value && value == NULL) {
      if (i + 1 >= argc) return bad_usage("%s needs a value", name);
      value = argv[++i];
    }
    if (!takes_value && value != NULL) return bad_usage("%s takes no value", name);

    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      if (ranks.rank == 0) usage(stdout);
      return EXIT_PASS;
    } else if (strcmp(arg, "--check") == 0) {
      o->check = 1;
    } else if (strcmp(arg, "--quiet") == 0) {
      o->quiet = 1;
    } else if (strcmp(arg, "--state") == 0) {
      o->state = 1;
    } else if (strcmp(arg, "--shard") == 0) {
      o->shard = 1;
    } else if (strcmp(arg, "--no-aggregate") == 0) {
      o->no_aggregate = 1;
    } else if (strcmp(arg, "--reduce-every-micro-step") == 0) {
      o->every_micro_step = 1;
    } else if (strcmp(name, "--rtol") == 0) {
      if (parse_tolerance(value, &o->rtol) != 0) return bad_usage("--rtol: %s is not a finite number >= 0", value);
    } else if (strcmp(name, "--atol") == 0) {
      if (parse_tolerance(value, &o->atol) != 0) return bad_usage("--atol: %s is not a finite number >= 0", value);
    } else if (strcmp(name, "--timeout") == 0) {
      if (parse_seconds(value, &o->timeout) != 0) return bad_usage("--timeout: %s is not a finite number >= 0", value);
    } else if (strcmp(name, "--backend") == 0) {
      if (strcmp(value, "host") == 0)
        o->backend = CUOPTIM_BACKEND_HOST;
      else if (strcmp(value, "cuda") == 0)
        o->backend = CUOPTIM_BACKEND_CUDA;
      else
        return bad_usage("--backend: %s is not host or cuda", value);
    } else if (arg[0] == '-' && arg[1] != '\0') {
      return bad_usage("unknown option %s", arg);
    } else if (o->path != NULL) {
      return bad_usage("more than one case file (%s)", arg);
    } else {
      o->path = arg;
    }
  }
  if (o->path == NULL) {
    report("no case file given (see --help)");
    return EXIT_INPUT;
  }
  if ((o->shard || o->no_aggregate || o->every_micro_step) && !ranks.mpi) {
    report("%s: it concerns the ranks of a data-parallel run: start cuoptim-replay under mpirun",
           o->shard ? "--shard" : o->no_aggregate ? "--no-aggregate" : "--reduce-every-micro-step");
    return EXIT_INPUT;
  }
  return -1;
}

/* Chooses this rank's gradients and the communicator: rank r of a world of R applies
 * rank_steps[.][r] (R must be the case's number of ranks); a world of 1 without rank_steps
 * applies the steps, attached to its communicator all the same. A plain run applies the steps.
 * Returns EXIT_PASS or EXIT_INPUT (reported). */
static int plan_run(const cuoptimCase *c, const options_t *o, cuoptimCaseRunOptions *run, char *labels,
                    size_t labels_size) {
  memset(run, 0, sizeof *run);
  if (!ranks.mpi) {
    if (!c->has_steps) {
      report("%s: the case has only rank_steps (a data-parallel run of %d ranks): run it with mpirun -np %d", o->path,
             c->num_ranks, c->num_ranks);
      return EXIT_INPUT;
    }
    return EXIT_PASS;
  }
  if (c->has_rank_steps) {
    if (c->num_ranks != ranks.world) {
      report("%s: the case's rank_steps are for %d ranks, this run has %d: run it with mpirun -np %d", o->path,
             c->num_ranks, ranks.world, c->num_ranks);
      return EXIT_INPUT;
    }
    run->steps = c->rank_steps[ranks.rank];
    run->num_steps = c->num_rank_steps;
    snprintf(labels, labels_size, "rank %d's rank_steps", ranks.rank);
    run->label = labels;
  } else if (ranks.world > 1) {
    report("%s: the case has no rank_steps: a run of %d ranks needs them (run it without mpirun, or with -np 1)",
           o->path, ranks.world);
    return EXIT_INPUT;
  }
  char why[256];
  run->communicator = communicator_for(o->backend, why, sizeof why);
  if (run->communicator == NULL) {
    report("%s", why);
    return EXIT_INPUT;
  }
  cuoptimCommOptionsInit(&run->comm_options);
  run->comm_options.reduce = CUOPTIM_REDUCE_MEAN;
  run->comm_options.aggregate = !o->no_aggregate;
  run->comm_options.shard_state = o->shard;
  run->comm_options.accumulate_locally = !o->every_micro_step;
  run->comm_options.timeout_seconds = o->timeout;
  run->device = ranks.device;
  return EXIT_PASS;
}

/* The exit status of a failed run: what the case asks for cannot be done here (as Keras would
 * refuse it, or this build or machine lacks it) vs the library failing on a valid request. */
static int run_failure_status(int rc) {
  return (rc == CUOPTIM_STATUS_INVALID_VALUE || rc == CUOPTIM_STATUS_NOT_SUPPORTED || rc == CUOPTIM_STATUS_NO_DEVICE)
             ? EXIT_INPUT
             : EXIT_LIBRARY;
}

/* The "ranks:" line of --check and the verdict over every rank: EXIT_PASS when every rank
 * passed with rank 0's bytes. */
static int judge_ranks(const rank_outcome_t *outcomes, int aggregate, char *line, size_t size) {
  const char *source = ranks.world == 1 ? "steps, with a communicator"
                       : aggregate      ? "rank_steps, mean of the gradients"
                                        : "rank_steps, each rank's own gradients";
  for (int r = 1; r < ranks.world; r++)
    if (outcomes[r].hash != outcomes[0].hash) {
      snprintf(line, size, "ranks: %d ranks (%s): rank %d's result differs from rank 0's (bit for bit): FAIL",
               ranks.world, source, r);
      return EXIT_BEYOND;
    }
  for (int r = 0; r < ranks.world; r++)
    if (outcomes[r].status != EXIT_PASS) {
      snprintf(line, size, "ranks: %d ranks (%s): rank %d is beyond tolerance: FAIL", ranks.world, source, r);
      return EXIT_BEYOND;
    }
  snprintf(line, size, "ranks: %d rank%s (%s): every rank's result is bit for bit rank 0's: ok", ranks.world,
           ranks.world > 1 ? "s" : "", source);
  return EXIT_PASS;
}

/* Runs the loaded case and prints on rank 0. Every rank returns the same status. */
static int run_and_print(const cuoptimCase *c, const options_t *o, const cuoptimCaseRunOptions *run) {
  char error[2048];
  cuoptimCaseResult r;
  int rc = cuoptim_case_run_with(c, o->backend, run, &r, error, sizeof error);
  if (rc != 0) {
    report("%s: %s", o->path, error);
    if (rc == CUOPTIM_STATUS_TIMEOUT || rc == CUOPTIM_STATUS_MPI_ERROR) abort_ranks(EXIT_LIBRARY);
  }
  rank_outcome_t mine = {(uint64_t)(rc != 0 ? run_failure_status(rc) : EXIT_PASS), 0};
  cuoptimCaseComparison cmp;
  if (rc == 0) {
    mine.hash = cuoptim_case_result_hash(c, &r);
    if (o->check) mine.status = cuoptim_case_compare(c, &r, o->rtol, o->atol, &cmp) == 0 ? EXIT_PASS : EXIT_BEYOND;
  }
  rank_outcome_t *outcomes = calloc((size_t)ranks.world, sizeof *outcomes);
  if (outcomes == NULL) {
    /* Every rank asks for the same few bytes: one that cannot have them cannot gather either. */
    report("out of memory");
    abort_ranks(EXIT_LIBRARY);
    if (rc == 0) cuoptim_case_result_free(&r);
    return EXIT_LIBRARY;
  }
  gather_outcomes(&mine, outcomes);
  int worst = EXIT_PASS, failed_rank = -1;
  for (int k = 0; k < ranks.world; k++) {
    if ((int)outcomes[k].status > worst) worst = (int)outcomes[k].status;
    if (failed_rank < 0 && outcomes[k].status > EXIT_BEYOND) failed_rank = k;
  }
  char ranks_line[256] = "";
  int ranks_verdict = EXIT_PASS;
  if (ranks.mpi && failed_rank < 0) {
    ranks_verdict = judge_ranks(outcomes, !o->no_aggregate, ranks_line, sizeof ranks_line);
    if (ranks_verdict > worst) worst = ranks_verdict;
  }
  free(outcomes);

  int status = worst;
  if (ranks.rank == 0) {
    if (failed_rank > 0 && rc == 0)
      report("%s: rank %d failed (its message above); no result is printed", o->path, failed_rank);
    if (failed_rank < 0 && o->check) {
      for (int g = 0; g < CUOPTIM_CASE_GROUP_COUNT && !o->quiet; g++) {
        if (!cmp.groups[g].compared) continue;
        char line[2048];
        cuoptim_case_format_group(&cmp.groups[g], line, sizeof line);
        printf("%s\n", line);
      }
      if (ranks.mpi && !o->quiet) printf("%s\n", ranks_line);
      printf("%s\n", worst == EXIT_PASS ? "PASS" : "FAIL");
    } else if (failed_rank < 0) {
      if (ranks_verdict != EXIT_PASS) report("%s: %s", o->path, ranks_line);
      if (!o->quiet) print_result(c, &r, o->state);
    }
    if (fflush(stdout) != 0) {
      report("writing the output failed: %s", strerror(errno));
      status = EXIT_INPUT;
    }
  }
  if (rc == 0) cuoptim_case_result_free(&r);
  return status;
}

static int replay(int argc, char **argv) {
  options_t o = {0, 0, 0, 0, 0, 0, 1e-5, 1e-6, 0.0, CUOPTIM_BACKEND_HOST, NULL};
  int status = parse_options(argc, argv, &o);
  if (status >= 0) return status; /* the same arguments on every rank: the same verdict */

  char why[256];
  status = EXIT_PASS;
  if (o.backend == CUOPTIM_BACKEND_CUDA && !have_gpu(why, sizeof why)) {
    report("--backend cuda: no usable GPU (%s)", why);
    status = EXIT_INPUT;
  }

  char error[2048], labels[64];
  cuoptimCase c;
  memset(&c, 0, sizeof c);
  if (status == EXIT_PASS && cuoptim_case_load(o.path, &c, error, sizeof error) != 0) {
    report("%s", error);
    status = EXIT_INPUT;
  }
  cuoptimCaseRunOptions run;
  if (status == EXIT_PASS) status = plan_run(&c, &o, &run, labels, sizeof labels);
  if (status == EXIT_PASS && o.check && !c.has_expected) {
    report("%s: --check: the case has no \"expected\" to compare with", o.path);
    status = EXIT_INPUT;
  }
  int worst = agree(status);
  if (worst != EXIT_PASS && status == EXIT_PASS && ranks.rank == 0)
    report("%s: another rank failed (its message above)", o.path);
  status = worst;
  if (status == EXIT_PASS) status = run_and_print(&c, &o, &run);
  cuoptim_case_free(&c);
  return status;
}

int main(int argc, char **argv) {
  int status = start_ranks(&argc, &argv);
  if (status == EXIT_PASS) status = replay(argc, argv);
  finish_ranks();
  return status;
}
