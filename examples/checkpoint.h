/*
 * checkpoint.h — train_mlp's checkpoints: two files side by side.
 *
 *   PATH            the program's own part: what identifies the run (data, model, batch size, the
 *                   optimizer's Keras config), so that a resume under other options is refused;
 *                   the position (epoch, batches of it done, batches in all); the epoch's running
 *                   training sums; and every parameter as float32. The random state needs no
 *                   file of its own: each epoch's shuffle is drawn from a generator seeded by
 *                   (seed, epoch), so the seed and the position restore it.
 *   PATH.optimizer  the optimizer's whole state, float32 masters of 16-bit parameters
 *                   included: a cuoptim checkpoint (cuoptimSave, safetensors), which
 *                   checkpoint_save_optimizer and checkpoint_load_optimizer write and read.
 *   PATH.optimizer.rankR  instead, with sharded optimizer state (ZeRO-1): rank R's shares of it,
 *                   one file per rank (shard_rank = R; -1 elsewhere), each written by its rank.
 *
 * Each file is written under a temporary name and then renamed, so that a run stopped while
 * writing leaves the previous checkpoint whole. The files are in the machine's byte order.
 * Every function returns 0, or -1 after mlp_fail() recorded why.
 */
#ifndef CHECKPOINT_H
#define CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include <cuoptim.h>

#include "mlp.h"

/* What a resumed run must share with the run that wrote the checkpoint. */
typedef struct {
  unsigned long long seed;
  int32_t points, classes, batch_size, dtype;
  double noise, test_fraction;
  mlp_shape_t shape;
  char optimizer_json[8192]; /* cuoptimConfigToKerasJSON of the optimizer's config */
} checkpoint_identity_t;

/* Where training stands. */
typedef struct {
  int32_t epoch;         /* the epoch in progress, from 0 */
  int32_t batch;         /* batches of that epoch done */
  int64_t global_step;   /* batches done in all */
  mlp_metrics_t running; /* the epoch's training sums so far */
} checkpoint_position_t;

/* Writes PATH (identity, position, `count` parameters) and PATH.optimizer. */
int checkpoint_save(const char *path, const checkpoint_identity_t *identity, const checkpoint_position_t *position,
                    const float *params, size_t count, cuoptimOptimizer_t optimizer, int shard_rank);

/* Reads PATH: refuses a file whose identity differs from *identity (naming what differs) or
 * whose parameter count is not `count`; fills *position and params. */
int checkpoint_load_program(const char *path, const checkpoint_identity_t *identity,
                            checkpoint_position_t *position, float *params, size_t count);

/* The optimizer's state to or from PATH.optimizer. Loading needs every variable registered (and
 * its weight-decay exclusions set) first; cuoptimLoad checks the file against the optimizer and
 * changes nothing when it does not fit. */
int checkpoint_save_optimizer(const char *path, cuoptimOptimizer_t optimizer, int shard_rank);
int checkpoint_load_optimizer(const char *path, cuoptimOptimizer_t optimizer, int shard_rank);

#endif /* CHECKPOINT_H */
