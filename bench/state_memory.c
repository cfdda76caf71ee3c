/*
 * cuoptim-state-memory — the optimizer state each rank holds, sharded and unsharded, measured with
 * cuoptimGetStateBytes after a real step. Run under mpirun with any number of ranks:
 *
 *   mpirun -np 4 build/cuoptim-state-memory [--backend host|cuda] [--params N] [--variables K]
 *
 * --backend cuda (builds with NCCL) runs the CUDA backend over NCCL, one GPU per rank where there
 * are enough (else all on device 0: the emulated device, or NCCL 2.30+ with
 * NCCL_MULTI_RANK_GPU_ENABLE=1). State sizes are exact on the emulated device too: they are the
 * arena's bytes, not a measurement of speed.
 *
 * Prints one line per configuration (optimizer, parameter type, sharded or not) from rank 0:
 * the bytes per parameter that cuoptim holds on the rank with the most, and the same with the
 * caller's parameter counted (the figure ZeRO-1's 4 + 12/N refers to for float32 Adam).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"

#ifdef CUOPTIM_STATE_MEMORY_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "nccl_bootstrap.h"
#endif

static cuoptimBackend_t backend = CUOPTIM_BACKEND_HOST;
#ifdef CUOPTIM_STATE_MEMORY_NCCL
static ncclComm_t nccl;
static int device;
#endif

static void fail(const char *what) {
  fprintf(stderr, "cuoptim-state-memory: %s: %s\n", what, cuoptimGetLastErrorMessage());
  MPI_Abort(MPI_COMM_WORLD, 3);
}

/* The largest state any rank holds for `params` parameters in `variables` variables. */
static size_t measure(cuoptimOptimizerKind_t kind, cuoptimDtype_t dtype, int shard, size_t params, int variables) {
  cuoptimConfig_t config;
  cuoptimOptimizer_t opt;
  int ordinal = 0;
#ifdef CUOPTIM_STATE_MEMORY_NCCL
  ordinal = device;
#endif
  if (cuoptimConfigInit(&config, kind) || cuoptimCreate(&opt, &config, backend, ordinal)) fail("create");
  size_t element = dtype == CUOPTIM_FLOAT32 ? 4 : 2, per = params / (size_t)variables;
  char *param = NULL, *grad = NULL;
#ifdef CUOPTIM_STATE_MEMORY_NCCL
  if (backend == CUOPTIM_BACKEND_CUDA) {
    if (cudaMalloc((void **)&param, params * element) != cudaSuccess ||
        cudaMalloc((void **)&grad, params * element) != cudaSuccess ||
        cudaMemset(param, 0, params * element) != cudaSuccess || cudaMemset(grad, 0, params * element) != cudaSuccess)
      fail("cudaMalloc");
  }
#endif
  if (backend == CUOPTIM_BACKEND_HOST) {
    param = calloc(params, element);
    grad = calloc(params, element);
  }
  cuoptimGradient_t *grads = calloc((size_t)variables, sizeof *grads);
  if (!param || !grad || !grads) fail("out of memory");
  for (int k = 0; k < variables; k++) {
    char name[32];
    snprintf(name, sizeof name, "layer%d/kernel", k);
    size_t count = k + 1 == variables ? params - per * (size_t)k : per;
    cuoptimVariable_t v;
    if (cuoptimAddVariable(opt, name, param + per * (size_t)k * element, dtype, count, &v)) fail("add variable");
    grads[k] = (cuoptimGradient_t){v, grad + per * (size_t)k * element, dtype};
  }
  cuoptimCommOptions_t options;
  cuoptimCommOptionsInit(&options);
  options.shard_state = shard;
  MPI_Comm comm = MPI_COMM_WORLD;
  const void *handle = &comm;
#ifdef CUOPTIM_STATE_MEMORY_NCCL
  if (backend == CUOPTIM_BACKEND_CUDA) handle = &nccl;
#endif
  if (cuoptimSetCommunicator(opt, handle, &options)) fail("set communicator");
  if (cuoptimApplyGradients(opt, variables, grads, NULL)) fail("step");
  size_t bytes = 0, largest = 0;
  if (cuoptimGetStateBytes(opt, &bytes)) fail("state bytes");
  unsigned long long mine = bytes, most = 0;
  MPI_Allreduce(&mine, &most, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  largest = (size_t)most;
  cuoptimDestroy(opt);
#ifdef CUOPTIM_STATE_MEMORY_NCCL
  if (backend == CUOPTIM_BACKEND_CUDA) {
    cudaFree(param);
    cudaFree(grad);
    param = grad = NULL;
  }
#endif
  free(param);
  free(grad);
  free(grads);
  return largest;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  size_t params = (size_t)1 << 22;
  int variables = 64;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--params") && i + 1 < argc) params = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--variables") && i + 1 < argc) variables = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--backend") && i + 1 < argc && !strcmp(argv[i + 1], "host")) i++;
#ifdef CUOPTIM_STATE_MEMORY_NCCL
    else if (!strcmp(argv[i], "--backend") && i + 1 < argc && !strcmp(argv[i + 1], "cuda")) {
      backend = CUOPTIM_BACKEND_CUDA;
      i++;
    }
#endif
    else {
      fprintf(stderr, "usage: mpirun -np N %s [--backend host|cuda] [--params N] [--variables K]\n", argv[0]);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  if (variables < 1 || params < (size_t)variables) {
    fprintf(stderr, "cuoptim-state-memory: need --params >= --variables >= 1\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  int rank, world;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
#ifdef CUOPTIM_STATE_MEMORY_NCCL
  if (backend == CUOPTIM_BACKEND_CUDA) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      fprintf(stderr, "cuoptim-state-memory: --backend cuda: no CUDA device\n");
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
    char err[512];
    nccl_bootstrap_info_t where = {0, 0, 0, 0};
    if (nccl_bootstrap_from_mpi(&nccl, MPI_COMM_WORLD, devices >= world ? -1 : 0, &where, err, sizeof err) != 0) {
      fprintf(stderr, "cuoptim-state-memory: %s\n", err);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
    device = where.device;
  }
#endif
  if (rank == 0)
    printf("| ranks | backend | optimizer | parameters | state | cuoptim bytes/param (largest rank) | with the parameter |\n"
           "|---|---|---|---|---|---|---|\n");
  const struct { cuoptimOptimizerKind_t kind; cuoptimDtype_t dtype; const char *name, *type; } rows[] = {
      {CUOPTIM_ADAM, CUOPTIM_FLOAT32, "Adam", "float32"},
      {CUOPTIM_ADAM, CUOPTIM_BFLOAT16, "Adam", "bfloat16"},
  };
  for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++)
    for (int shard = 0; shard < 2; shard++) {
      size_t bytes = measure(rows[r].kind, rows[r].dtype, shard, params, variables);
      double per = (double)bytes / (double)params, element = rows[r].dtype == CUOPTIM_FLOAT32 ? 4.0 : 2.0;
      if (rank == 0)
        printf("| %d | %s | %s | %s | %s | %.3f | %.3f |\n", world, backend == CUOPTIM_BACKEND_CUDA ? "CUDA" : "host",
               rows[r].name, rows[r].type,
               shard ? "sharded" : "unsharded", per, per + element);
    }
#ifdef CUOPTIM_STATE_MEMORY_NCCL
  if (backend == CUOPTIM_BACKEND_CUDA) ncclCommDestroy(nccl);
#endif
  MPI_Finalize();
  return 0;
}
