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
  /* Adafactor, rank >= 2: r and c (cuoptimVariableRec.factored), each batch's mean(r) of this
   * step (count / (rows * cols) of them, the moments stage's for the RMS stage) and the last two
   * dimensions; NULL and 0 otherwise (a full velocity) */
  float *factored[2];
  float *row_means;
  int64_t rows, cols;
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

/* One block of the fixed update instances: chunk `chunk` of variable `variable` (variables = 1),
 * or the single chunks of the small variables variable ... variable + variables - 1, one warp
 * each (small tensors packed several to a block: a block per bias would leave most of it idle).
 * The generic update kernel, inspect and Lamb take a chunk a block (cuoptimChunk). */
typedef struct cuoptimWorkItem {
  int32_t variable;
  int32_t chunk;
  int32_t variables;
  int32_t reserved;
} cuoptimWorkItem;

/* Packed: consecutive variables of at most CUOPTIM_PACK_COUNT elements, one a warp. */
#define CUOPTIM_PACK_COUNT 1024
#define CUOPTIM_PACK_VARIABLES (CUOPTIM_BLOCK / 32)

/* Partial sums of one chunk, reduced per variable in chunk order (deterministic). */
typedef struct cuoptimChunkPartial {
  double a, b;
  int32_t nonfinite;
  int32_t reserved;
} cuoptimChunkPartial;

/* One block of Adafactor's moments stage: CUOPTIM_BLOCK rows (r's elements, a thread each) or
 * columns (c's) of a factored variable from line `first` on, or the CUOPTIM_CHUNK elements from
 * `first` on of a variable with a full velocity. A variable's row blocks count themselves (its
 * chunks_done), so that the last forms each batch's mean(r). */
enum { CUOPTIM_AF_ROWS = 0, CUOPTIM_AF_COLUMNS = 1, CUOPTIM_AF_FULL = 2 };

typedef struct cuoptimAdafactorItem {
  int32_t variable;
  int32_t axis; /* CUOPTIM_AF_* */
  int64_t first;
} cuoptimAdafactorItem;

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
  uint32_t *chunks_done; /* per variable: blocks done in this launch, chunks (inspect, Lamb, Adafactor's
                            RMS) or Adafactor's row blocks (0 between launches) */
  int32_t num_variables;
  uint32_t features;   /* this step's cuoptim_update_features: which update instance runs */
  int64_t num_chunks;
  /* 1: the block of a variable's last chunk forms its sums (inspect, Lamb pass 1); 0 (a variable
   * has no chunk on this rank): a reduction launch of its own does, for every variable */
  int32_t every_variable_has_chunks;
  int32_t num_items;
  const cuoptimWorkItem *items; /* the fixed update instances' blocks */
  int32_t num_af_items;
  const cuoptimAdafactorItem *af_items; /* Adafactor's moments stage blocks (NULL for other kinds) */
} cuoptimDeviceStep;

/* The update kernel is compiled for a few common step configurations with their flags as
 * compile-time constants, and once generic (every flag read at run time). The features of a step
 * name its instance; CUOPTIM_UPDATE_FIXED is set only when one fits:
 *   FIXED        no clip or global_clipnorm; no loss scaling, loss_scale_factor, data-parallel
 *                mean, accumulation or EMA; the rule's options off (amsgrad, nesterov, centered,
 *                RMSprop's momentum); SGD with or without momentum. Weight decay is read per
 *                variable (and chunk), outside the loop.
 *   GLOBAL_CLIP  global_clipnorm (the gradient times the prologue's scale)
 *   MASTER       some variable has half parameters (with a float32 master); each variable's
 *                gradients then have its parameters' dtype (float32 ones float32); without
 *                MASTER every parameter and gradient is float32
 *   MOMENTUM     SGD with momentum (not nesterov)
 * Instances (cuda/kernels.cu): every kind but Lamb and Ftrl, plain, GLOBAL_CLIP and MASTER (SGD
 * each also with MOMENTUM); any other step (MASTER with GLOBAL_CLIP included) runs the generic
 * kernel, which gives the same bits. */
enum {
  CUOPTIM_UPDATE_FIXED = 1u << 0,
  CUOPTIM_UPDATE_GLOBAL_CLIP = 1u << 1,
  CUOPTIM_UPDATE_MASTER = 1u << 2,
  CUOPTIM_UPDATE_MOMENTUM = 1u << 3
};

/* The features of a step: the rule's constants, whether some variable has half parameters, and
 * whether every gradient of the step has the dtype that the MASTER (or float32) instance reads. */
static inline uint32_t cuoptim_update_features(const cuoptimRuleParams *p, int any_half_variable,
                                               int gradients_match) {
  if (p->kind == CUOPTIM_LAMB || !gradients_match) return 0;
  if (p->clip != CUOPTIM_CLIP_NONE && p->clip != CUOPTIM_CLIP_GLOBAL_NORM) return 0;
  if (p->dynamic_loss_scale || p->has_loss_scale_factor || p->mean_over_ranks || p->accumulation_steps ||
      p->use_ema || p->amsgrad || p->nesterov || p->centered)
    return 0;
  if (p->has_momentum && p->kind != CUOPTIM_SGD) return 0;
  uint32_t f = CUOPTIM_UPDATE_FIXED;
  if (p->clip == CUOPTIM_CLIP_GLOBAL_NORM) f |= CUOPTIM_UPDATE_GLOBAL_CLIP;
  if (any_half_variable) f |= CUOPTIM_UPDATE_MASTER;
  if (p->has_momentum) f |= CUOPTIM_UPDATE_MOMENTUM;
  return f;
}

/* Gradient-table entries one scatter launch carries in its argument (16 bytes each; kernel
 * arguments up to 32 KB need CUDA 12.1 and a Volta or newer GPU). */
#define CUOPTIM_GRADIENT_BATCH 1984

typedef struct cuoptimGradientBatch {
  int32_t first, count;
  int64_t reserved;
  cuoptimDeviceGradient entries[CUOPTIM_GRADIENT_BATCH];
} cuoptimGradientBatch;

/* Each returns cudaGetLastError() after the launch, as an int (cudaError_t).
 * inspect: the chunks' sums and each variable's (one launch); prologue: the step scalars, then the
 * persistent state advanced (Keras's finish: no launch of its own); update: the update kernel (Lamb:
 * pass 1 with the per-variable norms, pass 2; Adafactor: its moments, RMS and apply stages). */
int cuoptim_launch_inspect(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, void *stream);
/* batch (only without an inspect pass, the prologue being the step's first kernel): gradient-table
 * entries written before the scalars, as cuoptim_launch_scatter_gradients would; NULL: none. */
int cuoptim_launch_prologue(const cuoptimDeviceStep *step, int inspected, const cuoptimGradientBatch *batch,
                            void *stream);
int cuoptim_launch_update(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, void *stream);
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
/* Counts, over the 32-bit patterns first .. first + count - 1, where the fixed kernels' fast
 * square root and division (cuda/rules.h) pass their checks and differ from sqrtf and '/' on this
 * device: mismatches[0] square roots, [1] divisions (device memory, added to). For tests. */
int cuoptim_launch_check_fast_math(uint64_t first, uint64_t count, unsigned *mismatches, void *stream);
/* ScheduleFreeAdamW's averaged weights of variable k (count elements) into out, in its dtype. */
int cuoptim_launch_schedule_free_average(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, int k,
                                         uint64_t count, void *out, void *stream);
/* Writes batch->entries into table[first ...] (the batch travels as the kernel's argument). */
int cuoptim_launch_scatter_gradients(cuoptimDeviceGradient *table, const cuoptimGradientBatch *batch, void *stream);
/* Build: fill slots with their initial values and masters from the half parameters. */
int cuoptim_launch_build(const cuoptimDeviceStep *step, float slot0_initial, int slot0_copies_variable, void *stream);

/* ---- Muon (CUOPTIM_MUON): its matrices' Newton-Schulz path -------------------------------------
 * A Muon-path variable (rows x cols) is worked on as X (r x c, r <= c: its direction, transposed
 * when rows > cols), with Y (r x c) and A, cA, B (r x r) beside it; the matrix products run on
 * cuBLAS (host/backend_cuda.c), the element-wise stages here, each one launch for every matrix. */
typedef struct cuoptimMuonMatrix {
  float *x, *y;       /* r x c, row-major: the iteration goes X -> Y -> X ... */
  float *a, *ca, *b;  /* r x r: A = X X^T, cA = c A, B = b A + cA A */
  int64_t rows, cols; /* the variable's shape */
  int64_t r, c;
  int64_t first_chunk; /* its first chunk in cuoptimMuonStep.chunks */
  int32_t variable;
  int32_t tall;        /* rows > cols: X is the transpose */
  float sqrt_dim;      /* float32 sqrt(max(rows, cols)) */
  int32_t reserved;
} cuoptimMuonMatrix;

/* The Muon kernels' work: chunks (variable = the matrix's index) of CUOPTIM_CHUNK elements of each
 * matrix (of the variable's order, or of X's: the same count). */
typedef struct cuoptimMuonStep {
  const cuoptimMuonMatrix *matrices;
  const cuoptimChunk *chunks;
  double *partials;   /* per chunk: the sum of squares of its segment of X (rules.h's order) */
  int64_t num_chunks;
  int32_t num_matrices;
  int32_t ns_steps;
} cuoptimMuonStep;

/* The AdamW path: the update kernel over `chunks` (the chunks of the variables off the matrix
 * path), as Adam's rule. */
int cuoptim_launch_muon_adamw(const cuoptimDeviceStep *step, const cuoptimChunk *chunks, int64_t num_chunks,
                              const cuoptimRuleParams *p, void *stream);
/* Before Newton-Schulz, three launches: the momentum (prepare, weight decay, m, the direction into
 * X), X's sums of squares per chunk, X / (||X||_F + 1e-7). */
int cuoptim_launch_muon_prepare(const cuoptimDeviceStep *step, const cuoptimMuonStep *muon,
                                const cuoptimRuleParams *p, void *stream);
/* Iteration `iteration` of Newton-Schulz, after A = X X^T: cA = c A, B = b A, and a X into the
 * iteration's output (the products add to B and to it). */
int cuoptim_launch_muon_scale(const cuoptimMuonStep *muon, const cuoptimRuleParams *p, int iteration, void *stream);
/* After Newton-Schulz: w -= lr_adjust(lr X), EMA, the half copy. */
int cuoptim_launch_muon_apply(const cuoptimDeviceStep *step, const cuoptimMuonStep *muon,
                              const cuoptimRuleParams *p, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* CUOPTIM_LAUNCH_H */
