/* train_mlp's data-parallel glue (data_parallel.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_parallel.h"

#ifdef TRAIN_MLP_HAVE_MPI
#include <mpi.h>
#endif
#ifdef TRAIN_MLP_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

/* The ranks an MPI launcher says it started (Open MPI, then MPICH's and Intel MPI's Hydra), 1 for
 * a PMIx launcher that names no size, 0 when no launcher started this process. */
static int launched_ranks(const char **variable) {
  static const char *const sizes[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    const char *text = getenv(sizes[i]);
    if (text && *text) {
      *variable = sizes[i];
      int n = atoi(text);
      return n > 0 ? n : 1;
    }
  }
  *variable = "PMIX_RANK";
  return getenv("PMIX_RANK") ? 1 : 0;
}

void dp_shard(const dp_world_t *w, int count, int *offset, int *length) {
  int base = count / w->world, extra = count % w->world;
  *length = base + (w->rank < extra);
  *offset = w->rank * base + (w->rank < extra ? w->rank : extra);
}

#ifdef TRAIN_MLP_HAVE_MPI

static int mpi_failed(int code, const char *what) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", code);
  return mlp_fail("%s: %s", what, text);
}

int dp_start(dp_world_t *w, int *argc, char ***argv) {
  memset(w, 0, sizeof *w);
  w->world = 1;
  const char *variable;
  if (!launched_ranks(&variable)) return 0;
  int code = MPI_Init(argc, argv);
  if (code != MPI_SUCCESS) return mlp_fail("MPI_Init (%s is set: started by an MPI launcher) failed", variable);
  w->active = 1;
  /* The program's own exchanges return errors rather than abort, as cuoptim's do. */
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &w->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w->world);
  MPI_Comm local;
  code = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w->rank, MPI_INFO_NULL, &local);
  if (code != MPI_SUCCESS) return mpi_failed(code, "MPI_Comm_split_type (the ranks of this host)");
  MPI_Comm_rank(local, &w->local_rank);
  MPI_Comm_free(&local);
  return 0;
}

void dp_stop(dp_world_t *w) {
#ifdef TRAIN_MLP_HAVE_NCCL
  if (w->nccl) ncclCommDestroy((ncclComm_t)w->nccl);
  w->nccl = NULL;
#endif
  if (w->active) MPI_Finalize();
  w->active = 0;
}

void dp_abort(const dp_world_t *w) {
  if (w->active && w->world > 1) MPI_Abort(MPI_COMM_WORLD, 1);
}

int dp_lowest_failing_rank(const dp_world_t *w, int failed) {
  if (!w->active) return failed ? 0 : -1;
  int mine = failed ? w->rank : w->world, lowest = 0;
  int code = MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (code != MPI_SUCCESS) return w->rank; /* cannot agree: every rank reports for itself */
  return lowest < w->world ? lowest : -1;
}

int dp_sum_metrics(const dp_world_t *w, mlp_metrics_t *m) {
  if (!w->active || w->world == 1) return 0;
  mlp_metrics_t *all = malloc((size_t)w->world * sizeof *all);
  if (!all) return mlp_fail("out of memory for %d ranks' metrics", w->world);
  int code = MPI_Allgather(m, (int)sizeof *m, MPI_BYTE, all, (int)sizeof *m, MPI_BYTE, MPI_COMM_WORLD);
  if (code == MPI_SUCCESS) {
    memset(m, 0, sizeof *m);
    for (int r = 0; r < w->world; r++) {
      m->loss_sum += all[r].loss_sum;
      m->correct += all[r].correct;
      m->count += all[r].count;
    }
  }
  free(all);
  return code == MPI_SUCCESS ? 0 : mpi_failed(code, "MPI_Allgather of the training metrics");
}

int dp_gather_u64(const dp_world_t *w, unsigned long long value, unsigned long long *all) {
  if (!w->active) {
    all[0] = value;
    return 0;
  }
  uint64_t mine = value;
  uint64_t *gathered = malloc((size_t)w->world * sizeof *gathered);
  if (!gathered) return mlp_fail("out of memory for %d ranks' checksums", w->world);
  int code = MPI_Allgather(&mine, 1, MPI_UINT64_T, gathered, 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (int r = 0; code == MPI_SUCCESS && r < w->world; r++) all[r] = gathered[r];
  free(gathered);
  return code == MPI_SUCCESS ? 0 : mpi_failed(code, "MPI_Allgather of the parameter checksums");
}

#ifdef TRAIN_MLP_HAVE_NCCL
static int nccl_failed(ncclResult_t result, const char *what) {
  return mlp_fail("%s: %s", what, ncclGetErrorString(result));
}

int dp_open_nccl(dp_world_t *w, int device) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return mlp_fail("cudaSetDevice(%d): %s", device, cudaGetErrorString(e));
  /* Rank 0 sends whether it got an id along with the id, so that its failure fails every rank
   * rather than leaving them in ncclCommInitRank. */
  struct {
    int ok;
    ncclUniqueId id;
  } message;
  memset(&message, 0, sizeof message);
  ncclResult_t result = ncclSuccess;
  if (w->rank == 0) {
    result = ncclGetUniqueId(&message.id);
    message.ok = result == ncclSuccess;
  }
  int code = MPI_Bcast(&message, (int)sizeof message, MPI_BYTE, 0, MPI_COMM_WORLD);
  if (code != MPI_SUCCESS) return mpi_failed(code, "MPI_Bcast of the NCCL unique id");
  if (!message.ok)
    return w->rank == 0 ? nccl_failed(result, "ncclGetUniqueId") : mlp_fail("ncclGetUniqueId failed on rank 0");
  ncclComm_t comm;
  result = ncclCommInitRank(&comm, w->world, message.id, w->rank);
  if (result != ncclSuccess) return nccl_failed(result, "ncclCommInitRank");
  w->nccl = comm;
  return 0;
}
#else
int dp_open_nccl(dp_world_t *w, int device) {
  (void)w;
  (void)device;
  return mlp_fail("--device cuda under mpirun: this build of train_mlp has no NCCL (data-parallel runs on the GPU "
                  "need it)");
}
#endif

int dp_attach(const dp_world_t *w, cuoptimOptimizer_t opt, cuoptimBackend_t backend,
              const cuoptimCommOptions_t *options) {
  cuoptimStatus_t status;
  if (backend == CUOPTIM_BACKEND_CUDA) {
#ifdef TRAIN_MLP_HAVE_NCCL
    ncclComm_t comm = (ncclComm_t)w->nccl;
    status = cuoptimSetCommunicator(opt, &comm, options);
#else
    return mlp_fail("--device cuda under mpirun: this build of train_mlp has no NCCL");
#endif
  } else {
    MPI_Comm comm = MPI_COMM_WORLD;
    status = cuoptimSetCommunicator(opt, &comm, options);
  }
  if (status != CUOPTIM_STATUS_SUCCESS) return mlp_fail("%s", cuoptimGetLastErrorMessage());
  return 0;
}

#else /* no MPI in this build: every process is a world of one */

int dp_start(dp_world_t *w, int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  memset(w, 0, sizeof *w);
  w->world = 1;
  const char *variable;
  int ranks = launched_ranks(&variable);
  if (ranks > 1)
    return mlp_fail("started as one of %d ranks (%s is set), but this build of train_mlp has no MPI: each rank "
                    "would train alone (rebuild where MPI is installed, or run train_mlp without mpirun)",
                    ranks, variable);
  return 0;
}

void dp_stop(dp_world_t *w) { (void)w; }

void dp_abort(const dp_world_t *w) { (void)w; }

int dp_lowest_failing_rank(const dp_world_t *w, int failed) {
  (void)w;
  return failed ? 0 : -1;
}

int dp_sum_metrics(const dp_world_t *w, mlp_metrics_t *m) {
  (void)w;
  (void)m;
  return 0;
}

int dp_gather_u64(const dp_world_t *w, unsigned long long value, unsigned long long *all) {
  (void)w;
  all[0] = value;
  return 0;
}

int dp_open_nccl(dp_world_t *w, int device) {
  (void)w;
  (void)device;
  return mlp_fail("this build of train_mlp has no MPI");
}

int dp_attach(const dp_world_t *w, cuoptimOptimizer_t opt, cuoptimBackend_t backend,
              const cuoptimCommOptions_t *options) {
  (void)w;
  (void)opt;
  (void)backend;
  (void)options;
  return mlp_fail("this build of train_mlp has no MPI");
}

#endif
