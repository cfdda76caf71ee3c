/* The gradient arena: cuoptim-owned gradients, one flat buffer in buckets of consecutive
 * variables, so the caller's backward writes into it and each bucket's reduction can start as
 * soon as its gradients are marked ready (include/cuoptim.h has the contract). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define ARENA_ALIGNMENT 256
#define DEFAULT_BUCKET_BYTES ((size_t)25 << 20)

cuoptimStatus_t cuoptimEnableGradientArena(cuoptimOptimizer_t opt) {
  static const char *caller = "cuoptimEnableGradientArena";
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  if (opt->built)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: the optimizer state is built: ask for the arena before the first step or state access",
                         caller);
  opt->arena_requested = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

static size_t region_bytes(const cuoptimVariableRec *v) {
  size_t bytes = v->count * cuoptim_dtype_size(v->dtype); /* count <= 2^40 */
  return (bytes + ARENA_ALIGNMENT - 1) / ARENA_ALIGNMENT * ARENA_ALIGNMENT;
}

void cuoptim_arena_release(cuoptimOptimizer_t opt) {
  if (opt->grad_arena) opt->ops->free(opt, opt->grad_arena);
  opt->grad_arena = NULL;
  for (int k = 0; k < opt->num_variables; k++) opt->variables[k].arena_grad = NULL;
  free(opt->bucket_first);
  free(opt->bucket_of);
  free(opt->bucket_pending);
  free(opt->ready);
  opt->bucket_first = opt->bucket_of = opt->bucket_pending = NULL;
  opt->ready = NULL;
  opt->num_buckets = 0;
}

void cuoptim_arena_end_step(cuoptimOptimizer_t opt) {
  if (!opt->grad_arena) return;
  memset(opt->ready, 0, (size_t)opt->num_variables);
  for (int b = 0; b < opt->num_buckets; b++) opt->bucket_pending[b] = opt->bucket_first[b + 1] - opt->bucket_first[b];
  opt->next_bucket = opt->num_buckets - 1;
}

/* Consecutive variables, about bucket_bytes each (a larger variable is a bucket of its own). */
static cuoptimStatus_t cut_buckets(cuoptimOptimizer_t opt, const char *caller) {
  int n = opt->num_variables;
  size_t limit = opt->comm ? opt->comm->options.bucket_bytes : DEFAULT_BUCKET_BYTES;
  opt->bucket_first = malloc((size_t)(n + 1) * sizeof(int));
  opt->bucket_of = malloc((size_t)(n ? n : 1) * sizeof(int));
  opt->bucket_pending = malloc((size_t)(n ? n : 1) * sizeof(int));
  opt->ready = malloc((size_t)(n ? n : 1));
  if (!opt->bucket_first || !opt->bucket_of || !opt->bucket_pending || !opt->ready)
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  int buckets = 0;
  size_t filled = 0;
  for (int k = 0; k < n; k++) {
    if (k == 0 || filled >= limit) {
      opt->bucket_first[buckets++] = k;
      filled = 0;
    }
    opt->bucket_of[k] = buckets - 1;
    filled += opt->variables[k].count * cuoptim_dtype_size(opt->variables[k].dtype);
  }
  opt->bucket_first[buckets] = n;
  opt->num_buckets = buckets;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_arena_build(cuoptimOptimizer_t opt, const char *caller) {
  if (!opt->arena_requested || opt->grad_arena) return CUOPTIM_STATUS_SUCCESS;
  size_t total = 0;
  for (int k = 0; k < opt->num_variables; k++) total += region_bytes(&opt->variables[k]); /* <= 2^29 * 2^42 */
  cuoptimStatus_t status = cut_buckets(opt, caller);
  void *arena = NULL;
  if (status == CUOPTIM_STATUS_SUCCESS) status = opt->ops->alloc(opt, total, &arena);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    cuoptim_arena_release(opt);
    return status;
  }
  opt->grad_arena = arena;
  size_t offset = 0;
  for (int k = 0; k < opt->num_variables; k++) {
    opt->variables[k].arena_grad = (char *)arena + offset;
    offset += region_bytes(&opt->variables[k]);
  }
  cuoptim_arena_end_step(opt);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t check_arena_variable(cuoptimOptimizer_t opt, cuoptimVariable_t variable, const char *caller) {
  if (!opt->arena_requested)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE, "%s: the optimizer has no gradient arena (cuoptimEnableGradientArena)",
                         caller);
  if (variable < 0 || variable >= opt->num_variables)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: variable = %d: no such variable (%d registered)", caller,
                         (int)variable, opt->num_variables);
  return cuoptim_build(opt, caller, NULL);
}

cuoptimStatus_t cuoptimGetGradientBuffer(cuoptimOptimizer_t opt, cuoptimVariable_t variable, void **grad) {
  static const char *caller = "cuoptimGetGradientBuffer";
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, grad);
  CUOPTIM_CHECK(check_arena_variable(opt, variable, caller));
  *grad = opt->variables[variable].arena_grad;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Starts, in their fixed order, every bucket that may start now. */
static cuoptimStatus_t start_ready_buckets(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  const cuoptimComm *c = opt->comm;
  /* A micro-step with local accumulators reduces nothing (cuoptim_comm_step_kind). */
  int communicates = c && c->options.aggregate && c->world > 1 && c->ops->start_bucket &&
                     cuoptim_comm_step_kind(opt, stream) != CUOPTIM_STEP_LOCAL;
  if (communicates && opt->next_bucket >= 0 && opt->bucket_pending[opt->next_bucket] == 0)
    CUOPTIM_CHECK(cuoptim_comm_check_tables(opt, "cuoptimMarkGradientReady"));
  while (opt->next_bucket >= 0 && opt->bucket_pending[opt->next_bucket] == 0) {
    if (communicates) {
      cuoptimStatus_t status = c->ops->start_bucket(opt, opt->next_bucket, stream);
      if (status != CUOPTIM_STATUS_SUCCESS) {
        if (status == CUOPTIM_STATUS_MPI_ERROR || status == CUOPTIM_STATUS_NCCL_ERROR) opt->comm->broken = 1;
        return status;
      }
    }
    opt->next_bucket--;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimMarkGradientReady(cuoptimOptimizer_t opt, cuoptimVariable_t variable, cuoptimStream_t stream) {
  static const char *caller = "cuoptimMarkGradientReady";
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_CHECK(check_arena_variable(opt, variable, caller));
  if (opt->comm && opt->comm->broken)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: an earlier collective of this optimizer timed out or failed: its communicator is in an "
                         "unknown state (abort it)",
                         caller);
  if (opt->ready[variable])
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: variable = %d (\"%s\") is already marked ready for this step", caller, (int)variable,
                         opt->variables[variable].name);
  const cuoptimComm *c = opt->comm;
  if (c && c->options.aggregate && c->world > 1 && c->ops->mark &&
      cuoptim_comm_step_kind(opt, stream) != CUOPTIM_STEP_LOCAL) {
    cuoptimStatus_t status = c->ops->mark(opt, variable, stream);
    if (status != CUOPTIM_STATUS_SUCCESS) return status;
  }
  opt->ready[variable] = 1;
  opt->bucket_pending[opt->bucket_of[variable]]--;
  return start_ready_buckets(opt, stream);
}

cuoptimStatus_t cuoptim_arena_check_step(cuoptimOptimizer_t opt, const char *caller) {
  if (!opt->grad_arena) return CUOPTIM_STATUS_SUCCESS;
  for (int k = 0; k < opt->num_variables; k++) {
    const cuoptimStepGradient *g = &opt->step_grads[k];
    const cuoptimVariableRec *v = &opt->variables[k];
    if (g->grad && (g->grad != v->arena_grad || g->dtype != v->dtype))
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           "%s: the gradient of variable %d (\"%s\") is not its gradient-arena buffer (%p, %s): with "
                           "an arena every gradient is cuoptim's (cuoptimGetGradientBuffer)",
                           caller, k, v->name, v->arena_grad, cuoptim_dtype_name(v->dtype));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_arena_start_all(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  for (int b = 0; b < opt->num_buckets; b++) opt->bucket_pending[b] = 0;
  return start_ready_buckets(opt, stream);
}
