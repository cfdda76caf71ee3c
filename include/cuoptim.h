/*
 * cuoptim.h — the whole public API of cuoptim.
 *
 * cuoptim performs the optimizer step of neural-network training with the exact numerics of
 * Keras 3 (tf.keras.optimizers): SGD, RMSprop, Adagrad, Adadelta, Adam, AdamW, Adamax, Nadam,
 * Lion, Lamb, Ftrl, ScheduleFreeAdamW, Adafactor and Muon, with learning-rate schedules, clipping, decoupled weight
 * decay, EMA, gradient accumulation and loss scaling. The host owns its parameter and gradient buffers;
 * cuoptim owns the optimizer state.
 *
 * Two backends run the same step:
 *   CUOPTIM_BACKEND_HOST  host pointers, C loops on the CPU: the reference implementation.
 *   CUOPTIM_BACKEND_CUDA  device pointers, fused CUDA kernels on the caller's stream.
 *
 * The host backend's threads: each stage of a step is shared by a pool of threads of the process
 * (the calling thread among them). Their number is the environment variable CUOPTIM_HOST_THREADS,
 * a whole number from 1 to 1024, read by cuoptimCreate for that optimizer; unset or empty, one per
 * CPU the process may run on (its affinity mask, so `taskset` and MPI's binding count). Threads
 * sleep between stages; a step smaller than about 131,072 elements runs on the calling thread
 * alone. Results are the same bits for every thread count: the elements are cut into fixed blocks
 * of 65,536 per variable, and sums of squares (the norms of clipnorm and global_clipnorm, Lamb's
 * trust ratio) are taken in double in a fixed order: element i of a block in lane i % 8, the eight
 * lanes added as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), the blocks of a variable in
 * order. Optimizers stepped at the same time from different threads share the pool: one of them
 * then runs its stage on its calling thread alone.
 *
 * Conventions
 *   - Every call returns a cuoptimStatus_t. On failure cuoptimGetLastErrorMessage() returns a
 *     thread-local text naming the call, the argument and the reason.
 *   - A failed call changes nothing: no optimizer state, variable or counter is modified.
 *   - Handles are not thread-safe: one thread at a time per optimizer. Different optimizers may be
 *     used from different threads.
 *   - Optional hyperparameters that Keras writes as `None` are NaN here (CUOPTIM_NONE) for
 *     floating-point fields and 0 for integer fields; cuoptimConfigInit sets them that way.
 *   - "Pointers of the backend": host memory for CUOPTIM_BACKEND_HOST, device memory (or managed
 *     memory) for CUOPTIM_BACKEND_CUDA.
 *   - Waits (CUDA backend): cuoptim never synchronizes the device (no cudaDeviceSynchronize) and
 *     never uses the legacy default stream on its own. An optimizer has its own non-blocking
 *     stream for its copies, allocations and frees, and records an event after each piece of work
 *     it enqueues on a caller's stream: each stage of a step, the build of its state, finalize.
 *     "The optimizer's enqueued work" is that work, plus the latest replay of a CUDA graph that
 *     captured one of its steps. A call that waits waits for that work only, and so for what each
 *     piece of it was ordered after on its stream (work the caller enqueued there before), never
 *     for other work on those streams or for other streams. On a device without stream-ordered
 *     memory pools (cudaDevAttrMemoryPoolsSupported 0) cuoptimCreate, the build of the state and
 *     cuoptimDestroy fall back to cudaMalloc and cudaFree, which synchronize the device. The one
 *     other exception: cuoptimDestroy of a Muon optimizer with matrices releases its cuBLAS
 *     handle, which cuBLAS documents as synchronizing the device (see CUOPTIM_MUON).
 */
#ifndef CUOPTIM_H
#define CUOPTIM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define CUOPTIM_VERSION_MAJOR 0
#define CUOPTIM_VERSION_MINOR 1
#define CUOPTIM_VERSION_PATCH 0
/* Encoded as major * 10000 + minor * 100 + patch; equals cuoptimGetVersion() of the library built
 * from this header. */
#define CUOPTIM_VERSION \
  (CUOPTIM_VERSION_MAJOR * 10000 + CUOPTIM_VERSION_MINOR * 100 + CUOPTIM_VERSION_PATCH)

#if defined(_WIN32)
#define CUOPTIM_API __declspec(dllexport)
#else
#define CUOPTIM_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Same type as cudaStream_t, without requiring the CUDA headers. NULL is the legacy default
 * stream. Ignored by the host backend. */
struct CUstream_st;
typedef struct CUstream_st *cuoptimStream_t;

/* ---------------------------------------------------------------------------------------------
 * Status codes. Values are fixed forever; new codes are only appended.
 * ------------------------------------------------------------------------------------------- */
#define CUOPTIM_STATUS_LIST(X)                                                          \
  X(CUOPTIM_STATUS_SUCCESS, 0, "success")                                               \
  X(CUOPTIM_STATUS_INVALID_VALUE, 1, "invalid value: an argument or a field is out of range") \
  X(CUOPTIM_STATUS_NULL_POINTER, 2, "a required pointer argument is NULL")              \
  X(CUOPTIM_STATUS_NOT_SUPPORTED, 3, "not supported by this build, backend or optimizer") \
  X(CUOPTIM_STATUS_ALLOC_FAILED, 4, "memory allocation failed")                         \
  X(CUOPTIM_STATUS_CUDA_ERROR, 5, "a CUDA runtime call failed")                         \
  X(CUOPTIM_STATUS_NO_DEVICE, 6, "no usable CUDA device")                               \
  X(CUOPTIM_STATUS_INVALID_STATE, 7, "the call is not allowed in the optimizer's current state") \
  X(CUOPTIM_STATUS_PARSE_ERROR, 8, "malformed input text (JSON)")                       \
  X(CUOPTIM_STATUS_NCCL_ERROR, 9, "an NCCL call failed")                                \
  X(CUOPTIM_STATUS_MPI_ERROR, 10, "an MPI call failed")                                 \
  X(CUOPTIM_STATUS_INTERNAL_ERROR, 11, "internal error (a bug in cuoptim)")             \
  X(CUOPTIM_STATUS_TIMEOUT, 12, "the wait ended before the work finished")              \
  X(CUOPTIM_STATUS_IO_ERROR, 13, "a file operation failed")

typedef enum {
#define CUOPTIM_STATUS_ENUM_(name, value, text) name = value,
  CUOPTIM_STATUS_LIST(CUOPTIM_STATUS_ENUM_)
#undef CUOPTIM_STATUS_ENUM_
} cuoptimStatus_t;

/* A fixed English sentence for the status; "unknown status" for a value outside the list.
 * Never NULL. */
CUOPTIM_API const char *cuoptimGetStatusString(cuoptimStatus_t status);

/* The message of the last failed cuoptim call on this thread ("" if none failed yet), naming the
 * call, the argument and the reason, e.g. "cuoptimCreate: config->beta_1 = 1.5: ...". Valid until
 * the next failing call on the same thread. Never NULL. */
CUOPTIM_API const char *cuoptimGetLastErrorMessage(void);

/* CUOPTIM_VERSION of the library actually linked. */
CUOPTIM_API int cuoptimGetVersion(void);

/* ---------------------------------------------------------------------------------------------
 * Enumerations
 * ------------------------------------------------------------------------------------------- */
typedef enum {
  CUOPTIM_SGD = 0,
  CUOPTIM_RMSPROP = 1,
  CUOPTIM_ADAGRAD = 2,
  CUOPTIM_ADADELTA = 3,
  CUOPTIM_ADAM = 4,
  CUOPTIM_ADAMW = 5,
  CUOPTIM_ADAMAX = 6,
  CUOPTIM_NADAM = 7,
  CUOPTIM_LION = 8,
  CUOPTIM_LAMB = 9,
  CUOPTIM_FTRL = 10,
  CUOPTIM_SCHEDULE_FREE_ADAMW = 11,
  CUOPTIM_ADAFACTOR = 12,
  CUOPTIM_MUON = 13,
  CUOPTIM_OPTIMIZER_COUNT
} cuoptimOptimizerKind_t;
/* CUOPTIM_SCHEDULE_FREE_ADAMW is keras.optimizers.ScheduleFreeAdamW: the variable is Keras's y, its
 * "momentum" slot the sequence z (it starts as the variable), "velocity" Adam's second moment;
 * the averaged point x that Schedule-Free evaluates is (y - (1 - beta_1) z) / beta_1. Keras on
 * JAX's CPU backend divides an array by a scalar (here by 1 - beta_2^t and by beta_1) as a
 * multiplication by the scalar's float32 reciprocal; cuoptim divides, as Keras's other backends
 * do, so its results differ from JAX's by a few float32 ulps (at most 1.4e-6 absolute, 1.3e-5
 * relative on the reference cases). */
/* CUOPTIM_MUON is keras.optimizers.Muon. Each variable takes one of two paths, decided when it is
 * added (cuoptimAddVariable), as Keras's _should_use_adamw decides:
 *   - the AdamW path for a variable whose shape is not of rank 2, or, with exclude_embeddings,
 *     whose lower-cased name contains "embedding", or whose name one of exclude_layers finds
 *     (each pattern searched on its own, as Python's re.search): Adam's moments ("momentum",
 *     "velocity") with the learning rate times adam_lr_ratio, adam_beta_1/2, epsilon, and decay
 *     by adam_weight_decay;
 *   - the Muon path for the other (2-D) variables: "momentum" only, m += g + m (momentum - 1),
 *     the direction g + momentum m (nesterov) or m, orthogonalized by ns_steps Newton-Schulz
 *     iterations (X / (||X||_F + 1e-7), transposed when rows > columns, then X = a X + (b A +
 *     c A A) X with A = X X^T), the step lr * X scaled by sqrt(max(rows, columns)) * rms_rate
 *     (rms_rate NONE: unscaled), and decay by weight_decay.
 * Decay uses the learning rate itself (not times adam_lr_ratio), skips the variables that
 * cuoptimExcludeFromWeightDecay excludes, and applies on each path when its own rate is set.
 * The state (cuoptimGetWeights) is Keras's: per variable "momentum", then "velocity" for the AdamW
 * path's variables only. "embedding" is searched in the name with its ASCII letters lower-cased
 * (Python's str.lower maps no other character to one of them). A variable added without a shape
 * (cuoptimAddVariable) has rank 1: the AdamW path.
 * Precision: the element-wise parts round as Keras does; the Frobenius norm is summed in double
 * in one fixed order, the same on both backends; the matrix products of Newton-Schulz are plain
 * loops on the host, each sum in double rounded once, where Keras's XLA sums in float32 in an
 * order of its own. So Muon-path variables match Keras within float32 rounding of those sums, not
 * bit for bit: at most 2.4e-7 absolute on the reference cases, within the default tolerances
 * (rtol 1e-5, atol 1e-6).
 * The CUDA backend runs the element-wise parts as fused kernels (one launch per stage for every
 * matrix: momentum, norm, normalization, one scale kernel per iteration, apply; the AdamW path's
 * variables in the update kernel) and the products on cuBLAS (cublasSgemmStridedBatched, float32,
 * CUBLAS_DEFAULT_MATH, so never TF32; three calls per iteration for each distinct matrix shape):
 * 6 + ns_steps kernels and 3 ns_steps products per shape a step (one kernel more with an inspect
 * pass), no host synchronization, capturable in a CUDA graph. cuBLAS sums each product in float32
 * in an order of its own, so on a GPU Muon-path results differ from the host backend's by a few
 * float32 ulps of the orthogonalized step (the same tolerances hold against Keras); the element-wise
 * parts and the norm are the host's, bit for bit. Memory: per matrix (r x c, r <= c) 2 r c + 3 r^2
 * floats of work buffers, plus a 32 MiB cuBLAS workspace, allocated when the state is built. The
 * cuBLAS handle is made then and released by cuoptimDestroy; cuBLAS documents that releasing a
 * handle synchronizes the device, so cuoptimDestroy of such an optimizer waits for the whole
 * device. A matrix whose dimensions exceed INT32_MAX is refused there (NOT_SUPPORTED).
 * Sharded state (cuoptimCommOptions_t.shard_state) is refused for Muon (cuoptimSetCommunicator:
 * INVALID_VALUE): a Newton-Schulz iteration needs every element of its matrix. */

/* CUOPTIM_ADAFACTOR is keras.optimizers.Adafactor. Its state per variable is Keras's, in Keras's
 * order: for a variable of rank >= 2 the row accumulator r (the shape without the last dimension),
 * the column accumulator c (the shape without the second-last dimension), both named as the
 * variable itself, then "velocity" (the variable's shape: Keras keeps the full second moment
 * v = r / mean(r) x c); for a variable of rank < 2 two scalar placeholders (always 0, named as the
 * variable; absent with dynamic_loss_scale, as from a LossScaleOptimizer's list) and the full
 * "velocity". A variable registered without a shape has rank 1. Each step
 * needs per-variable reductions (the variable's RMS for the relative step size, the row and column
 * means of g^2 + epsilon_1, the mean of r, the RMS of the update for clip_threshold); they are
 * taken in double in a fixed order, where Keras on JAX sums in float32 in XLA's order, so results
 * differ from Keras's by a few float32 ulps (see README for the largest errors on the reference
 * cases). Both backends take the same reductions in the same order (a mean: the values summed in
 * double in index order; a mean square: the squares summed in double as Muon's norm sums them,
 * the variable in segments of 8192 elements, element j of a segment in lane j % 256 in index
 * order, the lanes added as a halving tree (lane t += lane t + w for w = 128, 64, ..., 1), the
 * segments' sums in order), so the CUDA backend gives the host backend's results, bit for bit on
 * the emulated device. On the CUDA backend a step is four launches (five with an inspect pass,
 * for clipnorm, global_clipnorm or a dynamic loss scale), each for every variable at once: the
 * prologue, then moments (a thread per row and per column of each factored variable: r and c,
 * rows of 32 elements or more read a tile at a time through shared memory, then each batch's
 * mean(r) once; a variable of rank < 2 element-wise), RMS (a block per segment: the mean squares
 * of the decayed variable and of the update, the factored velocity formed on the way; the block
 * that completes a variable adds its segments' sums) and apply (the step, accumulation, EMA, the
 * half-precision copy). Sharded state (cuoptimCommOptions_t.shard_state) is refused with INVALID_VALUE:
 * the factored accumulators reduce across rows and columns, which a flat share of the elements
 * does not hold. A checkpoint (cuoptimSave) stores r and c as "<variable>_row" and
 * "<variable>_column" (Keras gives both the variable's own name). */

/* The Keras class name ("SGD", "RMSprop", "Adam", ...) or NULL for an unknown kind. */
CUOPTIM_API const char *cuoptimOptimizerName(cuoptimOptimizerKind_t kind);

typedef enum {
  CUOPTIM_BACKEND_HOST = 0,
  CUOPTIM_BACKEND_CUDA = 1
} cuoptimBackend_t;

/* Element types of parameters and gradients. */
typedef enum {
  CUOPTIM_FLOAT32 = 0,
  CUOPTIM_FLOAT16 = 1,
  CUOPTIM_BFLOAT16 = 2
} cuoptimDtype_t;

/* Learning-rate schedules (keras.optimizers.schedules), SEMANTICS.md §5. */
typedef enum {
  CUOPTIM_SCHEDULE_CONSTANT = 0,         /* a float learning rate */
  CUOPTIM_SCHEDULE_EXPONENTIAL = 1,      /* ExponentialDecay */
  CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT = 2, /* PiecewiseConstantDecay */
  CUOPTIM_SCHEDULE_POLYNOMIAL = 3,       /* PolynomialDecay */
  CUOPTIM_SCHEDULE_INVERSE_TIME = 4,     /* InverseTimeDecay */
  CUOPTIM_SCHEDULE_COSINE = 5,           /* CosineDecay (optional linear warm-up) */
  CUOPTIM_SCHEDULE_COSINE_RESTARTS = 6   /* CosineDecayRestarts */
} cuoptimScheduleKind_t;

/* Optional values. NaN means Keras's None. */
#define CUOPTIM_NONE ((double)NAN)
#define CUOPTIM_IS_NONE(x) ((x) != (x))

#define CUOPTIM_MAX_NAME 128        /* bytes, NUL included, of every name given to cuoptim */
/* bytes, NUL included, of a state entry's name: "<variable name>_<slot>" (cuoptimWeightInfo_t) */
#define CUOPTIM_MAX_WEIGHT_NAME (CUOPTIM_MAX_NAME + 32)
#define CUOPTIM_MAX_BOUNDARIES 64   /* PiecewiseConstantDecay boundaries */
#define CUOPTIM_MAX_EXCLUDE_LAYERS 8 /* Muon's exclude_layers patterns */
#define CUOPTIM_MUON_MAX_NS_STEPS 1000 /* Muon's ns_steps */

/* A learning rate: a constant or a schedule evaluated at Keras's raw `_iterations` counter
 * (before this step's increment). Fields not used by `kind` are ignored. All computation happens
 * in float32, as Keras does. */
typedef struct {
  cuoptimScheduleKind_t kind;
  double initial_learning_rate; /* CONSTANT: the learning rate itself. All but PIECEWISE. */
  double decay_steps;           /* EXPONENTIAL, POLYNOMIAL, INVERSE_TIME, COSINE; and
                                   COSINE_RESTARTS' first_decay_steps. */
  double decay_rate;            /* EXPONENTIAL, INVERSE_TIME */
  int staircase;                /* EXPONENTIAL, INVERSE_TIME: 0 or 1 */
  double end_learning_rate;     /* POLYNOMIAL, default 0.0001 */
  double power;                 /* POLYNOMIAL, default 1.0 */
  int cycle;                    /* POLYNOMIAL: 0 or 1 */
  double alpha;                 /* COSINE, COSINE_RESTARTS, default 0.0 */
  double warmup_target;         /* COSINE: CUOPTIM_NONE for no warm-up */
  double warmup_steps;          /* COSINE, default 0 */
  double t_mul;                 /* COSINE_RESTARTS, default 2.0 */
  double m_mul;                 /* COSINE_RESTARTS, default 1.0 */
  int num_boundaries;           /* PIECEWISE: 1 .. CUOPTIM_MAX_BOUNDARIES */
  double boundaries[CUOPTIM_MAX_BOUNDARIES]; /* PIECEWISE: strictly increasing step numbers, as Keras
                                                documents them (|b| <= 9e18) */
  double values[CUOPTIM_MAX_BOUNDARIES + 1]; /* PIECEWISE: num_boundaries + 1 values */
  char name[CUOPTIM_MAX_NAME];  /* the schedule's Keras `name` ("" = Keras's default) */
} cuoptimSchedule_t;

/* Everything that defines an optimizer: Keras's constructor arguments. Fill it with
 * cuoptimConfigInit (Keras's defaults for the kind), change fields, pass it to cuoptimCreate.
 * Fields that do not apply to `kind` are ignored. */
typedef struct {
  cuoptimOptimizerKind_t kind;
  char name[CUOPTIM_MAX_NAME]; /* Keras `name`; default the lower-case class name ("adam") */
  cuoptimSchedule_t learning_rate;

  /* Base optimizer (SEMANTICS.md §1). */
  double weight_decay;      /* decoupled, w -= w * wd * lr before the update; NONE = off
                               (default NONE; AdamW and Muon 0.004) */
  double clipnorm;          /* per variable; NONE = off (0 also disables) */
  double clipvalue;         /* NONE = off */
  double global_clipnorm;   /* NONE = off (0 also disables); at most one clip option is set */
  int use_ema;              /* 0 or 1 */
  double ema_momentum;      /* in [0, 1], default 0.99 */
  int64_t ema_overwrite_frequency;      /* 0 = None, else >= 1 */
  double loss_scale_factor;             /* NONE = off; gradients are divided by it */
  int64_t gradient_accumulation_steps;  /* 0 = None, else >= 2 (any int64, as Keras's int) */

  /* Per optimizer; defaults per kind from cuoptimConfigInit. */
  double beta_1;   /* Adam, AdamW, Adamax, Nadam, Lamb, ScheduleFreeAdamW 0.9; Lion 0.9 */
  double beta_2;   /* Adam, AdamW, Adamax, Nadam, Lamb, ScheduleFreeAdamW 0.999; Lion 0.99 */
  double epsilon;  /* 1e-7 (RMSprop, Adagrad, Adadelta, Adam*, Nadam, Lamb, Muon); ScheduleFreeAdamW 1e-8 (Adafactor: epsilon_1, epsilon_2) */
  double warmup_steps; /* ScheduleFreeAdamW 0: the learning rate rises linearly over these steps */
  double rho;      /* RMSprop 0.9, Adadelta 0.95 */
  double momentum; /* SGD 0.0 (must lie in [0, 1]), RMSprop 0.0, Muon 0.95 */
  int nesterov;    /* SGD 0, Muon 1 */
  int centered;    /* RMSprop */
  int amsgrad;     /* Adam, AdamW */
  double initial_accumulator_value;          /* Adagrad, Ftrl 0.1 */
  double learning_rate_power;                /* Ftrl -0.5 */
  double l1_regularization_strength;         /* Ftrl 0.0 */
  double l2_regularization_strength;         /* Ftrl 0.0 */
  double l2_shrinkage_regularization_strength; /* Ftrl 0.0 */
  double beta;                               /* Ftrl 0.0 */
  double beta_2_decay;   /* Adafactor -0.8: beta_2 of step t is 1 - t^beta_2_decay; finite */
  double epsilon_1;      /* Adafactor 1e-30: added to g^2; finite in float32 */
  double epsilon_2;      /* Adafactor 1e-3: the least relative step size max(epsilon_2, RMS(w)); finite */
  double clip_threshold; /* Adafactor 1.0: the update's RMS is clipped to it; finite */
  int relative_step;     /* Adafactor 1: 0 or 1; with a constant learning rate, lr = min(lr, 1/sqrt(t)).
                            Keras also takes that minimum in rho_t unconditionally, so the value
                            changes no result (kept for Keras's get_config round trip) */

  /* Muon (see CUOPTIM_MUON); defaults from cuoptimConfigInit(CUOPTIM_MUON). Muon also reads
   * epsilon (1e-7, the AdamW path's), momentum (0.95, any finite value), nesterov (1) and
   * weight_decay (0.004, the Muon path's; NONE = no decay there). */
  double adam_beta_1;       /* 0.9, finite; the AdamW path's beta_1 */
  double adam_beta_2;       /* 0.999, finite */
  double adam_weight_decay; /* 0.004; NONE = no decay on the AdamW path */
  double adam_lr_ratio;     /* 1.0, finite: the AdamW path's learning rate is lr * adam_lr_ratio */
  double muon_a, muon_b, muon_c; /* 3.4445, -4.7750, 2.0315, finite: the Newton-Schulz coefficients */
  int64_t ns_steps;         /* 5, in [0, CUOPTIM_MUON_MAX_NS_STEPS]: Newton-Schulz iterations */
  double rms_rate;          /* 0.2, finite; NONE = Keras's None (no sqrt(max(rows, cols)) scaling) */
  int exclude_embeddings;   /* 1: names containing "embedding" (lower-cased) take the AdamW path */
  int num_exclude_layers;   /* 0 .. CUOPTIM_MAX_EXCLUDE_LAYERS patterns in exclude_layers */
  /* Keras's exclude_layers: Python `re` patterns (the syntax, limits and refusals of
   * cuoptimExcludeFromWeightDecay, each pattern compiled on its own), NUL-terminated, 0 to
   * CUOPTIM_MAX_NAME - 1 bytes each; a name that one of them finds takes the AdamW path. */
  char exclude_layers[CUOPTIM_MAX_EXCLUDE_LAYERS][CUOPTIM_MAX_NAME];

  /* Dynamic loss scaling, keras.optimizers.LossScaleOptimizer (SEMANTICS.md §4). When set, the
   * gradients passed in are the scaled ones: a step whose gradients hold a non-finite value is
   * skipped (nothing changes but the scale, halved); otherwise the gradients are divided by the
   * scale, the step runs, and the scale doubles after dynamic_growth_steps good steps in a row.
   * loss_scale_factor must then be NONE. */
  int dynamic_loss_scale;        /* 0 or 1 */
  double initial_scale;          /* default 32768.0 */
  int64_t dynamic_growth_steps;  /* default 2000, >= 1 */
  char loss_scale_name[CUOPTIM_MAX_NAME]; /* LossScaleOptimizer `name` ("" = Keras's default) */
} cuoptimConfig_t;

/* Fills *config with Keras's defaults for `kind` (constant learning rate included).
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (unknown kind). */
CUOPTIM_API cuoptimStatus_t cuoptimConfigInit(cuoptimConfig_t *config, cuoptimOptimizerKind_t kind);

/* Fills *schedule with the defaults of `kind` (Keras's constructor defaults; required arguments
 * such as decay_steps are set to 1 and should be changed).
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE. */
CUOPTIM_API cuoptimStatus_t cuoptimScheduleInit(cuoptimSchedule_t *schedule, cuoptimScheduleKind_t kind);

/* Checks every field exactly as Keras's constructors do, plus what would make the float32 step
 * undefined; the message names the first bad field and the reason. Fields that do not apply to the
 * kind (or schedule kind) are not checked. Refused beyond Keras:
 *   - a value the step uses as a float32 that is NaN or not finite once rounded to float32 (such
 *     as 1e39), and such a constant formed from it (1 - beta_1, 1 - beta_2, 1 - rho, 1 - alpha,
 *     2 * l2_shrinkage_regularization_strength, 1 / global_clipnorm). NaN stays None in the
 *     optional fields (weight_decay, clip options, loss_scale_factor, warmup_target); an unused
 *     field that is written to JSON (ema_momentum without use_ema, warmup_steps without warm-up)
 *     may be any number but NaN;
 *   - a positive value the step divides by that rounds to float32 0: decay_steps, an active
 *     clipnorm or global_clipnorm, loss_scale_factor, initial_scale. decay_steps and warmup_steps
 *     may be +infinity (Keras accepts it; the schedule then stays where it starts);
 *   - PiecewiseConstantDecay boundaries that are not strictly increasing (Keras documents them so;
 *     its sum of ranges gives other values for the rest).
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE. */
CUOPTIM_API cuoptimStatus_t cuoptimConfigValidate(const cuoptimConfig_t *config);

/* Parses the output of `json.dumps(keras.optimizers.serialize(opt))` — any optimizer above
 * (its learning_rate a float or a serialized schedule) or a LossScaleOptimizer around one — into
 * *config. Unknown optimizer classes and unknown config keys are errors that name them; a bare
 * schedule is not an optimizer. Keras's constant learning rate arrives as its float32 value.
 * As Python's json.loads: a key repeated in an object takes its last value; Infinity is read.
 * Integers are read exactly (all of int64). A name given as null or "" becomes the default name
 * itself, so that cuoptimConfigToKerasJSON then cuoptimConfigFromKerasJSON gives back the same
 * config for every config this call returns. Messages quote input text escaped, on one line.
 * *config is written only on success.
 * Statuses: SUCCESS, NULL_POINTER, PARSE_ERROR (not JSON, NaN, text that is not UTF-8, a raw
 * control character inside a string), INVALID_VALUE (unknown class or key, wrong type, a string
 * holding U+0000 (NUL), an integer outside int64, or a config that cuoptimConfigValidate rejects),
 * NOT_SUPPORTED (a learning rate given as a serialized callable), ALLOC_FAILED. */
CUOPTIM_API cuoptimStatus_t cuoptimConfigFromKerasJSON(cuoptimConfig_t *config, const char *json);

/* Writes *config in the form keras.optimizers.deserialize accepts (the same text as
 * keras.optimizers.serialize writes) into buffer, NUL-terminated. Every double is written with the
 * shortest digits that read back as the same bits (a constant learning rate too), so config ->
 * JSON -> config is exact, except that an empty name is written as Keras's default name.
 * *length (optional) receives the length the text needs without the NUL; a buffer too small (or
 * NULL) writes nothing and returns INVALID_VALUE with *length set, so a caller may ask for the
 * size first. *length is left alone when config is NULL or invalid.
 * Statuses: SUCCESS, NULL_POINTER (config), INVALID_VALUE (invalid config, a written name that is
 * not valid UTF-8, small buffer). */
CUOPTIM_API cuoptimStatus_t cuoptimConfigToKerasJSON(const cuoptimConfig_t *config, char *buffer,
                                                     size_t capacity, size_t *length);

/* ---------------------------------------------------------------------------------------------
 * Optimizer
 * ------------------------------------------------------------------------------------------- */
typedef struct cuoptimOptimizer *cuoptimOptimizer_t;
/* A registered variable: its registration index, 0, 1, 2, ... */
typedef int32_t cuoptimVariable_t;

/* Creates an optimizer. The config is validated (cuoptimConfigValidate) and copied. `device` is the
 * CUDA device ordinal for CUOPTIM_BACKEND_CUDA (ignored by the host backend). CUDA backend: creates
 * the optimizer's stream and events, allocates and uploads the scalar state on that stream and
 * waits for that stream only.
 * Host backend: reads CUOPTIM_HOST_THREADS (the threads of its steps, see the top of this file).
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (also CUOPTIM_HOST_THREADS set to anything but a
 * whole number from 1 to 1024, on the host backend), NOT_SUPPORTED (a backend this build lacks),
 * NO_DEVICE, CUDA_ERROR, ALLOC_FAILED. */
CUOPTIM_API cuoptimStatus_t cuoptimCreate(cuoptimOptimizer_t *optimizer, const cuoptimConfig_t *config,
                                          cuoptimBackend_t backend, int device);

/* Frees the optimizer and everything it owns (never the caller's buffers). NULL is a no-op.
 * CUDA backend: waits for the optimizer's enqueued work (see Conventions) and for nothing else;
 * its memory is freed in order after that work. Everything is freed even when it fails.
 * Statuses: SUCCESS, CUDA_ERROR (a CUDA error met while waiting, such as a failed kernel's). */
CUOPTIM_API cuoptimStatus_t cuoptimDestroy(cuoptimOptimizer_t optimizer);

/* A copy of the optimizer's config. Statuses: SUCCESS, NULL_POINTER. */
CUOPTIM_API cuoptimStatus_t cuoptimGetConfig(cuoptimOptimizer_t optimizer, cuoptimConfig_t *config);

/* Registers a parameter buffer the caller owns: `count` elements of `dtype` at `param` (pointers
 * of the backend; any alignment on the host backend, aligned to the element size on the CUDA
 * backend). cuoptim allocates the variable's slots (zero or, for Adagrad
 * and Ftrl accumulators, initial_accumulator_value), an fp32 master copy for float16/bfloat16
 * parameters (initialised from `param`), and an EMA average when use_ema. `name` is the Keras
 * variable name used for weight-decay exclusion and slot names; names must be unique.
 * Variables may only be added before the optimizer state is built: by the first step, or by the
 * first call that reaches the state (cuoptimGetWeightCount/Info, cuoptimGetWeights/SetWeights,
 * cuoptimFinalizeVariableValues). Scalar queries (iterations, learning rate, loss scale) do not
 * build it. This call touches no device memory: the master copy is read from `param` when the
 * state is built. CUDA backend: a step or cuoptimFinalizeVariableValues builds it on its stream,
 * after the work enqueued there before it (so parameters written on that stream are seen); a
 * state call builds it on the optimizer's stream, which waits for no other stream: the
 * parameters' values must then be complete (e.g. the stream that wrote them synchronized).
 * *variable receives the index (0 for the first variable, then 1, 2, ...).
 * Registering n variables costs O(n) in all (names are hashed).
 * Limits: a name has 1 to CUOPTIM_MAX_NAME - 1 bytes; a variable at most 2^40 elements; at most
 * 2^29 variables; the state cuoptim owns for all of them (slots, masters, EMA, accumulators,
 * float32) at most 2^60 bytes, so no size computed over the variables can overflow.
 * With weight decay set, the name is searched with the exclusion patterns here
 * (cuoptimExcludeFromWeightDecay).
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (empty or long or duplicate name, count 0 or
 * above 2^40, unknown dtype, a host pointer given to the CUDA backend, more than 2^29
 * variables, a state above 2^60 bytes, a search of the name by the exclusion patterns, or by
 * Muon's exclude_layers (2-D variables), that exceeds its limits or meets a name that is not UTF-8), INVALID_STATE (the state is built),
 * ALLOC_FAILED, CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimAddVariable(cuoptimOptimizer_t optimizer, const char *name, void *param,
                                               cuoptimDtype_t dtype, size_t count,
                                               cuoptimVariable_t *variable);

/* The most dimensions a variable's shape has (cuoptimAddVariableWithShape). */
#define CUOPTIM_MAX_DIMS 16

/* cuoptimAddVariable with the variable's shape: `rank` dimensions dims[0..rank-1], row-major as
 * Keras stores them (the last dimension varies fastest); the element count is their product.
 * rank 0 is a scalar (one element; dims may be NULL). cuoptimAddVariable(count) registers the
 * shape [count]. Optimizers that treat a variable by its shape (factored or matrix updates)
 * read it; the others see only the count. On a data-parallel run the ranks also compare the
 * shapes at the first step. Everything else is as cuoptimAddVariable.
 * Statuses: those of cuoptimAddVariable, and INVALID_VALUE (rank below 0 or above
 * CUOPTIM_MAX_DIMS, a dimension below 1, more than 2^40 elements), NULL_POINTER (dims NULL with
 * rank > 0). */
CUOPTIM_API cuoptimStatus_t cuoptimAddVariableWithShape(cuoptimOptimizer_t optimizer, const char *name, void *param,
                                                        cuoptimDtype_t dtype, int rank, const int64_t *dims,
                                                        cuoptimVariable_t *variable);

/* The shape of `variable`: *rank and dims[0..*rank-1], the rest of dims[] set to 0.
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (unknown variable). */
CUOPTIM_API cuoptimStatus_t cuoptimGetVariableShape(cuoptimOptimizer_t optimizer, cuoptimVariable_t variable, int *rank,
                                                    int64_t dims[CUOPTIM_MAX_DIMS]);

/* The number of registered variables. Statuses: SUCCESS, NULL_POINTER. */
CUOPTIM_API cuoptimStatus_t cuoptimGetVariableCount(cuoptimOptimizer_t optimizer, int *count);

/* Keras `exclude_from_weight_decay(var_names=[...])`: variables whose name the pattern finds get
 * no weight decay. Patterns are Python `re` expressions (UTF-8), as Keras reads them: Keras joins
 * the names with "|" into one expression and searches each variable name with re.search. Here
 * the calls accumulate and every pattern given so far is joined, in call order, into that one
 * expression, which must be valid at each call (so "a(" then ")" is refused); a pattern given
 * again changes nothing (Keras joins a set). Joined, patterns act on each other as in Python: a
 * global flag such as (?i) must open the first pattern and then applies to all (elsewhere Python
 * refuses it), and groups are numbered across all the patterns (Keras's set has no fixed order,
 * so numbered references between patterns are best avoided). Applies to variables already added
 * and to later ones. Must be called before the optimizer state is built (the first step or state
 * access): Keras documents that rule (its check never fires in Keras 3.15.1); cuoptim enforces it.
 *
 * Syntax: Python 3.11's `re`, read by a parser that follows Python's own (same grammar, same
 * errors, e.g. "nothing to repeat", "look-behind requires fixed-width pattern"), run on PCRE2
 * with Python's meaning: \d \w \s \b are Unicode (\s is str.isspace, with \x1c-\x1f), (?a) makes
 * them ASCII, \Z is the very end, $ also matches before a final newline, "{,n}", "{}" and an
 * unclosed "{" mean what Python says; lazy and possessive repeats, atomic groups, lookarounds,
 * (?P<name>...) and (?P=name), conditionals (?(1)...), inline flags i m s x a u and scoped ones
 * (?i:...), \xhh \uXXXX \UXXXXXXXX and octal escapes; sets as Python reads them ("[[:alpha:]]" is
 * a set of characters, not a POSIX class). \d and \w follow PCRE2's Unicode tables (Unicode 14 in
 * PCRE2 10.42, as in Python 3.11).
 * Refused (INVALID_VALUE, "not supported"), as they cannot be run with Python's meaning:
 * \N{name}; under (?i), non-ASCII characters in the pattern and back-references; scoped
 * (?a:...) or (?u:...) that switch between ASCII and Unicode rules (Python's own search applies
 * them inconsistently); a condition (?(n)...) on a group not closed before it; the flag (?t);
 * non-ASCII group names; repeat counts above 65535.
 * Limits: the joined patterns at most 16384 bytes, 200 groups within each other, a compiled form
 * within 64 MiB and PCRE2's size limit; each search of a name at most 10^6 backtracking steps
 * (about 15 ms) and 16 MiB. A pattern over a limit is refused; a search that hits one (nested or
 * ambiguous repeats such as "(a*)*b" on a long name) has no answer and is refused with the
 * pattern and the variable named: here for the variables already added, by cuoptimAddVariable
 * for later ones. Names are searched only when weight decay is set, as in Keras.
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (Python refuses the joined expression, a refused
 * construct, a limit, a name that is not UTF-8), INVALID_STATE (the state is built), ALLOC_FAILED. */
CUOPTIM_API cuoptimStatus_t cuoptimExcludeFromWeightDecay(cuoptimOptimizer_t optimizer, const char *regex);

/* Whether weight decay applies to `variable` (after exclusions and when weight_decay is set).
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (unknown variable). */
CUOPTIM_API cuoptimStatus_t cuoptimUsesWeightDecay(cuoptimOptimizer_t optimizer, cuoptimVariable_t variable,
                                                   int *uses);

/* One gradient: the variable it belongs to, its buffer (pointer of the backend, `count` elements
 * of the variable, alignment as for parameters) and its element type. grad == NULL means "no gradient" (Keras's
 * None): the pair is dropped. A zero-initialised pair means float32. */
typedef struct {
  cuoptimVariable_t variable;
  const void *grad;
  cuoptimDtype_t dtype;
} cuoptimGradient_t;

/* Keras `apply_gradients(zip(grads, vars))`: one optimizer step, as SEMANTICS.md §1.3 orders it:
 * (loss-scale check and unscale) -> (accumulate) -> clip -> weight decay -> update -> EMA ->
 * iterations += 1. Only the listed variables are updated; EMA averages every variable.
 * n == 0 is a no-op (iterations unchanged), as in Keras.
 * CUDA backend: enqueued on `stream`, returns without waiting; no host synchronization happens
 * inside once the state is built, so every step after the first (or after cuoptimGetWeightCount)
 * can be captured in a CUDA graph; capturing the very first step fails with INVALID_STATE before
 * anything is enqueued (building allocates and initialises, which a graph cannot hold). An eager
 * step waits, on the GPU, for the optimizer's enqueued work on other streams (its previous steps,
 * finalize, the latest replay of a captured step); the host waits for nothing, except on the
 * first step, which builds the state: it allocates and uploads it on the optimizer's stream and
 * waits for that stream. A captured step waits for nothing: the stream its graph is launched on
 * orders it. A captured step reads a gradient table written once, on the optimizer's stream, while
 * it is captured (the graph waits for that write): its replays upload nothing, and eager steps keep
 * uploading only the entries whose pointer or dtype changed. That table (16 bytes per variable on
 * the device) is kept until cuoptimDestroy, one for each distinct set of gradient pointers
 * captured; a capture right after another one (no eager step between) with other pointers writes
 * the eager table from its graph instead, and eager steps then upload every entry.
 * Parameters and gradients must stay valid until the step completes, and, on the CUDA backend,
 * be aligned to their element size. Host backend: done when it returns.
 * Statuses: SUCCESS, NULL_POINTER (grads with n > 0), INVALID_VALUE (unknown variable, a variable
 * listed twice, every gradient NULL, unknown dtype, n < 0), INVALID_STATE (the first step, on a
 * stream capturing a CUDA graph), ALLOC_FAILED (building the state on the first step),
 * CUDA_ERROR. With a communicator (cuoptimSetCommunicator) also: INVALID_VALUE on every rank,
 * the step not taken, when the ranks' variable tables or options differ (first step) or when
 * they list different gradients (host backend); TIMEOUT (host backend: a collective waited
 * longer than options.timeout_seconds, naming the stage); INVALID_STATE (an earlier collective
 * timed out or failed; a step captured in a CUDA graph while local accumulators hold the ranks'
 * parts, mid-cycle: capture after an applied step; another rank's first step failed before the
 * ranks compared their tables, naming it: a rank whose first step fails on its own arguments or
 * in building its state still joins that comparison, so no rank waits for it); MPI_ERROR, NCCL_ERROR (an NCCL call failed, or NCCL reports an
 * asynchronous error of earlier work; the message carries NCCL's text); NOT_SUPPORTED (over MPI,
 * a gradient of 2^31 elements or more). */
CUOPTIM_API cuoptimStatus_t cuoptimApplyGradients(cuoptimOptimizer_t optimizer, int n,
                                                  const cuoptimGradient_t *grads, cuoptimStream_t stream);

/* Keras `minimize`: calls grad_fn(user, optimizer, stream) — which must write the gradients and
 * describe them in *grads / *n (grads points at storage the callback owns and keeps valid until
 * cuoptimMinimize returns) — then applies them. A non-SUCCESS status from the callback is returned
 * as it is and nothing is applied. Statuses: those of cuoptimApplyGradients, and the callback's. */
typedef cuoptimStatus_t (*cuoptimGradientFn)(void *user, cuoptimOptimizer_t optimizer, cuoptimStream_t stream,
                                             int *n, const cuoptimGradient_t **grads);
CUOPTIM_API cuoptimStatus_t cuoptimMinimize(cuoptimOptimizer_t optimizer, cuoptimGradientFn grad_fn, void *user,
                                            cuoptimStream_t stream);

/* Keras `optimizer.iterations`: the number of steps applied (with gradient accumulation, the raw
 * counter divided by gradient_accumulation_steps; LossScaleOptimizer-skipped steps do not count).
 * CUDA backend: waits for the optimizer's enqueued work, not for other streams. Statuses:
 * SUCCESS, NULL_POINTER, CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimGetIterations(cuoptimOptimizer_t optimizer, int64_t *iterations);

/* Keras `optimizer.learning_rate`: the value the next step will use (the schedule evaluated at
 * the raw counter). CUDA backend: waits for the optimizer's enqueued work, not for other streams.
 * Statuses: SUCCESS, NULL_POINTER, CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimGetLearningRate(cuoptimOptimizer_t optimizer, float *learning_rate);

/* Keras `optimizer.learning_rate = value` for a constant learning rate (the float32 variable is
 * assigned). CUDA backend: waits for the optimizer's enqueued work, then writes on the optimizer's
 * stream and waits for that copy; the next step sees the value.
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (not finite once rounded to float32, e.g. 1e308),
 * INVALID_STATE (the optimizer uses a schedule), CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimSetLearningRate(cuoptimOptimizer_t optimizer, double learning_rate);

/* The current dynamic loss scale (LossScaleOptimizer `dynamic_scale`). CUDA backend: waits for the
 * optimizer's enqueued work, not for other streams.
 * Statuses: SUCCESS, NULL_POINTER, INVALID_STATE (dynamic_loss_scale off), CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimGetLossScale(cuoptimOptimizer_t optimizer, float *scale);

/* ---------------------------------------------------------------------------------------------
 * Optimizer state, in Keras's `optimizer.variables` order (tests/data/README.md has the table):
 * with dynamic_loss_scale first the LossScaleOptimizer's own iteration and learning_rate (Keras
 * never steps them) and its step_counter and dynamic_scale; then iteration, learning_rate (constant
 * learning rate only), the EMA averages of every variable, the gradient accumulators of every
 * variable, each optimizer's slots interleaved per variable (m0, v0, m1, v1, ..., then optional
 * slots such as velocity_hat0, velocity_hat1, ...), and Nadam's u_product (named "variable", as
 * Keras names it). Slot names are "<variable name>_<slot>" with every '/' of the name made '_', as
 * Keras makes them from a variable's path ("dense/kernel" gives "dense_kernel_momentum"); Adafactor's
 * factored accumulators carry the variable's name itself. Half-precision variables' fp32 master
 * copies are not Keras state and are not listed.
 * ------------------------------------------------------------------------------------------- */
typedef struct {
  char name[CUOPTIM_MAX_WEIGHT_NAME]; /* e.g. "iteration", "learning_rate", "dense_kernel_momentum" */
  size_t count;                /* elements; 1 for scalars */
  int is_integer;              /* 1 for the counters (iteration, step_counter) */
} cuoptimWeightInfo_t;

/* The number of state entries. This and every call below build the optimizer state if no step did
 * yet (slots allocated and initialised, as Keras's build); cuoptimAddVariable is refused after.
 * A call that fails its argument checks (index, count, values) builds nothing. CUDA backend: the
 * build allocates, uploads and initialises on the optimizer's stream (cuoptimFinalizeVariableValues
 * initialises on its own stream) and waits for the optimizer's stream only; cuoptimAddVariable
 * says what it needs of the parameters.
 * Statuses: SUCCESS, NULL_POINTER, ALLOC_FAILED, CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimGetWeightCount(cuoptimOptimizer_t optimizer, int *count);

/* Name and size of entry `index`. Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (index),
 * ALLOC_FAILED, CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimGetWeightInfo(cuoptimOptimizer_t optimizer, int index, cuoptimWeightInfo_t *info);

/* Copies entry `index` into host memory as `count` doubles (count must equal the entry's count;
 * float32 state converts exactly; counters are exact below 2^53). Synchronous. CUDA backend:
 * copies on the optimizer's stream after its enqueued work, and waits for that and nothing else.
 * With sharded state (cuoptimSetCommunicator) an array entry is gathered from every rank: a
 * collective call.
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (index, count), ALLOC_FAILED, CUDA_ERROR,
 * MPI_ERROR, NCCL_ERROR, TIMEOUT (sharded). */
CUOPTIM_API cuoptimStatus_t cuoptimGetWeights(cuoptimOptimizer_t optimizer, int index, double *values, size_t count);

/* Sets entry `index` from `count` doubles in host memory (rounded to float32; counters must be
 * integers in [0, 9e15], scalars finite in float32; an array element may be inf or NaN but not a
 * finite value beyond float32's range, such as 1e300). Every value is checked before any is
 * written. Synchronous. CUDA backend: copies on the optimizer's stream after its enqueued work and
 * waits for that copy; the next step sees the values.
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (index, count, a non-integer counter, a scalar not
 * finite in float32, an element outside float32's range), ALLOC_FAILED, CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimSetWeights(cuoptimOptimizer_t optimizer, int index, const double *values,
                                              size_t count);

/* Keras `finalize_variable_values`: with use_ema, overwrites every variable with its average.
 * Without use_ema: nothing happens. CUDA backend: enqueued on `stream` after the optimizer's
 * enqueued work on other streams (a GPU-side wait), returns without waiting, like a step; it is
 * part of the optimizer's enqueued work from then on. Captured in a CUDA graph, it is ordered by
 * the stream the graph is launched on.
 * Statuses: SUCCESS, NULL_POINTER, INVALID_STATE (it would build the state on a stream capturing a
 * CUDA graph), ALLOC_FAILED (building the state), CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimFinalizeVariableValues(cuoptimOptimizer_t optimizer, cuoptimStream_t stream);

/* ScheduleFreeAdamW: writes the averaged weights x = (y - (1 - beta_1) z) / beta_1 of `variable`
 * (y its float32 value: the master of a half-precision variable; z its "momentum" slot), the
 * point Schedule-Free evaluates, into `out`: the variable's element count, in its dtype, rounded
 * to nearest even from float32. The variable and the state stay as they are, so training goes on
 * from y; to evaluate, read the model's weights from `out` (or copy them in and back out: an
 * in-place switch to x and back would not return y bit for bit). Keras 3.15.1 has no call for x;
 * this is its formula, the x_old of Keras's step. After t steps x is the average of z after each
 * of them. Before the first step z = y, and x is y within rounding.
 * `out`: host memory on the host backend (done when it returns); device memory aligned to the
 * element size on the CUDA backend, enqueued on `stream` after the optimizer's work on other
 * streams (a GPU-side wait), returning without waiting, like a step (captured in a graph, it is
 * ordered by the stream the graph is launched on). It builds the state when no step has (as
 * cuoptimFinalizeVariableValues). One launch per call.
 * Statuses: SUCCESS, NULL_POINTER (optimizer, out), INVALID_VALUE (no such variable; an optimizer
 * other than ScheduleFreeAdamW; `out` not a pointer the backend can write, or misaligned),
 * INVALID_STATE (sharded state: a rank holds only its share of z; building on a stream capturing a
 * CUDA graph), ALLOC_FAILED (building the state), CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimScheduleFreeAveragedWeights(cuoptimOptimizer_t optimizer, cuoptimVariable_t variable,
                                                               void *out, cuoptimStream_t stream);

/* Waits for the optimizer's enqueued work (CUDA backend; see Conventions): its steps, finalize,
 * the build of its state, its copies, and the latest replay of a graph that captured one of its
 * steps; not for other work on those streams enqueued after it, nor for other streams. Returns at
 * once on the host backend. Statuses: SUCCESS, NULL_POINTER, CUDA_ERROR (such as a failed
 * kernel's error). */
CUOPTIM_API cuoptimStatus_t cuoptimSynchronize(cuoptimOptimizer_t optimizer);

/* cuoptimSynchronize with a deadline: waits at most `timeout_ms` milliseconds (0: looks once) for
 * the same work, polling its events from the host (every 50 us at first, then up to every 1 ms;
 * a sleep between polls ends at the deadline, so the call returns right after it; any timeout
 * >= 0 is accepted, a huge one is a wait without end). SUCCESS when it has completed. Past
 * the deadline: TIMEOUT, the work still enqueued and the optimizer unchanged, with a message
 * naming the earliest piece not complete, e.g. `stage "update" of step 12` (steps are counted per
 * optimizer from 1, each eager cuoptimApplyGradients that enqueued work), "building the optimizer
 * state", "cuoptimFinalizeVariableValues" or "the latest replay of a CUDA graph that captured a
 * step". A stage not complete may not have started: its stream may wait for earlier work (for a
 * collective that waits for its peers). The caller may then, for instance, abort its
 * communicator and destroy the optimizer, as PyTorch's NCCL watchdog does. Returns SUCCESS at once
 * on the host backend. With an NCCL communicator each poll also asks ncclCommGetAsyncError: an
 * error NCCL reports (a peer gone) ends the wait at once with NCCL_ERROR and NCCL's text, and the
 * optimizer then refuses further steps (INVALID_STATE).
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (timeout_ms < 0), TIMEOUT, CUDA_ERROR,
 * NCCL_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimSynchronizeTimeout(cuoptimOptimizer_t optimizer, int64_t timeout_ms);

/* ---------------------------------------------------------------------------------------------
 * Data-parallel training: one rank per device (or per process on the host backend), each with
 * its own batch; cuoptim reduces the gradients across the ranks before the step, so every rank
 * applies the same step and ends with the same bytes.
 *
 * The aggregate stage runs first in the step, before the loss-scale check, clipping and the skip
 * decision (SEMANTICS.md §1.3), so every rank takes the same decisions. Gradients are summed
 * (never averaged by the collective); with CUOPTIM_REDUCE_MEAN the update multiplies each summed
 * element by float32(1 / world) before anything else reads it (no extra pass over memory). The
 * sum is formed as a reduce-scatter followed by an all-gather: each element is summed by exactly
 * one rank and copied to the others, so every rank holds the same bytes whatever reduction order
 * the library picks. The caller's gradient buffers are overwritten with the sums (unscaled).
 *
 * Gradient accumulation (gradient_accumulation_steps k): by default (options.accumulate_locally)
 * the gradients are reduced once per applied step, not on every micro-step. On a micro-step each
 * rank adds its own gradient (unscaled, and with CUOPTIM_REDUCE_MEAN times float32(1 / world)) to
 * its own accumulators and nothing is communicated; on the step that applies, the accumulators
 * and that step's gradients are reduced, and the update reads their sums. Keras's accumulator is
 * then the sum over the ranks of theirs, and the result equals the single-process run on the mean
 * gradients within float32 rounding (the sums are added in another order: not bit for bit).
 * Which step applies must be known on the host when the step is enqueued:
 *   - the host backend always knows it (its counter is in host memory);
 *   - the CUDA backend counts the steps it enqueues: that count is lost when a step is captured
 *     in a CUDA graph (its replays are not seen) and set again by cuoptimSetWeights of the
 *     iteration counter or cuoptimLoad; with a LossScaleOptimizer (dynamic loss scaling) a
 *     micro-step may be skipped on the device, so the CUDA backend never knows it there;
 *   - where it is not known, a step reduces its gradients as with accumulate_locally = 0, after
 *     the accumulators were reduced once (so they are the same on every rank again), until the
 *     next applied step.
 * With a LossScaleOptimizer the host backend exchanges each micro-step's non-finite flags (a few
 * bytes per variable), so that every rank skips the same micro-steps. Sharded state always
 * reduce-scatters every micro-step into the accumulators' shares (ZeRO-1 keeps 1 / N of them).
 * Between applied steps, with local accumulators, reading an accumulator entry with
 * cuoptimGetWeights is a collective call (every rank makes it, in the same order): it sums the
 * accumulators across the ranks, which then hold the same values; cuoptimSetWeights of an
 * accumulator then keeps the values on rank 0 and zeros on the others (every rank passes the same
 * values, as always); cuoptimSave refuses (INVALID_STATE) until the next applied step.
 * On micro-steps with local accumulators the ranks do not compare their gradient lists.
 * options.accumulate_locally = 0: every micro-step's gradients are reduced, the accumulators stay
 * identical on every rank, and the result is bit for bit the single-process run on the ranks'
 * mean gradients wherever the sums are exact.
 *
 * Every rank must list the same non-NULL gradients, with the same dtypes, in every step. The host
 * backend checks it (one small exchange per step); the CUDA backend cannot without a host read,
 * which a captured step cannot make: there a difference pairs unrelated collectives (wrong sums
 * or a hang).
 *
 * CUDA backend (NCCL): for a gradient of `count` elements and N ranks, the first (count / N) * N
 * elements are reduce-scattered and all-gathered, the last count % N are reduced to one rank and
 * broadcast from it: each element is summed on one rank and copied to the others. ncclSum, never
 * ncclAvg. Gradients go in buckets of options.bucket_bytes, each bucket two NCCL groups (the
 * reductions, then the copies), in place in the caller's buffers, on the step's stream: no copy,
 * no allocation, no host read, so a whole step with its collectives can be captured in a CUDA
 * graph and replayed (from the second step on: the first compares the ranks' tables with a
 * blocking exchange). Do not call a step between your own ncclGroupStart and ncclGroupEnd (NCCL
 * would merge cuoptim's two groups into one). After NCCL_ERROR the communicator is unusable:
 * destroy the optimizer and ncclCommAbort the communicator.
 * ------------------------------------------------------------------------------------------- */
typedef enum {
  CUOPTIM_REDUCE_MEAN = 0, /* sum, then 1/world folded into the update (the default) */
  CUOPTIM_REDUCE_SUM = 1   /* sum */
} cuoptimReduceOp_t;

typedef struct {
  /* 1 (default): cuoptim reduces the gradients (Keras experimental_aggregate_gradients=True).
   * 0: the caller passes gradients it already reduced; nothing is communicated for them and
   * `reduce` is ignored. */
  int aggregate;
  cuoptimReduceOp_t reduce;
  /* Gradients are reduced in groups of variables of about this many bytes (default 25 MiB). */
  size_t bucket_bytes;
  /* Sharded optimizer state (ZeRO-1): each rank keeps the slots, fp32 masters, EMA averages and
   * accumulators of its share of every variable only (rank r of N: the count / N elements from
   * r * (count / N) on, the last rank also the count % N after them), the
   * gradients are reduce-scattered (each rank receives the sum of its share), each rank updates
   * its share of the parameters and then all ranks gather every parameter in its own type.
   * Per-variable norms (clipnorm, global_clipnorm, Lamb's trust ratios) and the non-finite check
   * combine the shares' partial sums in rank order, so every rank takes the same decision, the
   * same every run.
   * Elementwise steps are bit for bit those of the unsharded run. cuoptimGetWeights of a slot,
   * average or accumulator gathers it from every rank: with sharded state it is a collective call
   * that every rank makes in the same order; cuoptimSetWeights takes the full values on every rank
   * and keeps its share. State per rank for float32 Adam: 8 / N bytes per parameter (m, v) on
   * the CUDA backend, whose reduce-scatter leaves each rank's share in place in its gradient
   * buffer (the rest of that buffer then holds partial sums, not the gradient), 12 / N on the
   * host backend, which receives the share in a buffer of its own; besides the caller's parameter
   * and gradient. A variable of fewer elements than ranks is the last rank's alone.
   * cuoptimSave/cuoptimLoad of sharded state: each rank saves its own shares to its own file
   * (pass each rank its own path), and loads only a file that the same rank of a world of the
   * same size saved. */
  int shard_state;
  /* Host backend: how long a collective waits for the other ranks before the step (or
   * cuoptimSetCommunicator, whose duplicate of the communicator is one) fails with
   * CUOPTIM_STATUS_TIMEOUT, in seconds; 0 (default) waits forever. After a timeout the
   * communicator is in an unknown state: the optimizer refuses further steps (INVALID_STATE) and
   * the caller should abort (MPI_Abort). The CUDA backend enqueues its collectives and waits
   * only at the first step, for the table comparison: at most this long, then TIMEOUT (abort the
   * NCCL communicator); for its later steps use cuoptimSynchronizeTimeout. */
  double timeout_seconds;
  /* With gradient accumulation, 1 (default): each rank accumulates its own gradients and they are
   * reduced once per applied step (see "Gradient accumulation" above); 0: reduced on every
   * micro-step. */
  int accumulate_locally;
} cuoptimCommOptions_t;

/* Fills the defaults: aggregate 1, CUOPTIM_REDUCE_MEAN, 25 MiB buckets, no sharding, no timeout,
 * accumulate_locally 1.
 * Statuses: SUCCESS, NULL_POINTER. */
CUOPTIM_API cuoptimStatus_t cuoptimCommOptionsInit(cuoptimCommOptions_t *options);

/* Makes the optimizer one rank of a data-parallel group. `communicator` points at the caller's
 * handle: an `ncclComm_t` for CUOPTIM_BACKEND_CUDA, an `MPI_Comm` for CUOPTIM_BACKEND_HOST
 * (pass &comm). Every rank must make this call, with the same options, before its optimizer
 * state is built (first step or state access). The host backend duplicates the MPI
 * communicator (a collective call: all ranks call it together) and frees its duplicate in
 * cuoptimDestroy, which must then come before MPI_Finalize; the CUDA backend uses the caller's
 * NCCL communicator, which must outlive the optimizer. communicator == NULL detaches: the
 * optimizer is a single process again. A world of size 1 gives bit for bit the results of an
 * optimizer without communicator.
 * At the first step the ranks compare their variable tables (names, counts, dtypes, in order)
 * and their options: a difference fails that step on every rank with INVALID_VALUE and the same
 * message, naming the first differing variable (or option) and what two ranks have there. On the
 * host backend, every step, the ranks compare which variables they pass gradients for, and of
 * which dtypes: a difference fails that step in the same way.
 * The NCCL communicator must be on the optimizer's device and, if it is non-blocking
 * (config.blocking = 0), initialized (ncclCommGetAsyncError gives ncclSuccess). The rank and the
 * world are NCCL's (ncclCommUserRank, ncclCommCount). cuoptim never destroys it.
 * A MultiOptimizer attaches every sub-optimizer (see MultiOptimizer below); a sub-optimizer's own
 * handle is refused (INVALID_VALUE).
 * Statuses: SUCCESS, NULL_POINTER (options), INVALID_VALUE (an option out of range, shard_state with
 * Muon or Adafactor, a sub-optimizer's handle, a communicator MPI or NCCL refuses, *communicator NULL for NCCL, an NCCL communicator on another
 * device or still initializing), INVALID_STATE (the state is built; MPI not initialized),
 * NOT_SUPPORTED (this build has no MPI or no NCCL), TIMEOUT (host backend: the other ranks did not
 * join the duplicate within options.timeout_seconds; nothing attached, abort the communicator),
 * MPI_ERROR, NCCL_ERROR (NCCL reports the communicator failed; NCCL's text in the message),
 * CUDA_ERROR, ALLOC_FAILED. */
CUOPTIM_API cuoptimStatus_t cuoptimSetCommunicator(cuoptimOptimizer_t optimizer, const void *communicator,
                                                   const cuoptimCommOptions_t *options);

/* Gradient arena: cuoptim owns every variable's gradient in one flat buffer (each variable's
 * region 256-byte aligned, in the parameter's type), cut into buckets of consecutive variables of
 * about options.bucket_bytes (without communicator, 25 MiB). The caller's backward writes each
 * gradient straight into cuoptimGetGradientBuffer's pointer and then calls
 * cuoptimMarkGradientReady; when every variable of a bucket is ready, that bucket's reduction can
 * start while backward goes on. Buckets start in a fixed order, the last bucket first (backward
 * produces the last layers' gradients first), so every rank issues the same collectives in the
 * same order whatever order its variables become ready in: a bucket starts once it and every
 * bucket after it are ready. cuoptimApplyGradients then starts what has not started, waits only
 * for what is still in flight, and applies the listed gradients, which must be the arena's
 * pointers. After the step every variable is "not ready" again. Without communicator the arena
 * is simply cuoptim-owned gradient memory.
 * Host backend: a bucket's reduce-scatter starts in MarkGradientReady; its all-gather (unsharded)
 * in the step. CUDA backend: a mark records an event on its stream; a bucket that may start
 * runs its collectives on a stream of cuoptim's (named "cuoptim NCCL gradient buckets" in
 * Nsight), after the events of its variables' marks and the work before that call on its
 * stream, so they overlap the rest of backward; the step waits for them on its own stream. A
 * mark from a stream that is capturing a CUDA graph puts the bucket's collectives in that graph,
 * on that stream; a captured step whose buckets were started by marks outside the capture is
 * refused (INVALID_STATE). */

/* Asks for the gradient arena; before the state is built. Statuses: SUCCESS, NULL_POINTER,
 * INVALID_STATE (the state is built). */
CUOPTIM_API cuoptimStatus_t cuoptimEnableGradientArena(cuoptimOptimizer_t optimizer);

/* The arena's gradient buffer of `variable` (count elements of the variable's dtype, pointer of
 * the backend, zero after the build), valid until cuoptimDestroy. Builds the state if needed.
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (unknown variable), INVALID_STATE (no arena),
 * ALLOC_FAILED, CUDA_ERROR. */
CUOPTIM_API cuoptimStatus_t cuoptimGetGradientBuffer(cuoptimOptimizer_t optimizer, cuoptimVariable_t variable,
                                                     void **grad);

/* The gradient of `variable` in the arena is written (on `stream`, CUDA backend) and will not be
 * written again before the step. Marking a variable twice before a step is refused. May start
 * the reduction of the buckets that are now ready (a collective: all ranks mark the same
 * variables before each step). Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (unknown variable,
 * marked twice), INVALID_STATE (no arena; a communicator that failed earlier), MPI_ERROR,
 * NCCL_ERROR, CUDA_ERROR, ALLOC_FAILED. */
CUOPTIM_API cuoptimStatus_t cuoptimMarkGradientReady(cuoptimOptimizer_t optimizer, cuoptimVariable_t variable,
                                                     cuoptimStream_t stream);

/* The bytes of memory of the backend that the optimizer owns for its state: the arena of slots,
 * fp32 masters, EMA averages and accumulators (0 before the state is built) and, with a
 * communicator, its buffers for the gradients' shares. Parameters and gradients (the gradient
 * arena too) are not counted. Statuses: SUCCESS, NULL_POINTER. */
CUOPTIM_API cuoptimStatus_t cuoptimGetStateBytes(cuoptimOptimizer_t optimizer, size_t *bytes);

/* This rank and the number of ranks (0 and 1 without communicator).
 * Statuses: SUCCESS, NULL_POINTER. */
CUOPTIM_API cuoptimStatus_t cuoptimGetRank(cuoptimOptimizer_t optimizer, int *rank, int *world);
/* ---------------------------------------------------------------------------------------------
 * Checkpoints: the whole optimizer state in one safetensors file
 *
 * What is saved: every state entry of the list above (so the raw iteration counter, the
 * learning-rate variable, slots, EMA averages, gradient accumulators, the loss scale and its
 * counter, Nadam's u_product), each under its name, and the fp32 master copy of every
 * float16/bfloat16 variable as "<variable name>/master" (not Keras state, but needed to resume
 * exactly). The LossScaleOptimizer's own `iteration` and `learning_rate`, whose names the inner
 * optimizer's entries also carry, are stored as "loss_scale_optimizer/iteration" and
 * "loss_scale_optimizer/learning_rate". The parameters belong to the caller and are not saved.
 *
 * Format: safetensors, readable by Python's `safetensors` package (safetensors.numpy.load_file,
 * safe_open): an 8-byte little-endian header length, a JSON header padded with spaces to a multiple
 * of 8 bytes, then each tensor's raw little-endian bytes, end to end: the counters (iteration,
 * step_counter: "I64", so that they stay 8-byte aligned) first, then the "F32" tensors, each group
 * in the state list's order, the masters last in variable order. Scalars have shape [], arrays
 * [count]. The header's "__metadata__" holds strings:
 *   "format"          "cuoptim-checkpoint"
 *   "format_version"  "1"
 *   "cuoptim_version" "major.minor.patch" of the library that saved it
 *   "keras_config"    the optimizer's config as cuoptimConfigToKerasJSON writes it
 *   "variables"       JSON array, in registration order, of {"name", "dtype" ("float32",
 *                     "float16", "bfloat16"), "count", "weight_decay" (whether it applies)}
 *   "crc32"           JSON object: tensor name -> the CRC-32 of its bytes (Python's zlib.crc32)
 *                     as 8 lower-case hex digits
 * A tool that rewrites the file must keep the metadata and update "crc32"; the tensors may then
 * come in any order.
 *
 * A MultiOptimizer's checkpoint (cuoptimCreateMulti) is one file of the same format: its own
 * "iteration" (I64) and "learning_rate" under those names, then sub-optimizer k's tensors, each
 * named as in sub-optimizer k's own checkpoint with the prefix "optimizers/<k>/" (k = 0, 1, ... in
 * Keras's `optimizers` order: "optimizers/0/iteration", "optimizers/1/dense_kernel_momentum",
 * "optimizers/1/dense/kernel/master"). Its metadata has, instead of "variables":
 *   "keras_config"               the MultiOptimizer's Keras JSON (cuoptimToKerasJSON)
 *   "multi_optimizer"            JSON object: {"sub_optimizers": count, "name", "patterns": [keys],
 *                                "pattern_optimizer": [each key's sub-optimizer],
 *                                "default_optimizer", "variables": [{"name", "optimizer" (its
 *                                sub-optimizer), "shape"}, ...] in the MultiOptimizer's order}
 *   "optimizers/<k>/keras_config", "optimizers/<k>/variables"   sub-optimizer k's, as a plain
 *                                optimizer's "keras_config" and "variables"
 * cuoptimLoad on a MultiOptimizer checks all of it against the MultiOptimizer (the number of
 * sub-optimizers, the map, every variable's name, sub-optimizer and shape, then each
 * sub-optimizer's config and variables as for a plain optimizer) and every tensor of every
 * sub-optimizer before any sub-optimizer changes; a plain optimizer's file (a sub-optimizer's own
 * too) does not load into a MultiOptimizer, nor a MultiOptimizer's into a plain optimizer.
 *
 * Resuming: cuoptimSave after step k, then, in a fresh optimizer created with the same config,
 * the same variables (same names, dtypes, counts, same order) and the same weight-decay
 * exclusions, with the caller's parameters restored as they were at step k, cuoptimLoad and the
 * steps after k give bit for bit the parameters and state of training straight through, on
 * either backend (a checkpoint saved by one backend loads into the other). A MultiOptimizer
 * resumes alike when created with the same sub-optimizer configs and map, its sub-optimizers given
 * the same exclusions and its variables registered in the same order.
 *
 * Both calls use one host staging buffer of 4 MiB (pinned memory on the CUDA backend), whatever
 * the state's size, and, on the CUDA backend, copy on a stream of their own that waits for the
 * optimizer's last cuoptimApplyGradients step, whatever stream it ran on, and for no other work:
 * steps replayed from a CUDA graph, and a cuoptimFinalizeVariableValues still running on another
 * stream, must be complete (cudaStreamSynchronize) before either call. Allocating and freeing
 * pinned memory may synchronize the device on some drivers. Both return when they are done.
 * ------------------------------------------------------------------------------------------- */

/* Saves the whole optimizer state into the safetensors file `path` (format above). Builds the
 * state if no step did yet (as cuoptimGetWeights does).
 * Crash-safe: the file is written as "<path>.tmp.<pid>" in the same directory, fsynced, renamed
 * over `path`, then the directory is fsynced. A save that fails or is interrupted (a crash, a full
 * disk) leaves the file that was at `path` as it was; a failed save removes its temporary file
 * (after a crash one may remain, never read by cuoptimLoad). Only when the final fsync of the
 * directory fails is the new checkpoint already in place: IO_ERROR says so.
 * Sharded state (cuoptimCommOptions_t.shard_state): the file holds this rank's shares of the
 * arrays (shape [its share's count]) and the metadata "shard_rank" and "shard_world"; every rank
 * saves its own file, at a path of its own (not a collective).
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (empty path), NOT_SUPPORTED (two state entries with the same name, as Adagrad's or Ftrl's slot of a variable "x_gradient" and the gradient
 * accumulator of "x"; a header above safetensors' 100,000,000 bytes), INVALID_STATE (data-parallel
 * with local accumulators between applied steps: each rank holds only its part of them; see
 * "Gradient accumulation" of the data-parallel section), ALLOC_FAILED (host, pinned or
 * device memory), CUDA_ERROR, IO_ERROR (creating, writing, syncing or renaming the file; the
 * message names the file and the reason). */
CUOPTIM_API cuoptimStatus_t cuoptimSave(cuoptimOptimizer_t optimizer, const char *path);

/* Loads the whole optimizer state from the checkpoint `path` (written by cuoptimSave). Everything
 * is checked before the optimizer is changed: the safetensors structure (header length, JSON,
 * UTF-8, each tensor's dtype, shape and data_offsets, tensors end to end and exactly filling the
 * file), the metadata (format, format_version), the Keras config (equal to the optimizer's,
 * except the value of a constant learning rate, which is state: it is loaded, as
 * cuoptimSetLearningRate would set it), the variable table (the optimizer's variables: names,
 * dtypes, counts, weight decay, in order), every tensor of the state present once and no other,
 * then all the data, read into a scratch copy in backend memory (for the duration of the call:
 * as much memory as the checkpoint's tensors) while each tensor's CRC-32 is checked, and the
 * counters and scalars as cuoptimSetWeights checks them. Only then is the state built (if no step
 * did yet) and replaced. A mismatched, truncated or corrupted file, or a failed read, returns a
 * status whose message names the file, the tensor or field and the reason, and changes nothing
 * (not even building the state); only a CUDA error while the verified state is copied into place
 * can leave it partly replaced. The caller's parameters are not touched: restore them from the
 * caller's own checkpoint (a float16/bfloat16 parameter as its master rounded, as training left
 * it). Sharded state: this rank's file (see cuoptimSave); not a collective.
 * Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (empty path, not a regular file, not a cuoptim
 * checkpoint, truncated or trailing bytes, a dtype, shape, size or offset that does not fit, a
 * tensor missing, unknown or twice, another optimizer or config, other variables, a CRC-32 that
 * does not match, a counter or scalar out of range, a sharded state's file of another rank or
 * world, or one of sharded state into an optimizer whose state is not sharded and the reverse, a
 * plain optimizer's file into a MultiOptimizer and the reverse, another MultiOptimizer layout:
 * other sub-optimizers, map, variables, routing or shapes),
 * PARSE_ERROR (the header is not UTF-8 JSON), NOT_SUPPORTED (another format_version; two state entries with the same name, see
 * cuoptimSave),
 * ALLOC_FAILED, CUDA_ERROR, IO_ERROR (the file cannot be opened or read); a keras_config that
 * cuoptimConfigFromKerasJSON refuses gives that call's status (PARSE_ERROR for text that is not
 * JSON). */
CUOPTIM_API cuoptimStatus_t cuoptimLoad(cuoptimOptimizer_t optimizer, const char *path);

/* ---------------------------------------------------------------------------------------------
 * MultiOptimizer: keras.optimizers.MultiOptimizer with an OptimizerMap
 *
 * One handle (the same cuoptimOptimizer_t) drives several sub-optimizers, each with its own
 * config (hyperparameters, schedule, EMA, accumulation, clipping), its own iterations and its own
 * state; each variable belongs to exactly one of them, chosen by its name when it is registered:
 *   1. a pattern equal to the name (exact key match) picks its sub-optimizer;
 *   2. else every pattern is tried with Python's re.fullmatch: one match picks its sub-optimizer,
 *      more than one is an error (INVALID_VALUE, as Keras's "Multiple optimizers assigned to
 *      variable"), none gives the default sub-optimizer.
 * Patterns are Python 3.11 `re` expressions with the syntax, refusals and limits of
 * cuoptimExcludeFromWeightDecay; re.fullmatch(p, name) is run as re.search(r"\A(?:p)\Z", name),
 * with leading global flags such as "(?i)" moved before the \A. Limit: under a global (?x), a
 * pattern must not end in a comment that a newline would close.
 *
 * A step (cuoptimApplyGradients, cuoptimMinimize) splits the gradients by sub-optimizer and runs
 * one step of each sub-optimizer that received gradients: one launch set (its fused stages) per
 * sub-optimizer, in the sub-optimizers' order, all on the caller's stream; then the
 * MultiOptimizer's own iteration counter (on the host) advances by one. Keras passes every
 * variable's gradient (None for none): here unlisted variables are None. As in Keras, a
 * sub-optimizer that has variables but receives only None fails the step ("No gradients
 * provided for any variable."): INVALID_VALUE, before any sub-optimizer is stepped. A failure
 * inside a sub-optimizer's step (CUDA_ERROR, ALLOC_FAILED) leaves the sub-optimizers before it
 * stepped and the counter unchanged.
 *
 * loss_scale_factor of the MultiOptimizer replaces every sub-optimizer's (NONE too), as Keras's
 * constructor sets it on each.
 *
 * What each call means on a MultiOptimizer handle:
 *   cuoptimAddVariable(WithShape)   routed by name (above); the index is the MultiOptimizer's
 *                                   (0, 1, 2, ...). Refused once the state is built (first step or
 *                                   state access) and on a sub-optimizer's handle.
 *   cuoptimGetVariableCount/Shape, cuoptimUsesWeightDecay   the variable's, as registered.
 *   cuoptimApplyGradients, cuoptimMinimize   as above. CUDA backend: a step may be captured in a
 *                                   CUDA graph (after the first, as for any optimizer); each replay
 *                                   is a step of the MultiOptimizer and of its sub-optimizers. A
 *                                   step of a sub-optimizer's own handle is not a MultiOptimizer
 *                                   step, and is refused on a capturing stream (INVALID_STATE).
 *   cuoptimGetIterations            the MultiOptimizer's own count of steps (Keras `iterations`):
 *                                   every sub-optimizer with variables steps in every step, so
 *                                   the count follows the first one's raw counter (replays
 *                                   included); setting the MultiOptimizer's "iteration" entry sets
 *                                   it, setting or loading a sub-optimizer's counter leaves it.
 *   cuoptimGetWeightCount/Info, cuoptimGetWeights/SetWeights   Keras's `variables` order: the
 *                                   MultiOptimizer's "iteration" (a counter) and "learning_rate"
 *                                   (Keras creates it with 0.0 and never uses it), then every
 *                                   sub-optimizer's entries in its order, as that sub-optimizer
 *                                   lists them (so names such as "iteration" repeat; the index
 *                                   tells them apart). A sub-optimizer without variables lists
 *                                   its iteration and learning_rate only.
 *   cuoptimFinalizeVariableValues   each sub-optimizer's (EMA ones overwrite their variables).
 *   cuoptimSetCommunicator          data-parallel training: every sub-optimizer attaches the
 *                                   communicator with the same options (each its own duplicate of
 *                                   an MPI communicator), so each one's gradients are reduced in
 *                                   its own step, as a plain optimizer's. All or none: on failure
 *                                   every sub-optimizer keeps what it had, and the message names the
 *                                   sub-optimizer that failed (options->shard_state with a Muon or
 *                                   Adafactor sub-optimizer is refused). Every rank must give, in
 *                                   each step, gradients for the same variables, so that the same
 *                                   sub-optimizers step on every rank (a sub-optimizer that one
 *                                   rank steps and another does not waits for it, up to
 *                                   options->timeout_seconds on the host backend).
 *   cuoptimGetRank                  the sub-optimizers' rank and world.
 *   cuoptimSynchronize(Timeout), cuoptimGetStateBytes   over all.
 *   cuoptimToKerasJSON              the MultiOptimizer's Keras JSON.
 *   cuoptimSave, cuoptimLoad        the MultiOptimizer's counter and every sub-optimizer's state
 *                                   in one file ("Checkpoints": names under "optimizers/<k>/",
 *                                   the layout in the metadata); with a communicator as for a
 *                                   plain optimizer (sharded state: a file per rank). Both build
 *                                   every sub-optimizer's state (no more variables after them)
 *                                   and first wait for every sub-optimizer's work, as
 *                                   cuoptimSynchronize does.
 *   cuoptimDestroy                  the MultiOptimizer and its sub-optimizers.
 * Refused with NOT_SUPPORTED and a message: cuoptimGetConfig (there is no single config: use
 * cuoptimGetSubOptimizer), cuoptimGetLearningRate and cuoptimSetLearningRate (as Keras raises
 * AttributeError: use the sub-optimizers'), cuoptimGetLossScale, cuoptimExcludeFromWeightDecay
 * (call it on a sub-optimizer, before the first step), the gradient arena calls and
 * cuoptimScheduleFreeAveragedWeights (ask the sub-optimizer, with the variable's index there from
 * cuoptimGetVariableOptimizer).
 *
 * A sub-optimizer's handle (cuoptimGetSubOptimizer) is Keras's `optimizer.optimizers[i]`: it
 * answers every query of a plain optimizer (its iterations, learning rate, config, state), takes
 * cuoptimSetLearningRate and cuoptimExcludeFromWeightDecay, and could be stepped alone; its
 * cuoptimSave and cuoptimLoad are a plain optimizer's (its own state alone, not the
 * MultiOptimizer's counter; such a file loads into that sub-optimizer's handle only); it
 * belongs to the MultiOptimizer: cuoptimDestroy, cuoptimAddVariable(WithShape) and
 * cuoptimSetCommunicator refuse it (INVALID_VALUE), and it lives until the MultiOptimizer is
 * destroyed.
 * Not supported: a LossScaleOptimizer inside a MultiOptimizer (Keras refuses it), a
 * MultiOptimizer inside a MultiOptimizer (Keras refuses it) or inside a LossScaleOptimizer.
 * ------------------------------------------------------------------------------------------- */

#define CUOPTIM_MAX_SUB_OPTIMIZERS 64 /* sub-optimizers of one MultiOptimizer */
#define CUOPTIM_MAX_PATTERNS 256      /* OptimizerMap keys of one MultiOptimizer */

typedef struct {
  /* The sub-optimizers, 1 .. CUOPTIM_MAX_SUB_OPTIMIZERS, in Keras's `optimizers` order: each in
   * the order of its first appearance in pattern_optimizer, the default last unless a pattern
   * uses it; every one is used by a pattern or is the default. No LossScaleOptimizer
   * (dynamic_loss_scale 0). */
  int num_optimizers;
  const cuoptimConfig_t *optimizers;
  /* The OptimizerMap's keys, 0 .. CUOPTIM_MAX_PATTERNS, distinct non-empty UTF-8 strings of at
   * most 16384 bytes, and for each the index of its sub-optimizer. */
  int num_patterns;
  const char *const *patterns;
  const int *pattern_optimizer;
  int default_optimizer;     /* index of the OptimizerMap's default_optimizer */
  double loss_scale_factor;  /* NONE (default) or > 0; replaces every sub-optimizer's */
  char name[CUOPTIM_MAX_NAME]; /* Keras `name`; default "multi_optimizer" ("" also means it) */
} cuoptimMultiConfig_t;

/* Zeroes *config and sets loss_scale_factor NONE, default_optimizer 0, name "multi_optimizer".
 * Statuses: SUCCESS, NULL_POINTER. */
CUOPTIM_API cuoptimStatus_t cuoptimMultiConfigInit(cuoptimMultiConfig_t *config);

/* Creates a MultiOptimizer on `backend` (device as cuoptimCreate): every sub-config is validated
 * (cuoptimConfigValidate, after loss_scale_factor was replaced) and every pattern compiled before
 * anything is created. Statuses: SUCCESS, NULL_POINTER (optimizer, config, config->optimizers,
 * config->patterns or config->pattern_optimizer with num_patterns > 0, a pattern), INVALID_VALUE
 * (a count out of range, an index out of range, sub-optimizers out of Keras's order or unused,
 * a duplicate, empty or refused pattern, an invalid sub-config, loss_scale_factor, name),
 * NOT_SUPPORTED (a sub-config that is a LossScaleOptimizer), and those of cuoptimCreate. */
CUOPTIM_API cuoptimStatus_t cuoptimCreateMulti(cuoptimOptimizer_t *optimizer, const cuoptimMultiConfig_t *config,
                                               cuoptimBackend_t backend, int device);

/* Creates an optimizer from the output of `json.dumps(keras.optimizers.serialize(opt))`: any
 * optimizer cuoptimConfigFromKerasJSON reads (then as cuoptimCreate of that config), or a
 * MultiOptimizer with its OptimizerMap (Keras 3.15: config {"optimizer_map", "loss_scale_factor",
 * "name"}; the map's config {"default_optimizer", "optimizer_map": {key: optimizer} or null}),
 * each key its own sub-optimizer (a deserialized map shares none), the default last. Keys repeat
 * as in Python (the last one counts). Statuses: SUCCESS, NULL_POINTER, PARSE_ERROR (not JSON),
 * INVALID_VALUE (unknown class or key, wrong type, a sub-optimizer cuoptimConfigFromKerasJSON
 * refuses: the message names its place), NOT_SUPPORTED (a LossScaleOptimizer inside the map,
 * a MultiOptimizer inside a LossScaleOptimizer or the map), and those of cuoptimCreateMulti. */
CUOPTIM_API cuoptimStatus_t cuoptimCreateFromKerasJSON(cuoptimOptimizer_t *optimizer, const char *json,
                                                       cuoptimBackend_t backend, int device);

/* The optimizer's Keras JSON (a plain optimizer: cuoptimConfigToKerasJSON of its config, with the
 * learning rate it has now; a MultiOptimizer: keras.optimizers.serialize's text, every sub-
 * optimizer written in full under each key that uses it). Buffer and *length as
 * cuoptimConfigToKerasJSON. Statuses: SUCCESS, NULL_POINTER (optimizer), INVALID_VALUE (small
 * buffer), ALLOC_FAILED. */
CUOPTIM_API cuoptimStatus_t cuoptimToKerasJSON(cuoptimOptimizer_t optimizer, char *buffer, size_t capacity,
                                               size_t *length);

/* The number of sub-optimizers (0 for a plain optimizer). Statuses: SUCCESS, NULL_POINTER. */
CUOPTIM_API cuoptimStatus_t cuoptimGetSubOptimizerCount(cuoptimOptimizer_t optimizer, int *count);

/* Sub-optimizer `index` of a MultiOptimizer (see above for what it may do). Statuses: SUCCESS,
 * NULL_POINTER, INVALID_VALUE (not a MultiOptimizer, index out of range). */
CUOPTIM_API cuoptimStatus_t cuoptimGetSubOptimizer(cuoptimOptimizer_t optimizer, int index, cuoptimOptimizer_t *sub);

/* Which sub-optimizer `variable` of a MultiOptimizer belongs to (*index) and its index there
 * (*sub_variable, optional). Statuses: SUCCESS, NULL_POINTER, INVALID_VALUE (not a
 * MultiOptimizer, unknown variable). */
CUOPTIM_API cuoptimStatus_t cuoptimGetVariableOptimizer(cuoptimOptimizer_t optimizer, cuoptimVariable_t variable,
                                                        int *index, cuoptimVariable_t *sub_variable);

#ifdef __cplusplus
}
#endif

#endif /* CUOPTIM_H */
