/*
 * test_nccl_ranks.c — the CUDA backend's data-parallel path over NCCL (host/comm_nccl.c).
 *
 * nccl_ranks tests: tests/mpi/nccl_ranks.c (its comment says what it checks: results against the
 * host backend on the mean gradients, identical bytes on every rank, graph replays, refused
 * mismatches) under mpirun -np 1, 2, 3 and 4. On the emulated device every rank is a process on
 * the one emulated GPU and the emulated NCCL (emu/nccl.cc) carries the collectives over MPI; with
 * real GPUs a run needs one GPU per rank (NCCL before 2.30 puts one rank on a GPU).
 *
 * nccl_comm tests: one process with a communicator of one rank (ncclCommInitAll): attaching,
 * refusing what cannot work, a world of one giving the bits of no communicator, and, on the
 * emulated device (whose test hooks inject what one machine cannot produce), an asynchronous
 * NCCL error failing the next step with NCCL's text, and a communicator on another device.
 *
 * Without NCCL (or MPI, for the ranks) in the build, or without a usable CUDA device, every test
 * skips.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <cuda_runtime_api.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "case.h"
#include "cuoptim.h"
#include "testutil.h"

#ifdef CUOPTIM_TEST_HAVE_NCCL
#include <nccl.h>

#include "nccl_bootstrap.h"
#endif
#ifdef CUOPTIM_TEST_EMULATED_DEVICE
#include "nccl_emu.h"
#endif

/* ---- N ranks under mpirun ----------------------------------------------------------------- */

#ifdef CUOPTIM_TEST_NCCL_RANKS
/* The environment variables CUOPTIM_MPIEXEC and CUOPTIM_NCCL_RANKS override the paths compiled in,
 * for a build carried to another machine. */
static const char *env_or(const char *name, const char *fallback) {
  const char *value = getenv(name);
  return value && *value ? value : fallback;
}
#endif

static void run_ranks(int np) {
#ifndef CUOPTIM_TEST_NCCL_RANKS
  (void)np;
  cr_skip("this build has no NCCL or no MPI: the data-parallel CUDA path is not built");
#else
  if (!test_has_gpu()) cr_skip("no usable CUDA device: NCCL ranks test skipped");
#ifndef CUOPTIM_TEST_EMULATED_DEVICE
  int devices = 0;
  cr_assert_eq(cudaGetDeviceCount(&devices), cudaSuccess);
  if (devices < np) cr_skip("%d ranks need %d GPUs (one rank per GPU); this machine has %d", np, np, devices);
#endif
  const char *mpiexec = env_or("CUOPTIM_MPIEXEC", CUOPTIM_TEST_MPIEXEC);
  const char *program = env_or("CUOPTIM_NCCL_RANKS", CUOPTIM_TEST_NCCL_RANKS);
  if (access(mpiexec, X_OK) != 0 || access(program, X_OK) != 0)
    cr_skip("%s or %s is not here (set CUOPTIM_MPIEXEC and CUOPTIM_NCCL_RANKS)", mpiexec, program);
#ifdef CUOPTIM_TEST_SANITIZED
  /* Open MPI's own allocations outlive MPI_Finalize: LeakSanitizer would report them in every rank
   * (the single-process suites check cuoptim's own leaks). */
  const char *asan = getenv("ASAN_OPTIONS");
  char options[2048];
  snprintf(options, sizeof options, "%s%sdetect_leaks=0", asan ? asan : "", asan && *asan ? ":" : "");
  setenv("ASAN_OPTIONS", options, 1);
#endif
  /* Root may run mpirun only when it says so; more ranks than cores need --oversubscribe. */
  char command[4096];
  snprintf(command, sizeof command, "%s %s--oversubscribe -np %d --timeout 600 %s 2>&1", mpiexec,
           geteuid() == 0 ? "--allow-run-as-root " : "", np, program);
  FILE *pipe = popen(command, "r");
  cr_assert_not_null(pipe, "popen(%s)", command);
  char output[1 << 16];
  size_t length = fread(output, 1, sizeof output - 1, pipe);
  output[length] = '\0';
  int status = pclose(pipe);
  int passed = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!passed) fprintf(stderr, "== %s\n%s\n", command, output);
  cr_expect(passed, "mpirun -np %d nccl_ranks: exit status %d (its output is above)", np,
            status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  char want[64];
  snprintf(want, sizeof want, "nccl_ranks: %d ranks: passed", np);
  cr_expect(strstr(output, want) != NULL, "mpirun -np %d nccl_ranks did not report \"%s\"", np, want);
#endif
}

#if defined(CUOPTIM_TEST_NCCL_RANKS) && defined(CUOPTIM_TEST_EMULATED_DEVICE)
/* `mpirun -np R cuoptim-replay --backend cuda --check [--shard] CASE`: exit status and output. */
static int replay_over_nccl(int ranks, const char *flags, const char *path, char *output, size_t size) {
  char command[8192];
  snprintf(command, sizeof command, "%s %s--oversubscribe -np %d --timeout 300 %s --backend cuda --check %s '%s' 2>&1",
           env_or("CUOPTIM_MPIEXEC", CUOPTIM_TEST_MPIEXEC), geteuid() == 0 ? "--allow-run-as-root " : "", ranks,
           CUOPTIM_REPLAY_PATH, flags, path);
  FILE *pipe = popen(command, "r");
  cr_assert_not_null(pipe, "popen(%s)", command);
  size_t length = fread(output, 1, size - 1, pipe);
  output[length] = '\0';
  int status = pclose(pipe);
  return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
#endif

#if defined(CUOPTIM_TEST_NCCL_RANKS) && defined(CUOPTIM_TEST_EMULATED_DEVICE)
/* The case's optimizer kind. */
static cuoptimOptimizerKind_t case_kind(const char *path) {
  cuoptimCase c;
  char error[2048];
  cr_assert_eq(cuoptim_case_load(path, &c, error, sizeof error), 0, "%s: %s", path, error);
  cuoptimOptimizerKind_t kind = c.config.kind;
  cuoptim_case_free(&c);
  return kind;
}
#endif

/* Every rank case of tests/data (Keras on the mean gradients) replayed on the CUDA backend over
 * NCCL, unsharded and sharded: PASS within the replay's tolerance, every rank's result bit for bit
 * rank 0's (Adafactor's and Muon's sharded runs refused, naming shard_state). On the emulated
 * device only: on GPUs the cases of 4 ranks need 4 GPUs (or NCCL 2.30+ to put several ranks on
 * one). */
Test(nccl_ranks, every_rank_case_replays_over_nccl, .timeout = 1800) {
#if !defined(CUOPTIM_TEST_NCCL_RANKS) || !defined(CUOPTIM_TEST_EMULATED_DEVICE)
  cr_skip("the replay over NCCL needs a GPU per rank (or NCCL 2.30+): tested on the emulated device");
#else
  DIR *dir = opendir(test_data_path("cases"));
  cr_assert_not_null(dir);
  int replayed = 0;
  for (struct dirent *e; (e = readdir(dir)) != NULL;) {
    int ranks = 0;
    const char *suffix = strrchr(e->d_name, '_');
    if (strncmp(e->d_name, "ranks_", 6) != 0 || !suffix || sscanf(suffix, "_r%d.json", &ranks) != 1) continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_data_path("cases"), e->d_name);
    const cuoptimOptimizerKind_t kind = case_kind(path);
    static char output[1 << 16];
    for (int shard = 0; shard < 2; shard++) {
      int status = replay_over_nccl(ranks, shard ? "--shard" : "", path, output, sizeof output);
      /* Adafactor's factored state and Muon's matrices are never sharded: refused. */
      if (shard && (kind == CUOPTIM_ADAFACTOR || kind == CUOPTIM_MUON)) {
        cr_expect(status == 2 && strstr(output, "shard_state") != NULL, "%s --shard: exit %d, not refused:\n%s",
                  e->d_name, status, output);
        continue;
      }
      cr_expect(status == 0 && strstr(output, "\nPASS") != NULL && strstr(output, "bit for bit rank 0's: ok") != NULL,
                "%s%s: exit %d:\n%s", e->d_name, shard ? " --shard" : "", status, output);
      replayed++;
    }
  }
  closedir(dir);
  cr_expect(replayed >= 20, "only %d replays", replayed);
#endif
}

Test(nccl_ranks, one_rank) { run_ranks(1); }
Test(nccl_ranks, two_ranks) { run_ranks(2); }
Test(nccl_ranks, three_ranks) { run_ranks(3); }
Test(nccl_ranks, four_ranks) { run_ranks(4); }

/* ---- one process, a communicator of one rank ---------------------------------------------- */

#ifdef CUOPTIM_TEST_HAVE_NCCL

#define COUNT 1000

/* Through examples/nccl_bootstrap.h, as a single-process program makes its communicators. */
static ncclComm_t one_rank_comm(void) {
  if (!test_has_gpu()) cr_skip("no usable CUDA device: NCCL test skipped");
  CUDA_OK(cudaSetDevice(0));
  ncclComm_t comm = NULL;
  int devices[1] = {0};
  char err[512] = "";
  cr_assert_eq(nccl_bootstrap_single_process(&comm, 1, devices, err, sizeof err), 0, "%s", err);
  return comm;
}

Test(nccl_comm, the_single_process_bootstrap_refuses_more_devices_than_the_host_has) {
  if (!test_has_gpu()) cr_skip("no usable CUDA device: NCCL test skipped");
  int count = 0;
  CUDA_OK(cudaGetDeviceCount(&count));
  ncclComm_t comms[64];
  char err[512] = "";
  cr_expect_eq(nccl_bootstrap_single_process(comms, count + 1, NULL, err, sizeof err), -1);
  char want[64];
  snprintf(want, sizeof want, "this host has %d CUDA devices", count);
  cr_expect(strstr(err, want), "message: %s", err);
}

static cuoptimCommOptions_t default_options(void) {
  cuoptimCommOptions_t options;
  OK(cuoptimCommOptionsInit(&options));
  return options;
}

/* An optimizer on the CUDA backend with one variable of COUNT elements. */
typedef struct {
  cuoptimOptimizer_t opt;
  float *param, *grad;
} single_t;

static void make_single(single_t *s, const cuoptimConfig_t *config) {
  float init[COUNT];
  for (int i = 0; i < COUNT; i++) init[i] = test_pseudo_random(7, 0, (uint64_t)i);
  OK(cuoptimCreate(&s->opt, config, CUOPTIM_BACKEND_CUDA, 0));
  s->param = test_mem_from(CUOPTIM_BACKEND_CUDA, init, COUNT);
  s->grad = test_mem_alloc(CUOPTIM_BACKEND_CUDA, COUNT * sizeof(float));
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(s->opt, "dense/kernel", s->param, CUOPTIM_FLOAT32, COUNT, &v));
}

static cuoptimStatus_t step_single(single_t *s, int step) {
  float g[COUNT];
  for (int i = 0; i < COUNT; i++) g[i] = test_pseudo_random(8, (uint64_t)step, (uint64_t)i);
  test_mem_upload(CUOPTIM_BACKEND_CUDA, s->grad, g, sizeof g);
  cuoptimGradient_t grad = {0, s->grad, CUOPTIM_FLOAT32};
  return cuoptimApplyGradients(s->opt, 1, &grad, NULL);
}

static void read_single(single_t *s, float *out) {
  OK(cuoptimSynchronize(s->opt));
  test_mem_download(CUOPTIM_BACKEND_CUDA, out, s->param, COUNT * sizeof(float));
}

static void free_single(single_t *s) {
  OK(cuoptimDestroy(s->opt));
  test_mem_free(CUOPTIM_BACKEND_CUDA, s->param);
  test_mem_free(CUOPTIM_BACKEND_CUDA, s->grad);
}

static void expect_rank(cuoptimOptimizer_t opt, int want_rank, int want_world) {
  int r = -1, w = -1;
  OK(cuoptimGetRank(opt, &r, &w));
  cr_expect(r == want_rank && w == want_world, "cuoptimGetRank: rank %d of %d, want %d of %d", r, w, want_rank,
            want_world);
}

/* The header's promise: a world of one gives bit for bit what no communicator gives (the mean's
 * 1/world is not applied, nothing is communicated, the table check agrees with itself). */
Test(nccl_comm, a_world_of_one_gives_the_bits_of_no_communicator) {
  ncclComm_t comm = one_rank_comm();
  cuoptimConfig_t config = test_config_lr(CUOPTIM_ADAM, 0.01);
  config.global_clipnorm = 1.0;
  single_t alone, ranked;
  make_single(&alone, &config);
  make_single(&ranked, &config);
  cuoptimCommOptions_t options = default_options();
  OK(cuoptimSetCommunicator(ranked.opt, &comm, &options));
  expect_rank(ranked.opt, 0, 1);
  for (int step = 0; step < 3; step++) {
    OK(step_single(&alone, step));
    OK(step_single(&ranked, step));
  }
  float a[COUNT], b[COUNT];
  read_single(&alone, a);
  read_single(&ranked, b);
  cr_expect(memcmp(a, b, sizeof a) == 0, "a world of one changed the parameters' bits");
  cr_expect_eq(test_iterations(ranked.opt), 3);
  free_single(&alone);
  free_single(&ranked);
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}

Test(nccl_comm, a_null_communicator_handle_is_refused) {
  if (!test_has_gpu()) cr_skip("no usable CUDA device: NCCL test skipped");
  cuoptimConfig_t config = test_config(CUOPTIM_SGD);
  single_t s;
  make_single(&s, &config);
  ncclComm_t none = NULL;
  cuoptimCommOptions_t options = default_options();
  cr_expect_eq(cuoptimSetCommunicator(s.opt, &none, &options), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect(strstr(cuoptimGetLastErrorMessage(), "cuoptimSetCommunicator: *communicator is NULL"), "message: %s",
            cuoptimGetLastErrorMessage());
  expect_rank(s.opt, 0, 1);
  OK(step_single(&s, 0)); /* still a single process */
  free_single(&s);
}

Test(nccl_comm, set_communicator_after_the_state_is_built_is_refused) {
  ncclComm_t comm = one_rank_comm();
  cuoptimConfig_t config = test_config(CUOPTIM_SGD);
  single_t s;
  make_single(&s, &config);
  int count = 0;
  OK(cuoptimGetWeightCount(s.opt, &count)); /* builds the state */
  cuoptimCommOptions_t options = default_options();
  cr_expect_eq(cuoptimSetCommunicator(s.opt, &comm, &options), CUOPTIM_STATUS_INVALID_STATE);
  expect_rank(s.opt, 0, 1);
  free_single(&s);
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}

/* Detaching (communicator NULL) makes the optimizer a single process again. */
Test(nccl_comm, a_null_communicator_detaches) {
  ncclComm_t comm = one_rank_comm();
  cuoptimConfig_t config = test_config(CUOPTIM_SGD);
  single_t s;
  make_single(&s, &config);
  cuoptimCommOptions_t options = default_options();
  OK(cuoptimSetCommunicator(s.opt, &comm, &options));
  OK(cuoptimSetCommunicator(s.opt, NULL, NULL));
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess); /* nothing of it is used any more */
  OK(step_single(&s, 0));
  cr_expect_eq(test_iterations(s.opt), 1);
  free_single(&s);
}

#ifdef CUOPTIM_TEST_EMULATED_DEVICE

/* A communicator on another GPU than the optimizer's cannot carry its gradients. */
Test(nccl_comm, a_communicator_on_another_device_is_refused) {
  ncclComm_t comm = one_rank_comm();
  cuoptim_emu_nccl_set_cu_device(comm, 3);
  cuoptimConfig_t config = test_config(CUOPTIM_SGD);
  single_t s;
  make_single(&s, &config);
  cuoptimCommOptions_t options = default_options();
  cr_expect_eq(cuoptimSetCommunicator(s.opt, &comm, &options), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect(strstr(cuoptimGetLastErrorMessage(), "the NCCL communicator is on device 3, the optimizer on device 0"),
            "message: %s", cuoptimGetLastErrorMessage());
  expect_rank(s.opt, 0, 1);
  free_single(&s);
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}

Test(nccl_comm, a_failed_communicator_is_refused_with_nccls_text) {
  ncclComm_t comm = one_rank_comm();
  cuoptim_emu_nccl_inject_async_error(comm, ncclSystemError, "socket closed by peer");
  cuoptimConfig_t config = test_config(CUOPTIM_SGD);
  single_t s;
  make_single(&s, &config);
  cuoptimCommOptions_t options = default_options();
  cr_expect_eq(cuoptimSetCommunicator(s.opt, &comm, &options), CUOPTIM_STATUS_NCCL_ERROR);
  const char *message = cuoptimGetLastErrorMessage();
  cr_expect(strstr(message, ncclGetErrorString(ncclSystemError)) && strstr(message, "socket closed by peer"),
            "message: %s", message);
  expect_rank(s.opt, 0, 1);
  free_single(&s);
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}

/* NCCL reports a failure of work already enqueued (a remote rank gone) through
 * ncclCommGetAsyncError: the next step fails with NCCL's text before it enqueues anything, and
 * the optimizer refuses further steps, as after any failed collective. */
Test(nccl_comm, an_asynchronous_nccl_error_fails_the_next_step) {
  ncclComm_t comm = one_rank_comm();
  cuoptimConfig_t config = test_config(CUOPTIM_SGD);
  single_t s;
  make_single(&s, &config);
  cuoptimCommOptions_t options = default_options();
  OK(cuoptimSetCommunicator(s.opt, &comm, &options));
  OK(step_single(&s, 0));
  float before[COUNT], after[COUNT];
  read_single(&s, before);
  cuoptim_emu_nccl_inject_async_error(comm, ncclRemoteError, "rank 3 exited");
  cr_expect_eq(step_single(&s, 1), CUOPTIM_STATUS_NCCL_ERROR);
  const char *message = cuoptimGetLastErrorMessage();
  cr_expect(strstr(message, "cuoptimApplyGradients") && strstr(message, ncclGetErrorString(ncclRemoteError)) &&
                strstr(message, "rank 3 exited"),
            "message: %s", message);
  read_single(&s, after);
  cr_expect(memcmp(before, after, sizeof before) == 0, "the failed step changed the parameters");
  cr_expect_eq(test_iterations(s.opt), 1);
  cr_expect_eq(step_single(&s, 2), CUOPTIM_STATUS_INVALID_STATE);
  free_single(&s);
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}

/* A wait with a deadline watches NCCL's asynchronous error too: a failed peer ends it at once
 * with NCCL's text, not at the deadline with TIMEOUT; the optimizer then refuses further steps. */
Test(nccl_comm, synchronize_with_a_timeout_reports_an_asynchronous_nccl_error) {
  ncclComm_t comm = one_rank_comm();
  cuoptimConfig_t config = test_config(CUOPTIM_SGD);
  single_t s;
  make_single(&s, &config);
  cuoptimCommOptions_t options = default_options();
  OK(cuoptimSetCommunicator(s.opt, &comm, &options));
  OK(step_single(&s, 0));
  OK(cuoptimSynchronizeTimeout(s.opt, 1000));
  cuoptim_emu_nccl_inject_async_error(comm, ncclRemoteError, "rank 3 exited");
  cr_expect_eq(cuoptimSynchronizeTimeout(s.opt, 60000), CUOPTIM_STATUS_NCCL_ERROR);
  const char *message = cuoptimGetLastErrorMessage();
  cr_expect(strstr(message, "cuoptimSynchronizeTimeout") && strstr(message, "rank 3 exited"), "message: %s", message);
  cr_expect_eq(step_single(&s, 1), CUOPTIM_STATUS_INVALID_STATE);
  free_single(&s);
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}

#endif /* CUOPTIM_TEST_EMULATED_DEVICE */

#else /* no NCCL in this build */

Test(nccl_comm, without_nccl_set_communicator_is_not_supported_on_the_cuda_backend) {
  if (!test_has_gpu()) cr_skip("no usable CUDA device: NCCL test skipped");
  cuoptimOptimizer_t opt = NULL;
  cuoptimConfig_t config = test_config(CUOPTIM_SGD);
  OK(cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_CUDA, 0));
  cuoptimCommOptions_t options;
  OK(cuoptimCommOptionsInit(&options));
  void *comm = &options; /* never read: the build has nothing to read it with */
  cr_expect_eq(cuoptimSetCommunicator(opt, &comm, &options), CUOPTIM_STATUS_NOT_SUPPORTED);
  cr_expect(strstr(cuoptimGetLastErrorMessage(), "no NCCL"), "message: %s", cuoptimGetLastErrorMessage());
  int r = -1, w = -1;
  OK(cuoptimGetRank(opt, &r, &w));
  cr_expect(r == 0 && w == 1);
  OK(cuoptimDestroy(opt));
}

#endif /* CUOPTIM_TEST_HAVE_NCCL */
