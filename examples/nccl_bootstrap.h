/*
 * nccl_bootstrap.h — an NCCL communicator for cuoptim's data-parallel path
 * (cuoptimSetCommunicator on CUOPTIM_BACKEND_CUDA), made one of three ways. Header-only C99 (plus
 * POSIX): copy it into a project or include it from examples/.
 *
 *   nccl_bootstrap_from_mpi       one process per GPU started by mpirun: rank 0's ncclUniqueId
 *                                 reaches the others through MPI_Bcast. Include <mpi.h> first.
 *   nccl_bootstrap_from_env       one process per GPU started by a launcher that sets RANK,
 *                                 WORLD_SIZE and LOCAL_RANK (torchrun does): rank 0 writes the id
 *                                 to a file every process can read.
 *   nccl_bootstrap_single_process one process driving several GPUs (ncclCommInitAll): one
 *                                 communicator, one optimizer and one thread per GPU.
 *
 * Multi-node is the same code: mpirun -np 16 -H host1:8,host2:8 ./train, or the launcher on each
 * host with a file path on a file system both hosts share. The first two make this process's GPU
 * current (cudaSetDevice): the device to create the optimizer on. Each returns 0, or -1
 * with a message in err (err_size bytes, may be NULL) that names the step and carries NCCL's
 * own text. Destroy the communicator with ncclCommDestroy after cuoptimDestroy.
 *
 *   ncclComm_t comm;
 *   nccl_bootstrap_info_t where = {0, 0, 0, 0};
 *   char err[512];
 *   if (nccl_bootstrap_from_mpi(&comm, MPI_COMM_WORLD, -1, &where, err, sizeof err) != 0) abort_with(err);
 *   cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_CUDA, where.device);
 *   cuoptimSetCommunicator(opt, &comm, &options);
 */
#ifndef NCCL_BOOTSTRAP_H
#define NCCL_BOOTSTRAP_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

/* Where this process landed. */
typedef struct {
  int rank, world;  /* in the communicator */
  int local_rank;   /* among the processes of this host */
  int device;       /* the CUDA device, now current */
} nccl_bootstrap_info_t;

static inline int nccl_bootstrap_error(char *err, size_t err_size, const char *fmt, ...) {
  if (err && err_size) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(err, err_size, fmt, args);
    va_end(args);
  }
  return -1;
}

static inline int nccl_bootstrap_nccl_error(char *err, size_t err_size, const char *what, ncclResult_t result) {
  const char *detail = ncclGetLastError(NULL);
  return nccl_bootstrap_error(err, err_size, "%s: %s%s%s", what, ncclGetErrorString(result),
                              detail && *detail ? ": " : "", detail && *detail ? detail : "");
}

/* Makes `device` current; a negative device means local_rank. One GPU per process: more local
 * ranks than GPUs is refused (NCCL before 2.30 cannot put two ranks on one GPU). */
static inline int nccl_bootstrap_set_device(int device, int local_rank, nccl_bootstrap_info_t *info, char *err,
                                     size_t err_size) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) return nccl_bootstrap_error(err, err_size, "cudaGetDeviceCount: %s", cudaGetErrorString(e));
  if (device < 0) device = local_rank;
  if (device >= count)
    return nccl_bootstrap_error(err, err_size,
                                "device %d (local rank %d): this host has %d CUDA devices: start at most one "
                                "process per GPU, or pass the device",
                                device, local_rank, count);
  e = cudaSetDevice(device);
  if (e != cudaSuccess) return nccl_bootstrap_error(err, err_size, "cudaSetDevice(%d): %s", device, cudaGetErrorString(e));
  info->local_rank = local_rank;
  info->device = device;
  return 0;
}

#if defined(MPI_VERSION)
/* Every process of `mpi` calls it together (it is collective). device < 0: the process's rank
 * among those of its host (MPI_COMM_TYPE_SHARED), so `mpirun -np 8` on an 8-GPU host gives each
 * process its own GPU. The NCCL rank is the MPI rank. */
static inline int nccl_bootstrap_from_mpi(ncclComm_t *comm, MPI_Comm mpi, int device, nccl_bootstrap_info_t *info, char *err,
                                   size_t err_size) {
  nccl_bootstrap_info_t where = {0, 0, 0, 0};
  MPI_Comm local;
  if (MPI_Comm_rank(mpi, &where.rank) != MPI_SUCCESS || MPI_Comm_size(mpi, &where.world) != MPI_SUCCESS)
    return nccl_bootstrap_error(err, err_size, "MPI_Comm_rank / MPI_Comm_size failed");
  if (MPI_Comm_split_type(mpi, MPI_COMM_TYPE_SHARED, where.rank, MPI_INFO_NULL, &local) != MPI_SUCCESS)
    return nccl_bootstrap_error(err, err_size, "MPI_Comm_split_type failed");
  int local_rank = 0;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_free(&local);
  /* Rank 0 sends whether it has an id with the id, so that a failure there fails every rank. */
  struct {
    int ok;
    ncclUniqueId id;
  } message;
  memset(&message, 0, sizeof message);
  ncclResult_t result = ncclSuccess;
  if (where.rank == 0) {
    result = ncclGetUniqueId(&message.id);
    message.ok = result == ncclSuccess;
  }
  if (MPI_Bcast(&message, (int)sizeof message, MPI_BYTE, 0, mpi) != MPI_SUCCESS)
    return nccl_bootstrap_error(err, err_size, "MPI_Bcast of the NCCL unique id failed");
  if (!message.ok)
    return where.rank == 0 ? nccl_bootstrap_nccl_error(err, err_size, "ncclGetUniqueId", result)
                           : nccl_bootstrap_error(err, err_size, "ncclGetUniqueId failed on rank 0");
  if (nccl_bootstrap_set_device(device, local_rank, &where, err, err_size) != 0) return -1;
  result = ncclCommInitRank(comm, where.world, message.id, where.rank);
  if (result != ncclSuccess) return nccl_bootstrap_nccl_error(err, err_size, "ncclCommInitRank", result);
  if (info) *info = where;
  return 0;
}
#endif /* MPI_VERSION */

/* A whole decimal int from the environment variable `name`. */
static inline int nccl_bootstrap_env_int(const char *name, int *value, char *err, size_t err_size) {
  const char *text = getenv(name);
  if (!text || !*text)
    return nccl_bootstrap_error(err, err_size, "%s is not set (a launcher such as torchrun sets RANK, WORLD_SIZE "
                                "and LOCAL_RANK)", name);
  char *end = NULL;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno || *end || v < 0 || v > INT_MAX)
    return nccl_bootstrap_error(err, err_size, "%s = \"%s\" is not a rank", name, text);
  *value = (int)v;
  return 0;
}

/* Rank 0: the id into a temporary file beside `path`, flushed to disk, then renamed onto `path`,
 * so a reader sees either no file or the whole id. An existing file is refused: it would be the
 * id of an earlier run, which the other ranks may already have read. */
static inline int nccl_bootstrap_write_id(const char *path, const ncclUniqueId *id, char *err, size_t err_size) {
  struct stat st;
  if (stat(path, &st) == 0)
    return nccl_bootstrap_error(err, err_size,
                                "%s exists (the id file of an earlier run?): remove it, or give each run a path of "
                                "its own",
                                path);
  char tmp[PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
    return nccl_bootstrap_error(err, err_size, "%s: path too long", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return nccl_bootstrap_error(err, err_size, "open(%s): %s", tmp, strerror(errno));
  ssize_t written = write(fd, id, sizeof *id);
  int failed = written != (ssize_t)sizeof *id || fsync(fd) != 0;
  int saved = errno;
  failed |= close(fd) != 0;
  if (failed || rename(tmp, path) != 0) {
    if (!failed) saved = errno;
    unlink(tmp);
    return nccl_bootstrap_error(err, err_size, "writing the NCCL id to %s: %s", path, strerror(saved));
  }
  return 0;
}

/* The other ranks: wait for the file, at most timeout_s seconds. */
static inline int nccl_bootstrap_read_id(const char *path, double timeout_s, ncclUniqueId *id, char *err, size_t err_size) {
  struct timespec start, now, pause = {0, 10 * 1000 * 1000}; /* 10 ms between looks */
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    FILE *f = fopen(path, "rb");
    if (f) {
      size_t got = fread(id, 1, sizeof *id, f);
      fclose(f);
      if (got == sizeof *id) return 0;
      return nccl_bootstrap_error(err, err_size, "%s holds %zu bytes, not an NCCL id of %zu", path, got, sizeof *id);
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
    double waited = (double)(now.tv_sec - start.tv_sec) + 1e-9 * (double)(now.tv_nsec - start.tv_nsec);
    if (waited > timeout_s)
      return nccl_bootstrap_error(err, err_size,
                                  "no NCCL id at %s after %.0f s: is rank 0 running, and is the path on a file "
                                  "system every host shares?",
                                  path, timeout_s);
    nanosleep(&pause, NULL);
  }
}

/* RANK, WORLD_SIZE and LOCAL_RANK from the environment, the GPU LOCAL_RANK, and the id through
 * `id_path`: rank 0 writes it, the others wait for it at most timeout_s seconds. The path must not
 * exist before the run (use one per run, e.g. with the job's id in it); rank 0 removes it once
 * every rank has joined. */
static inline int nccl_bootstrap_from_env(ncclComm_t *comm, const char *id_path, double timeout_s, nccl_bootstrap_info_t *info,
                                   char *err, size_t err_size) {
  nccl_bootstrap_info_t where = {0, 0, 0, 0};
  int local_rank = 0;
  if (nccl_bootstrap_env_int("RANK", &where.rank, err, err_size) != 0 ||
      nccl_bootstrap_env_int("WORLD_SIZE", &where.world, err, err_size) != 0 ||
      nccl_bootstrap_env_int("LOCAL_RANK", &local_rank, err, err_size) != 0)
    return -1;
  if (where.world < 1 || where.rank >= where.world)
    return nccl_bootstrap_error(err, err_size, "RANK = %d with WORLD_SIZE = %d", where.rank, where.world);
  if (nccl_bootstrap_set_device(-1, local_rank, &where, err, err_size) != 0) return -1;
  ncclUniqueId id;
  if (where.rank == 0) {
    ncclResult_t result = ncclGetUniqueId(&id);
    if (result != ncclSuccess) return nccl_bootstrap_nccl_error(err, err_size, "ncclGetUniqueId", result);
    if (nccl_bootstrap_write_id(id_path, &id, err, err_size) != 0) return -1;
  } else if (nccl_bootstrap_read_id(id_path, timeout_s, &id, err, err_size) != 0) {
    return -1;
  }
  ncclResult_t result = ncclCommInitRank(comm, where.world, id, where.rank);
  /* ncclCommInitRank returns once every rank has joined, so every rank has read the file. */
  if (where.rank == 0) unlink(id_path);
  if (result != ncclSuccess) return nccl_bootstrap_nccl_error(err, err_size, "ncclCommInitRank", result);
  if (info) *info = where;
  return 0;
}

/* One process, `ndev` GPUs: comms[i] is rank i, on devlist[i] (devices 0 .. ndev-1 when devlist is
 * NULL). Create optimizer i on that device and attach comms[i], then step each rank from a thread
 * of its own: a step issues its own NCCL groups in an order that an enclosing
 * ncclGroupStart/ncclGroupEnd would merge, and its first step waits for the other ranks. */
static inline int nccl_bootstrap_single_process(ncclComm_t *comms, int ndev, const int *devlist, char *err, size_t err_size) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) return nccl_bootstrap_error(err, err_size, "cudaGetDeviceCount: %s", cudaGetErrorString(e));
  if (ndev < 1 || ndev > count)
    return nccl_bootstrap_error(err, err_size, "ndev = %d: this host has %d CUDA devices", ndev, count);
  ncclResult_t result = ncclCommInitAll(comms, ndev, devlist);
  if (result != ncclSuccess) return nccl_bootstrap_nccl_error(err, err_size, "ncclCommInitAll", result);
  return 0;
}

#endif /* NCCL_BOOTSTRAP_H */
