/*
 * launch.h — the device-side tables and the launchers of cuda/kernels.cu, called by the CUDA
 * backend (host/backend_cuda.c). Plain C.
 */
#ifndef CUOPTIM_LAUNCH_H
#define CUOPTIM_LAUNCH_H

#include <stdint.h>

#include "prologue.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Elements per chunk: one thread block handles one chunk of one variable. A multiple of
 * 4 * CUOPTIM_BLOCK so vector loads stay aligned from chunk to chunk. */
#define CUOPTIM_CHUNK 8192
#define CUOPTIM_BLOCK 256

/* One variable as the kernels see it; built at registration, uploaded once. */
typedef struct cuoptimDeviceVariable {
  void *param;
  float *master;     /* NULL for float32 parameters */
  float *slots[3];
  float *average;
  float *accumulator;
  uint64_t count;
  int32_t param_dtype;
  int32_t use_weight_decay;
  int64_t first_chunk; /* index of its first chunk in the chunk list */
} cuoptimDeviceVariable;

/* This step's gradient of one variable; re-uploaded only when the caller's pointers change. */
typedef struct cuoptimDeviceGradient {
  const void *grad; /* NULL: no gradient this step */
  int32_t dtype;
  int32_t reserved;
} cuoptimDeviceGradient;

/* One unit of work: chunk `chunk` (elements chunk*CUOPTIM_CHUNK ...) of variable `variable`. */
typedef struct cuoptimChunk {
  int32_t variable;
  int32_t chunk;
} cuoptimChunk;

/* Partial sums of one chunk, reduced per variable in chunk order (deterministic). */
typedef struct cuoptimChunkPartial {
  double a, b;
  int32_t nonfinite;
  int32_t reserved;
} cuoptimChunkPartial;

/* Everything a step's kernels read, device pointers. */
typedef struct cuoptimDeviceStep {
  const cuoptimDeviceVariable *variables;
  const cuoptimDeviceGradient *grads;
  const cuoptimChunk *chunks;
  cuoptimChunkPartial *partials;
  cuoptimScalarState *state;
  cuoptimStepScalars *scalars;
  cuoptimTensorScalars *tensors;
  const cuoptimPrologueParams *prologue; /* device copy */
  int32_t num_variables;
  int32_t reserved;
  int64_t num_chunks;
} cuoptimDeviceStep;

/* Gradient-table entries one scatter launch carries in its argument (16 bytes each; kernel
 * arguments up to 32 KB need CUDA 12.1 and a Volta or newer GPU). */
#define CUOPTIM_GRADIENT_BATCH 1984

typedef struct cuoptimGradientBatch {
  int32_t first, count;
  int64_t reserved;
  cuoptimDeviceGradient entries[CUOPTIM_GRADIENT_BATCH];
} cuoptimGradientBatch;

/* Each returns cudaGetLastError() after the launch, as an int (cudaError_t). */
int cuoptim_launch_inspect(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, void *stream);
int cuoptim_launch_prologue(const cuoptimDeviceStep *step, int inspected, void *stream);
int cuoptim_launch_update(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, void *stream);
int cuoptim_launch_finish(const cuoptimDeviceStep *step, void *stream);
/* Lamb's update in two halves (cuoptim_launch_update runs both): pass 1 and the per-variable
 * norms, then pass 2; sharded state combines the norms across ranks between them
 * (cuoptim_launch_combine_lamb: rank-ordered sums of gathered[r * num_variables + k], then the
 * trust ratio). */
int cuoptim_launch_lamb_pass1(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, void *stream);
int cuoptim_launch_lamb_pass2(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, void *stream);
int cuoptim_launch_combine_lamb(const cuoptimDeviceStep *step, const cuoptimTensorScalars *gathered, int world,
                                void *stream);
/* Sharded state: step->tensors[k] = the rank-ordered sum of gathered[r * num_variables + k] (the
 * squared norms; the OR of the non-finite flags), then its clip denominator. */
/* The CUDA backend's tables of an optimizer, once built (host/backend_cuda.c). */
struct cuoptimOptimizer;
const cuoptimDeviceStep *cuoptim_cuda_device_step(struct cuoptimOptimizer *opt);

int cuoptim_launch_combine_shards(const cuoptimDeviceStep *step, const cuoptimTensorScalars *gathered, int world,
                                  void *stream);
int cuoptim_launch_finalize(const cuoptimDeviceStep *step, void *stream);
/* Writes batch->entries into table[first ...] (the batch travels as the kernel's argument). */
int cuoptim_launch_scatter_gradients(cuoptimDeviceGradient *table, const cuoptimGradientBatch *batch, void *stream);
/* Build: fill slots with their initial values and masters from the half parameters. */
int cuoptim_launch_build(const cuoptimDeviceStep *step, float slot0_initial, int slot0_copies_variable, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* CUOPTIM_LAUNCH_H */
