/*
 * internal.h — the optimizer object and the interface between the orchestration (host/step.c)
 * and the two backends (host/backend_host.c, host/backend_cuda.c). Not installed.
 */
#ifndef CUOPTIM_INTERNAL_H
#define CUOPTIM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cuoptim.h"
#include "pattern.h"
#include "prologue.h"
#include "rules.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors (host/error.c) ---------------------------------------------------------------- */

/* Formats the thread-local last-error message and returns `status`. */
cuoptimStatus_t cuoptim_error(cuoptimStatus_t status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Debug log, enabled by CUOPTIM_DEBUG=WARN|INFO|TRACE (read once). */
enum { CUOPTIM_LOG_NONE = 0, CUOPTIM_LOG_WARN = 1, CUOPTIM_LOG_INFO = 2, CUOPTIM_LOG_TRACE = 3 };
void cuoptim_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define CUOPTIM_CHECK(call)                  \
  do {                                       \
    cuoptimStatus_t check_status_ = (call);  \
    if (check_status_ != CUOPTIM_STATUS_SUCCESS) return check_status_; \
  } while (0)

#define CUOPTIM_REQUIRE_NOT_NULL(caller, ptr)                                              \
  do {                                                                                     \
    if ((ptr) == NULL)                                                                     \
      return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: %s is NULL", caller, #ptr);   \
  } while (0)

/* The public calls name their handle argument `optimizer`. A MultiOptimizer handle is refused
 * here (NOT_SUPPORTED): the calls that work on one dispatch to host/multi.c before this check. */
#define CUOPTIM_REQUIRE_OPTIMIZER(caller, opt)                                                  \
  do {                                                                                          \
    if ((opt) == NULL)                                                                          \
      return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: optimizer is NULL", caller);       \
    if ((opt)->multi != NULL) return cuoptim_multi_refuse(caller);                              \
  } while (0)

/* ---- MultiOptimizer (host/multi.c) ---------------------------------------------------------- */

/* NOT_SUPPORTED for a call that has no meaning on a MultiOptimizer handle, saying why. */
cuoptimStatus_t cuoptim_multi_refuse(const char *caller);
/* Whether cuoptimAddVariable may register a variable on `opt` (1 unless it is a sub-optimizer
 * and its MultiOptimizer is not the one registering). */
int cuoptim_multi_may_add(const struct cuoptimOptimizer *opt);
cuoptimStatus_t cuoptim_multi_destroy(struct cuoptimOptimizer *opt);
cuoptimStatus_t cuoptim_multi_add_variable(struct cuoptimOptimizer *opt, const char *name, void *param,
                                           cuoptimDtype_t dtype, int rank, const int64_t *dims,
                                           cuoptimVariable_t *variable);
cuoptimStatus_t cuoptim_multi_variable_shape(struct cuoptimOptimizer *opt, cuoptimVariable_t variable, int *rank,
                                             int64_t *dims);
cuoptimStatus_t cuoptim_multi_variable_count(struct cuoptimOptimizer *opt, int *count);
cuoptimStatus_t cuoptim_multi_uses_weight_decay(struct cuoptimOptimizer *opt, cuoptimVariable_t variable, int *uses);
cuoptimStatus_t cuoptim_multi_apply(struct cuoptimOptimizer *opt, int n, const cuoptimGradient_t *grads,
                                    cuoptimStream_t stream);
cuoptimStatus_t cuoptim_multi_iterations(struct cuoptimOptimizer *opt, int64_t *iterations);
/* The MultiOptimizer's step count (Keras's `iterations`; see struct cuoptimMulti), and setting it. */
cuoptimStatus_t cuoptim_multi_count(struct cuoptimOptimizer *opt, const char *caller, int64_t *count);
cuoptimStatus_t cuoptim_multi_set_count(struct cuoptimOptimizer *opt, int64_t count, const char *caller);
/* A sub-optimizer's raw counter went from old_raw to new_raw other than by a step of its
 * MultiOptimizer (set or loaded): the MultiOptimizer's count stays what it was. */
void cuoptim_multi_sub_counter_moved(struct cuoptimOptimizer *sub, int64_t old_raw, int64_t new_raw);
/* A step of a sub-optimizer's own handle (not one of its MultiOptimizer's): refused on a capturing
 * stream; else stepped, and not counted as a MultiOptimizer step. */
int cuoptim_multi_lone_step_of(const struct cuoptimOptimizer *opt);
cuoptimStatus_t cuoptim_multi_lone_step(struct cuoptimOptimizer *sub, int n, const cuoptimGradient_t *grads,
                                        cuoptimStream_t stream);
/* The raw iteration counter of a plain optimizer's state (Keras's `_iterations`). */
cuoptimStatus_t cuoptim_raw_iterations(struct cuoptimOptimizer *opt, const char *caller, int64_t *raw);
cuoptimStatus_t cuoptim_multi_weight_count(struct cuoptimOptimizer *opt, int *count);
cuoptimStatus_t cuoptim_multi_weight_info(struct cuoptimOptimizer *opt, int index, cuoptimWeightInfo_t *info);
cuoptimStatus_t cuoptim_multi_get_weights(struct cuoptimOptimizer *opt, int index, double *values, size_t count);
cuoptimStatus_t cuoptim_multi_set_weights(struct cuoptimOptimizer *opt, int index, const double *values, size_t count);
cuoptimStatus_t cuoptim_multi_finalize(struct cuoptimOptimizer *opt, cuoptimStream_t stream);
cuoptimStatus_t cuoptim_multi_synchronize(struct cuoptimOptimizer *opt, int64_t timeout_ms);
cuoptimStatus_t cuoptim_multi_state_bytes(struct cuoptimOptimizer *opt, size_t *bytes);
/* The MultiOptimizer's Keras JSON, as cuoptimToKerasJSON writes it (malloc'd; host/multi_json.c). */
cuoptimStatus_t cuoptim_multi_json_text(struct cuoptimOptimizer *opt, const char *caller, char **text);

/* For host/multi.c (host/keras_json.c): Python's repr of a float, and a string as json.dumps
 * writes it (ASCII only, NUL-terminated, malloc'ed; NULL when out of memory; s valid UTF-8). */
void cuoptim_python_float_repr(double x, char out[40]);
char *cuoptim_json_string(const char *s);
/* cuoptimConfigToKerasJSON's text (malloc'd), without a size query that would leave a message
 * behind a successful call (host/keras_json.c). */
cuoptimStatus_t cuoptim_config_json_text(const cuoptimConfig_t *config, const char *caller, char **text);

/* ---- config (host/config.c) ----------------------------------------------------------------- */

/* cuoptimConfigValidate with `caller` naming the public call in the message. */
cuoptimStatus_t cuoptim_validate_config(const cuoptimConfig_t *config, const char *caller);

/* The offset of the first byte of NUL-terminated `s` that does not start a valid UTF-8 sequence
 * (shortest form, no surrogates), or -1 (host/keras_json.c). */
ptrdiff_t cuoptim_invalid_utf8_offset(const char *s);

/* The float32 constants of the rules and the prologue, formed as Keras forms them. */
void cuoptim_prologue_params_init(const cuoptimConfig_t *config, cuoptimPrologueParams *q);

/* The optimizer's slots: fixed positions s0..s2 as cuda/rules.h uses them, which are present,
 * their Keras names, and the group of each: Keras lists one group after the other, each group
 * interleaved per variable (m0, v0, m1, v1, ... then velocity_hat0, velocity_hat1, ...). */
typedef struct cuoptimSlotLayout {
  int count;            /* positions used, 0..3 */
  const char *names[3];
  int present[3];
  int group[3];
} cuoptimSlotLayout;
int cuoptim_slot_layout(const cuoptimConfig_t *config, cuoptimSlotLayout *layout);

/* Initial value of slot `slot` (Adagrad's and Ftrl's accumulators start at
 * initial_accumulator_value, everything else at 0). */
float cuoptim_slot_initial_value(const cuoptimConfig_t *config, int slot);
/* Whether slot `slot` starts as a copy of the variable (ScheduleFreeAdamW's momentum), not as
 * cuoptim_slot_initial_value. */
int cuoptim_slot_copies_variable(const cuoptimConfig_t *config, int slot);
/* Whether a kind value names an optimizer (values below CUOPTIM_OPTIMIZER_COUNT may be unused). */
int cuoptim_kind_is_valid(int kind);
/* Whether a variable has slot `slot` (present in the layout; Muon's velocity only on the AdamW
 * path, muon_matrix 0) (host/optimizer.c). */
int cuoptim_variable_has_slot(const struct cuoptimOptimizer *opt, int muon_matrix, int slot);

/* ---- the optimizer object -------------------------------------------------------------------- */

typedef struct cuoptimVariableRec {
  char name[CUOPTIM_MAX_NAME];
  void *param;          /* caller's buffer, pointer of the backend */
  cuoptimDtype_t dtype;
  size_t count;
  int rank;             /* the shape, row-major as Keras stores it: count = the dims' product */
  int64_t dims[CUOPTIM_MAX_DIMS];
  int use_weight_decay; /* weight_decay set and not excluded (Muon: its path's rate) */
  int muon_matrix;      /* Muon: takes the Newton-Schulz path (0: the AdamW path; other kinds 0) */
  /* The elements this rank updates and keeps state for: all of them, or with sharded state its
   * share [local_offset, local_offset + local_count) (cuoptim_comm_share). local_param is
   * param + local_offset elements. Set when the state is built. */
  size_t local_offset, local_count;
  void *local_param;
  void *arena_grad;     /* its gradient in the gradient arena (NULL without arena) */
  /* Owned by cuoptim, pointers of the backend into the arenas (NULL when absent), local_count
   * elements each. */
  float *master;        /* fp32 copy of a float16/bfloat16 variable */
  float *slots[3];
  float *average;       /* EMA */
  float *accumulator;   /* gradient accumulation */
  /* Adafactor's row and column accumulators r and c (cuoptim_factored_count elements each; one
   * placeholder element below rank 2), NULL for the other kinds. */
  float *factored[2];
} cuoptimVariableRec;

/* A Muon-path matrix as Newton-Schulz sees it: the variable is rows x cols (row-major); the
 * iteration works on the r x c matrix X with r <= c, X = the variable's direction, or its
 * transpose when rows > cols (tall). */
typedef struct cuoptimMuonShape {
  int64_t rows, cols, r, c;
  int tall;
} cuoptimMuonShape;

static inline cuoptimMuonShape cuoptim_muon_shape(const cuoptimVariableRec *v) {
  cuoptimMuonShape m;
  m.rows = v->dims[0];
  m.cols = v->dims[1];
  m.tall = m.rows > m.cols;
  m.r = m.tall ? m.cols : m.rows;
  m.c = m.tall ? m.rows : m.cols;
  return m;
}

/* Element i of the variable's row-major order in X's row-major order. */
static inline size_t cuoptim_muon_index(const cuoptimMuonShape *m, size_t i) {
  return (size_t)cuoptim_muon_x_index(m->tall, (uint64_t)m->rows, (uint64_t)m->cols, i);
}

/* Muon's Newton-Schulz iteration on the host (host/newton_schulz.c): p->muon_ns_steps iterations
 * on the r x c matrix x (already normalized), y another r x c buffer, a_mat and b_mat r x r
 * buffers, on up to `threads` threads (the result does not depend on them); returns the buffer
 * that holds the result (x or y). */
float *cuoptim_host_newton_schulz(const cuoptimRuleParams *p, float *x, float *y, float *a_mat, float *b_mat,
                                  int64_t r, int64_t c, int threads);

/* Adafactor: the elements of r (which = 0: the shape without the last dimension) or c (which = 1:
 * without the second-last); 1 for a variable of rank < 2 (Keras's scalar placeholder). */
size_t cuoptim_factored_count(const cuoptimVariableRec *v, int which);

/* One entry of the Keras-ordered optimizer state (cuoptimGetWeights). */
typedef enum {
  CUOPTIM_WEIGHT_ITERATION,
  CUOPTIM_WEIGHT_LEARNING_RATE,
  CUOPTIM_WEIGHT_LOSS_SCALE_COUNTER,
  CUOPTIM_WEIGHT_LOSS_SCALE,
  CUOPTIM_WEIGHT_U_PRODUCT,
  CUOPTIM_WEIGHT_OUTER_ITERATION,     /* LossScaleOptimizer's own `iteration` (Keras never steps it) */
  CUOPTIM_WEIGHT_OUTER_LEARNING_RATE, /* LossScaleOptimizer's own `learning_rate` (0.0) */
  CUOPTIM_WEIGHT_BUFFER, /* a float32 array of the backend: slot, average or accumulator */
  CUOPTIM_WEIGHT_FACTORED /* Adafactor's r or c: a float32 array of info.count elements, never sharded */
} cuoptimWeightKind;

typedef struct cuoptimWeightEntry {
  cuoptimWeightInfo_t info;
  cuoptimWeightKind kind;
  float **buffer; /* CUOPTIM_WEIGHT_BUFFER: the variable's field that points into the arena once built */
  int variable;   /* CUOPTIM_WEIGHT_BUFFER: the variable it belongs to */
} cuoptimWeightEntry;

/* The gradient of each variable for the step in progress (NULL: none), and what binding it needs
 * to remember across steps. */
typedef struct cuoptimStepGradient {
  const void *grad;     /* what the step reads: the caller's buffer, or with sharded state this
                           rank's share of the sum (cuoptim_comm_prepare_step, the aggregate) */
  const void *listed;   /* the caller's buffer as listed (the collectives' buffer) */
  cuoptimDtype_t dtype;
  uint32_t listed_in;   /* the bind_round in which the variable was last listed */
  int listed_at;        /* its position in that list */
  const void *checked;  /* the last pointer that passed the backend's pointer check */
  cuoptimDtype_t checked_dtype; /* and the element type it was checked for */
} cuoptimStepGradient;

typedef struct cuoptimBackendOps cuoptimBackendOps;

/* ---- data-parallel communication (host/comm.c; MPI in host/comm_mpi.c, NCCL in host/comm_nccl.c) */

typedef struct cuoptimComm cuoptimComm;

/* What a communication library provides to the orchestration. Every function returns a status and
 * sets the message on failure; a timeout returns CUOPTIM_STATUS_TIMEOUT naming `stage`. */
typedef struct cuoptimCommOps {
  const char *library; /* "MPI", "NCCL": named in messages */
  /* Takes the caller's handle (pointed at by `handle`): sets comm->rank, comm->world, comm->impl. */
  cuoptimStatus_t (*attach)(cuoptimOptimizer_t opt, cuoptimComm *comm, const void *handle, const char *caller);
  void (*detach)(cuoptimOptimizer_t opt, cuoptimComm *comm);
  /* Blocking: every rank contributes `bytes` host bytes; recv holds world * bytes, rank order. */
  cuoptimStatus_t (*allgather_host)(cuoptimOptimizer_t opt, const void *send, void *recv, size_t bytes,
                                    const char *stage);
  /* Blocking: every rank contributes its share (cuoptim_comm_share) of `count` elements of
   * `element_bytes` each, in host memory; full receives all of them in order. */
  cuoptimStatus_t (*allgather_shares_host)(cuoptimOptimizer_t opt, const void *share, void *full, size_t count,
                                           size_t element_bytes, const char *stage);
  /* The aggregate stage: every gradient of opt->step_grads summed across the ranks, every rank
   * ending with the same bytes. Unsharded: in place. Sharded: only this rank's share is summed,
   * into a buffer of the communicator, and step_grads[k].grad then points at that share. */
  cuoptimStatus_t (*aggregate)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  /* Sharded state, after the update: every rank's share of every parameter gathered in place. */
  cuoptimStatus_t (*gather_parameters)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  /* Gradient arena: starts the reduction of bucket b (its variables all ready); NULL when the
   * library reduces buckets in the aggregate stage only. The aggregate stage finishes what was
   * started and starts the rest, in the same order. */
  cuoptimStatus_t (*start_bucket)(cuoptimOptimizer_t opt, int bucket, cuoptimStream_t stream);
  /* Gradient arena: variable's gradient is written on `stream` (before start_bucket of its
   * bucket); NULL when the library needs nothing of it. */
  cuoptimStatus_t (*mark)(cuoptimOptimizer_t opt, int variable, cuoptimStream_t stream);
  /* Sharded state: the gradients' shares are summed in place in the gradient buffers (NCCL), so
   * the step reads each gradient from listed + its share's offset from the start. */
  int shares_in_place;
  /* Sharded state: cuoptim_comm_combine_inspect on the library's own terms (NULL: the generic
   * exchange through host memory). */
  cuoptimStatus_t (*combine_inspect)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  /* Sharded state: cuoptim_comm_combine_lamb on the library's own terms (NULL: through host memory). */
  cuoptimStatus_t (*combine_lamb)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  /* Local accumulation, on a step that may apply: every variable's accumulator (float32, all
   * `count` elements) summed across the ranks in place, as `aggregate` sums gradients (every rank
   * ends with the same bytes), on `stream`. */
  cuoptimStatus_t (*reduce_accumulators)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  /* Bytes of the buffers the communicator holds for gradients. */
  size_t (*buffer_bytes)(cuoptimOptimizer_t opt);
  /* An error the library found after its calls returned (NCCL's ncclCommGetAsyncError: a failed
   * kernel, a remote rank gone), as a status; SUCCESS while there is none. A host query that waits
   * for nothing, so a step or a synchronize with timeout may call it. NULL: the library reports
   * every error at the call (MPI). */
  cuoptimStatus_t (*poll)(cuoptimOptimizer_t opt, const char *caller);
} cuoptimCommOps;

struct cuoptimComm {
  const cuoptimCommOps *ops;
  cuoptimCommOptions_t options;
  int rank, world;
  int tables_checked; /* the ranks' variable tables were compared and agree */
  int broken;         /* a collective timed out or failed: no further step may communicate */
  int local_step;     /* the step in progress is a micro-step with local accumulators */
  int64_t gradient_reductions, accumulator_reductions; /* steps that reduced them (a test hook) */
  void *impl;         /* the library's own state */
};

/* Gradient accumulation with local accumulators (cuoptim.h, "Gradient accumulation"): what a step
 * communicates. */
typedef enum {
  CUOPTIM_STEP_PLAIN,  /* no local accumulation: the gradients are reduced (when aggregating) */
  CUOPTIM_STEP_LOCAL,  /* a micro-step, known on the host: nothing is reduced */
  CUOPTIM_STEP_APPLY,  /* the step that applies, known on the host: accumulators, then gradients */
  CUOPTIM_STEP_UNSURE  /* not known (or replicated accumulators): accumulators once, then gradients */
} cuoptimStepKind;

/* What the accumulators hold, across the ranks, with local accumulation. */
enum {
  CUOPTIM_ACCUMULATORS_ZERO,       /* zero on every rank (built, or after an applied step) */
  CUOPTIM_ACCUMULATORS_PARTIAL,    /* each rank its own part: Keras's accumulator is their sum */
  CUOPTIM_ACCUMULATORS_REPLICATED  /* the same on every rank: Keras's accumulator */
};

/* Whether this optimizer accumulates locally (options.accumulate_locally, unsharded, aggregating,
 * a world > 1, gradient_accumulation_steps). */
int cuoptim_comm_accumulates_locally(const cuoptimOptimizer_t opt);
/* The kind of the step about to be enqueued on `stream` (or about to be marked ready). */
cuoptimStepKind cuoptim_comm_step_kind(const cuoptimOptimizer_t opt, cuoptimStream_t stream);
/* After a step of `kind` (status: the step's): the accumulators' state and the counter the host
 * keeps. */
void cuoptim_comm_end_accumulation(cuoptimOptimizer_t opt, cuoptimStepKind kind, cuoptimStream_t stream,
                                   cuoptimStatus_t status);
/* The raw counter was set to `iterations` (SetWeights, Load, the build): the host knows it again. */
void cuoptim_note_iterations(cuoptimOptimizer_t opt, int64_t iterations);
/* Whether the accumulators hold each rank's own part (state reads must sum them). */
int cuoptim_comm_accumulators_partial(const cuoptimOptimizer_t opt);
/* Blocking, every rank: `sum` = the sum over the ranks of their `mine` (count float32), in rank
 * order. */
cuoptimStatus_t cuoptim_comm_sum_accumulator(cuoptimOptimizer_t opt, const float *mine, size_t count, float *sum,
                                             const char *caller);
/* Refuses (INVALID_STATE) to capture a step while the accumulators are the ranks' parts. */
cuoptimStatus_t cuoptim_comm_check_capture(const cuoptimOptimizer_t opt, cuoptimStream_t stream, const char *caller);
/* Test hook: steps that reduced gradients (accumulators = 0) or accumulators (1). */
int64_t cuoptim_comm_reductions(const cuoptimOptimizer_t opt, int accumulators);

/* The data-parallel stage of a step of `kind`, before inspect: the first-step table check, then
 * the accumulators' and the gradients' reduction when the step needs them. No-op without
 * communicator. */
cuoptimStatus_t cuoptim_comm_begin_step(cuoptimOptimizer_t opt, cuoptimStream_t stream, cuoptimStepKind kind,
                                        const char *caller);
/* Sharded state: the per-variable sums of squares and non-finite flags of the inspect pass, which
 * cover this rank's shares, combined over the ranks in rank order (the same bytes on every rank,
 * the same every run); after the update the parameters gathered. No-ops unless sharded. */
cuoptimStatus_t cuoptim_comm_combine_inspect(cuoptimOptimizer_t opt, cuoptimStream_t stream);
cuoptimStatus_t cuoptim_comm_end_step(cuoptimOptimizer_t opt, cuoptimStream_t stream);
int cuoptim_comm_sharded(const struct cuoptimOptimizer *opt);
/* Sharded state: Lamb's per-variable norms (tensors' lamb_w_sumsq, lamb_u_sumsq), which cover
 * this rank's shares, summed over the ranks in rank order (and, on the device, the trust ratio).
 * No-op unless sharded. */
cuoptimStatus_t cuoptim_comm_combine_lamb(cuoptimOptimizer_t opt, cuoptimStream_t stream);
/* Sets each variable's local_offset/local_count/local_param for the state about to be built. */
void cuoptim_comm_assign_shares(cuoptimOptimizer_t opt);
/* The first-step comparison of the ranks' variable tables, once (before the first collective that
 * moves gradients: the first step or the first bucket a mark starts). */
cuoptimStatus_t cuoptim_comm_check_tables(cuoptimOptimizer_t opt, const char *caller);
/* A rank's first step failed before the table comparison (`failed`, its message set): it still
 * takes part in the comparison, so that the other ranks fail that step too instead of waiting.
 * Returns `failed`, the message kept. */
cuoptimStatus_t cuoptim_comm_first_step_failed(cuoptimOptimizer_t opt, cuoptimStatus_t failed, const char *caller);
/* Whether a step has communication to do (an aggregate NVTX range is worth opening). */
int cuoptim_comm_active(const cuoptimOptimizer_t opt);
/* Gradient arena (host/gradient_arena.c). Built with the state; released by cuoptimDestroy. */
cuoptimStatus_t cuoptim_arena_build(cuoptimOptimizer_t opt, const char *caller);
void cuoptim_arena_release(cuoptimOptimizer_t opt);
/* Checks that the step's gradients are the arena's (when there is one); after the step, every
 * variable is not ready again. */
cuoptimStatus_t cuoptim_arena_check_step(cuoptimOptimizer_t opt, const char *caller);
void cuoptim_arena_end_step(cuoptimOptimizer_t opt);
/* The aggregate stage: every bucket not started yet is started, in the fixed order. */
cuoptimStatus_t cuoptim_arena_start_all(cuoptimOptimizer_t opt, cuoptimStream_t stream);

/* Before the backend's begin_step: with sharded state, points each listed gradient at the share
 * this rank updates, where it will be (in place, or the caller's already reduced buffer). */
void cuoptim_comm_prepare_step(cuoptimOptimizer_t opt);

/* Frees the communicator (cuoptimDestroy). */
void cuoptim_comm_release(cuoptimOptimizer_t opt);

/* The share of rank `rank` among `world` ranks of `count` elements: count / world elements each,
 * the last rank also the count % world left over, so that every share is contiguous and the
 * equal heads are what an equal-count reduce-scatter or all-gather (NCCL's) moves. */
void cuoptim_comm_share(size_t count, int world, int rank, size_t *offset, size_t *length);
/* The copies of a checkpoint (host/checkpoint.c): a bounded host staging buffer, an optional
 * scratch buffer in backend memory, and what the backend needs to order the copies. */
typedef struct cuoptimTransfer {
  void *staging;      /* host memory (pinned on the CUDA backend) */
  void *scratch;      /* backend memory, or NULL when none was asked for */
  void *backend_data; /* the backend's own (the CUDA backend's stream) */
  int scratch_synchronous; /* the CUDA backend: scratch from cudaMalloc, not stream-ordered */
} cuoptimTransfer;

typedef enum {
  CUOPTIM_COPY_TO_HOST,       /* backend memory -> staging */
  CUOPTIM_COPY_TO_BACKEND,    /* staging -> backend memory */
  CUOPTIM_COPY_WITHIN_BACKEND /* backend memory -> backend memory */
} cuoptimCopyKind;

struct cuoptimOptimizer {
  cuoptimConfig_t config;
  cuoptimBackend_t backend;
  int device;
  const cuoptimBackendOps *ops;
  void *backend_data;      /* the backend's own state */

  cuoptimPrologueParams prologue; /* constants; prologue.rule for the update */
  cuoptimSlotLayout slots;

  int num_variables, variable_capacity;
  cuoptimVariableRec *variables;
  int32_t *name_index;     /* open addressing: variable index + 1 per slot, 0 = empty */
  uint32_t name_index_size; /* a power of two, at least twice num_variables; 0 before the first */
  /* Weight-decay exclusion: the patterns given, in call order, and all of them joined with "|"
   * into one Python `re` pattern (as Keras joins them), compiled (host/pattern.c). */
  int num_excludes;
  char **excludes;
  char *exclude_joined;
  cuoptimPattern *exclude_pattern;
  int num_muon_excludes;   /* Muon's exclude_layers, compiled */
  cuoptimPattern *muon_excludes[CUOPTIM_MAX_EXCLUDE_LAYERS];

  int built;               /* arenas allocated, state initialised (first step or state access) */
  void *arena;             /* one allocation: every float buffer cuoptim owns, 256-byte regions */
  size_t arena_bytes;
  void *scalar_block;      /* state + scalars, allocated at creation */
  /* Backend memory. */
  cuoptimScalarState *state;
  cuoptimStepScalars *scalars;
  cuoptimTensorScalars *tensors; /* num_variables */

  int num_weights;
  cuoptimWeightEntry *weights;
  int described_variables;   /* num_variables when `weights` was listed */
  size_t state_bytes;        /* arena bytes the registered variables need, at most 2^60 */
  int64_t outer_iterations;  /* CUOPTIM_WEIGHT_OUTER_*: state that only travels through Get/SetWeights */
  float outer_learning_rate;

  cuoptimComm *comm;               /* NULL: a single process (cuoptimSetCommunicator) */
  /* Gradient arena (host/gradient_arena.c): requested, then allocated at build. Buckets are runs
   * of consecutive variables [first, last); they start from the last bucket down. */
  int arena_requested;
  void *grad_arena;
  int num_buckets;
  int *bucket_first;      /* num_buckets + 1 entries: bucket b is [bucket_first[b], bucket_first[b + 1]) */
  int *bucket_of;         /* per variable */
  int *bucket_pending;    /* per bucket: variables not yet ready */
  unsigned char *ready;   /* per variable */
  int next_bucket;        /* the next bucket to start, counting down; -1 when all have started */

  /* Local accumulation (host/comm.c): what the accumulators hold (CUOPTIM_ACCUMULATORS_*), and the
   * raw counter as the host counts the steps it enqueues (CUDA backend), when it knows it. */
  int accumulators;
  cuoptimStepKind step_kind; /* the step in progress */
  int iterations_known;
  int64_t enqueued_iterations;

  cuoptimStepGradient *step_grads; /* host array, num_variables */
  uint32_t bind_round;             /* counts cuoptimApplyGradients calls, for duplicate detection */

  /* MultiOptimizer (host/multi.c): a MultiOptimizer handle has `multi` set and none of the fields
   * above but config.name, backend and device; a sub-optimizer has `parent` set. */
  struct cuoptimMulti *multi;
  cuoptimOptimizer_t parent;
};

/* What a backend provides. Every function returns a status and sets the message on failure. */
struct cuoptimBackendOps {
  const char *name;
  int state_in_host_memory; /* opt->state and opt->scalars are host memory, current when a stage returns */
  /* Whether `stream` is capturing a CUDA graph (0 on the host backend). */
  int (*capturing)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  cuoptimStatus_t (*init)(cuoptimOptimizer_t opt);
  /* Waits for the optimizer's work, then frees what init made. */
  cuoptimStatus_t (*release)(cuoptimOptimizer_t opt);
  /* Rejects a pointer the backend cannot use (host pointer given to the CUDA backend). */
  cuoptimStatus_t (*check_pointer)(cuoptimOptimizer_t opt, const void *ptr, cuoptimDtype_t dtype, const char *caller,
                                   const char *what);
  /* Zeroed backend memory, usable from any stream when it returns. */
  cuoptimStatus_t (*alloc)(cuoptimOptimizer_t opt, size_t bytes, void **ptr);
  /* Frees once the optimizer's enqueued work no longer needs it. */
  void (*free)(cuoptimOptimizer_t opt, void *ptr);
  /* Synchronous copies between host memory and backend memory, ordered after the optimizer's
   * enqueued work (and before its later work). */
  cuoptimStatus_t (*upload)(cuoptimOptimizer_t opt, void *dst, const void *src, size_t bytes);
  cuoptimStatus_t (*download)(cuoptimOptimizer_t opt, void *dst, const void *src, size_t bytes);
  /* Refuses a stream the state cannot be built on (one capturing a CUDA graph). */
  cuoptimStatus_t (*check_build_stream)(cuoptimOptimizer_t opt, cuoptimStream_t stream, const char *caller);
  /* After the arena exists: fill slots, copy half parameters into their masters, build tables;
   * on *stream when the call that builds has one, else on the backend's own. */
  cuoptimStatus_t (*build)(cuoptimOptimizer_t opt, const cuoptimStream_t *stream);
  /* Before the stages of a step (step_grads is set); end_step after them, also after a failure
   * (`status`: the step's so far), returns the step's status. */
  cuoptimStatus_t (*begin_step)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  cuoptimStatus_t (*end_step)(cuoptimOptimizer_t opt, cuoptimStream_t stream, cuoptimStatus_t status);
  /* The stages of one step (DESIGN.md "One step, as data flows"), on `stream`. step_grads is set. */
  cuoptimStatus_t (*inspect)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  cuoptimStatus_t (*prologue)(cuoptimOptimizer_t opt, int inspected, cuoptimStream_t stream);
  cuoptimStatus_t (*update)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  /* NULL: the prologue advances the state (the CUDA backend's prologue kernel), no finish stage. */
  cuoptimStatus_t (*finish)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  /* After each stage of a step is enqueued, under the stage's name (a string that lives forever):
   * what `query` names while the stage runs. */
  cuoptimStatus_t (*stage_enqueued)(cuoptimOptimizer_t opt, const char *stage, cuoptimStream_t stream);
  /* EMA swap of cuoptimFinalizeVariableValues. */
  cuoptimStatus_t (*finalize)(cuoptimOptimizer_t opt, cuoptimStream_t stream);
  /* cuoptimScheduleFreeAveragedWeights: variable k's averaged weights into `out` (its dtype), on
   * `stream` like finalize. The state is built and not sharded. */
  cuoptimStatus_t (*averaged_weights)(cuoptimOptimizer_t opt, int k, void *out, cuoptimStream_t stream);
  /* Waits for every piece of work the optimizer enqueued (cuoptimSynchronize), and nothing else. */
  cuoptimStatus_t (*synchronize)(cuoptimOptimizer_t opt);
  /* Checkpoint copies. transfer_begin allocates t->staging (staging_bytes of host memory) and,
   * when scratch_bytes > 0, t->scratch (backend memory, not initialised), and orders the copies
   * after the optimizer's last step, waiting for nothing else. transfer_copy enqueues a copy, in
   * order; transfer_wait returns when every copy enqueued is complete; transfer_end waits for
   * them and frees what transfer_begin allocated (also after a failed transfer_begin). */
  cuoptimStatus_t (*transfer_begin)(cuoptimOptimizer_t opt, size_t staging_bytes, size_t scratch_bytes,
                                    cuoptimTransfer *t);
  cuoptimStatus_t (*transfer_copy)(cuoptimOptimizer_t opt, cuoptimTransfer *t, void *dst, const void *src,
                                   size_t bytes, cuoptimCopyKind kind);
  cuoptimStatus_t (*transfer_wait)(cuoptimOptimizer_t opt, cuoptimTransfer *t);
  void (*transfer_end)(cuoptimOptimizer_t opt, cuoptimTransfer *t);
  /* Without waiting: *complete = 1 when that work has completed, else 0 and `in_flight` (NUL-
   * terminated, at most `size` bytes) names the earliest piece still running. */
  cuoptimStatus_t (*query)(cuoptimOptimizer_t opt, int *complete, char *in_flight, size_t size);
};

/* The communication library of each backend: MPI for the host backend, NCCL for the CUDA
 * backend; NULL when the library was built without it. */
extern const cuoptimCommOps *const cuoptim_mpi_comm;
extern const cuoptimCommOps *const cuoptim_nccl_comm;

extern const cuoptimBackendOps cuoptim_host_backend;
/* NULL when the library was built without CUDA kernels. */
extern const cuoptimBackendOps *const cuoptim_cuda_backend;

/* Allocates the arena, lays out every buffer, fills the state and the weight list, calls
 * ops->build: on *stream when the calling public call has a stream (a step, finalize), else NULL.
 * Idempotent. (host/optimizer.c) */
cuoptimStatus_t cuoptim_build(cuoptimOptimizer_t opt, const char *caller, const cuoptimStream_t *stream);

/* Lists the Keras-ordered state entries (opt->weights) from the config and the variables, without
 * building the state. (host/optimizer.c) */
cuoptimStatus_t cuoptim_describe_weights(cuoptimOptimizer_t opt);

/* Checkpoint test hooks (host/checkpoint.c), for the test suites only (not exported): from this
 * call on, the n-th file operation of cuoptimSave and cuoptimLoad on this thread (a write, an
 * fsync, a close, the rename, the directory's fsync, a read) fails with EIO; n = 0 turns it off.
 * Returns how many file operations ran since the previous call. */
long cuoptim_checkpoint_fail_io_at(long n);
/* The staging buffer's size in bytes (default CUOPTIM_CHECKPOINT_STAGING_BYTES); 0 restores the
 * default. */
#define CUOPTIM_CHECKPOINT_STAGING_BYTES ((size_t)4 << 20)
void cuoptim_checkpoint_set_staging_bytes(size_t bytes);

/* ---- the host backend's threads (host/host_threads.c) ------------------------------------------ */

#define CUOPTIM_HOST_MAX_THREADS 1024
/* A stage's work as each thread runs it: `worker` in [0, workers), 0 being the calling thread. */
typedef void (*cuoptimHostTask)(void *context, int worker, int workers);
/* Runs task on up to `threads` threads (the caller and threads of a pool shared by the process)
 * and returns when all are done; on fewer when the pool is in use by another thread or the system
 * refuses threads, so a task's results must not depend on `workers`. */
void cuoptim_host_run(int threads, cuoptimHostTask task, void *context);
/* One thread per CPU the process may run on (its affinity mask), at most CUOPTIM_HOST_MAX_THREADS. */
int cuoptim_host_default_threads(void);
/* The environment variable CUOPTIM_HOST_THREADS (1..CUOPTIM_HOST_MAX_THREADS), or the default when
 * it is unset or empty; INVALID_VALUE naming it and `caller` otherwise. */
cuoptimStatus_t cuoptim_host_threads_from_environment(const char *caller, int *threads);

/* Whether the inspect pass is needed this step (clip by norm or loss-scale check). */
int cuoptim_needs_inspect(const cuoptimOptimizer_t opt);

/* Element conversion of parameters and gradients: float16 / bfloat16 <-> float32, round to
 * nearest even (as CUDA's __float2half_rn and __float2bfloat16_rn do). Inline, so that the host
 * backend's loops over elements have no call in them. */
static inline uint32_t cuoptim_float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float cuoptim_bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline float cuoptim_bfloat16_to_float(uint16_t h) { return cuoptim_bits_float((uint32_t)h << 16); }

static inline uint16_t cuoptim_float_to_bfloat16(float f) {
  uint32_t u = cuoptim_float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static inline float cuoptim_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return cuoptim_bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    /* zero or subnormal: mantissa * 2^-24 */
    float value = (float)mantissa * (1.0f / 16777216.0f);
    return sign ? -value : value;
  }
  return cuoptim_bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

static inline uint16_t cuoptim_float_to_half(float f) {
  uint32_t u = cuoptim_float_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);          /* NaN */
  if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);         /* rounds to inf */
  if (abs < 0x38800000u) {                                          /* subnormal or zero */
    /* value / 2^-24, rounded to nearest even, by adding a magic number in float arithmetic */
    float value = cuoptim_bits_float(abs) * 16777216.0f; /* exact: scaling by a power of two */
    uint32_t q = (uint32_t)value;
    float rest = value - (float)q;
    if (rest > 0.5f || (rest == 0.5f && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
}

size_t cuoptim_dtype_size(cuoptimDtype_t dtype);
const char *cuoptim_dtype_name(cuoptimDtype_t dtype);

#ifdef __cplusplus
}
#endif

#endif /* CUOPTIM_INTERNAL_H */
