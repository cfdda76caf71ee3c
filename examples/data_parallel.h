/*
 * data_parallel.h — what train_mlp needs to run as one rank of a data-parallel job started by
 * mpirun: MPI started and stopped, the optimizer given its communicator (MPI_COMM_WORLD on the
 * host backend; on the CUDA backend an NCCL communicator built from MPI), each rank's shard of a
 * batch, and the few exchanges of the program's own (metrics, checksums, agreeing on a failure).
 *
 * A process that no MPI launcher started (none of OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK in its
 * environment), and every process of a build without MPI, is a world of one rank that never calls
 * MPI: a plain run. Every function returns 0, or -1 after mlp_fail() recorded why; the ones marked
 * collective must be called by every rank, in the same order.
 */
#ifndef DATA_PARALLEL_H
#define DATA_PARALLEL_H

#include <cuoptim.h>

#include "mlp.h"

typedef struct {
  int active;     /* started by an MPI launcher: MPI is initialised (a world of 1 too) */
  int rank, world; /* 0 and 1 when not active */
  int local_rank; /* among the ranks on this host */
  void *nccl;     /* the CUDA model's ncclComm_t, once dp_open_nccl made it */
} dp_world_t;

/* MPI_Init when an MPI launcher started the process. Refuses a launch of several ranks in a build
 * without MPI (each would train alone). */
int dp_start(dp_world_t *world, int *argc, char ***argv);

/* Destroys the NCCL communicator and finalises MPI: after cuoptimDestroy. */
void dp_stop(dp_world_t *world);

/* Ends every rank at once (MPI_Abort): after a failure in the middle of training, where the other
 * ranks may wait in a collective for this one. Returns only when not active. */
void dp_abort(const dp_world_t *world);

/* Collective: the lowest rank whose `failed` is nonzero, or -1 when none is. */
int dp_lowest_failing_rank(const dp_world_t *world, int failed);

/* Collective: every rank's sums added in rank order, so that every rank holds the same bytes. */
int dp_sum_metrics(const dp_world_t *world, mlp_metrics_t *metrics);

/* Collective: all[r] = rank r's value, on every rank (all has world entries). */
int dp_gather_u64(const dp_world_t *world, unsigned long long value, unsigned long long *all);

/* This rank's examples of a batch of `count`: [*offset, *offset + *length), the batch cut into
 * world parts whose sizes differ by one at most (the first count % world ranks one more). */
void dp_shard(const dp_world_t *world, int count, int *offset, int *length);

/* Collective, CUDA model: makes `device` current and builds the NCCL communicator of the ranks
 * (rank 0's unique id sent to the others with MPI_Bcast). Refused in a build without NCCL. */
int dp_open_nccl(dp_world_t *world, int device);

/* Collective: cuoptimSetCommunicator with MPI_COMM_WORLD (host backend) or the NCCL communicator
 * (CUDA backend). */
int dp_attach(const dp_world_t *world, cuoptimOptimizer_t optimizer, cuoptimBackend_t backend,
              const cuoptimCommOptions_t *options);

#endif /* DATA_PARALLEL_H */
