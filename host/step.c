/* One optimizer step, as DESIGN.md draws it: aggregate, inspect, prologue, update, finish.
 * Backend-independent: each stage is run by the backend's executor, inside an NVTX range (in builds
 * with NVTX). */
#include <string.h>

#ifdef CUOPTIM_HAVE_NVTX
#include <nvtx3/nvToolsExt.h>
#endif

#include "internal.h"

#ifdef CUOPTIM_HAVE_NVTX
static nvtxDomainHandle_t nvtx_domain(void) {
  static nvtxDomainHandle_t domain;
  if (!domain) domain = nvtxDomainCreateA("cuoptim");
  return domain;
}

static void range_push(const char *name) {
  nvtxEventAttributes_t attributes;
  memset(&attributes, 0, sizeof attributes);
  attributes.version = NVTX_VERSION;
  attributes.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
  attributes.messageType = NVTX_MESSAGE_TYPE_ASCII;
  attributes.message.ascii = name;
  nvtxDomainRangePushEx(nvtx_domain(), &attributes);
}

static void range_pop(void) { nvtxDomainRangePop(nvtx_domain()); }
#else
/* Built without NVTX (CUOPTIM_WITH_NVTX=OFF, or a host-only build that found no NVTX headers):
 * the step runs without ranges. */
static void range_push(const char *name) { (void)name; }
static void range_pop(void) {}
#endif

int cuoptim_needs_inspect(const cuoptimOptimizer_t opt) {
  const cuoptimRuleParams *p = &opt->prologue.rule;
  return p->clip == CUOPTIM_CLIP_NORM || p->clip == CUOPTIM_CLIP_GLOBAL_NORM || p->dynamic_loss_scale;
}

/* Checks the list and records each variable's gradient for this step, in O(n): duplicates are
 * found through a per-call round number, and the backend checks a pointer only when it differs
 * from the last one that passed. Nothing is modified on failure but opt->step_grads, which only a
 * step reads. */
static cuoptimStatus_t bind_gradients(cuoptimOptimizer_t opt, int n, const cuoptimGradient_t *grads,
                                      const char *caller) {
  if (++opt->bind_round == 0) { /* wrapped: forget every old round */
    for (int i = 0; i < opt->num_variables; i++) opt->step_grads[i].listed_in = 0;
    opt->bind_round = 1;
  }
  for (int i = 0; i < opt->num_variables; i++) opt->step_grads[i].grad = opt->step_grads[i].listed = NULL;
  int count = 0;
  for (int k = 0; k < n; k++) {
    const cuoptimGradient_t *g = &grads[k];
    if (g->variable < 0 || g->variable >= opt->num_variables)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: grads[%d].variable = %d: no such variable (%d registered)",
                           caller, k, (int)g->variable, opt->num_variables);
    if (g->dtype != CUOPTIM_FLOAT32 && g->dtype != CUOPTIM_FLOAT16 && g->dtype != CUOPTIM_BFLOAT16)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: grads[%d].dtype = %d is not a cuoptimDtype_t", caller, k,
                           (int)g->dtype);
    cuoptimStepGradient *bound = &opt->step_grads[g->variable];
    if (bound->listed_in == opt->bind_round)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: grads[%d] and grads[%d] both name variable %d (\"%s\")",
                           caller, bound->listed_at, k, (int)g->variable, opt->variables[g->variable].name);
    bound->listed_in = opt->bind_round;
    bound->listed_at = k;
    if (!g->grad) continue; /* Keras drops None gradients */
    if (g->grad != bound->checked || g->dtype != bound->checked_dtype) {
      CUOPTIM_CHECK(opt->ops->check_pointer(opt, g->grad, g->dtype, caller, "grads[].grad"));
      bound->checked = g->grad;
      bound->checked_dtype = g->dtype;
    }
    bound->grad = g->grad;
    bound->listed = g->grad;
    bound->dtype = g->dtype;
    count++;
  }
  if (count == 0)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: every gradient is NULL: no gradient to apply", caller);
  return CUOPTIM_STATUS_SUCCESS;
}

/* One stage inside its NVTX range; once enqueued, the backend marks its end under the stage's
 * name (what cuoptimSynchronizeTimeout names while the stage runs). A new stage is one more call. */
static cuoptimStatus_t run_stage(const char *name, cuoptimStatus_t (*stage)(cuoptimOptimizer_t, cuoptimStream_t),
                                 cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  range_push(name);
  cuoptimStatus_t status = stage(opt, stream);
  range_pop();
  if (status == CUOPTIM_STATUS_SUCCESS) status = opt->ops->stage_enqueued(opt, name, stream);
  return status;
}

/* The data-parallel stage: the table check, the arena's buckets, the gradients' reduction. */
static cuoptimStatus_t aggregate_stage(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  return cuoptim_comm_begin_step(opt, stream, opt->step_kind, "cuoptimApplyGradients");
}

/* The inspect pass's sums and flags cover a part of the gradients: a shard's, or (a micro-step
 * with local accumulators and a LossScaleOptimizer) one rank's, whose non-finite flags every rank
 * must see to skip the same micro-steps. */
static int combines_inspect(const cuoptimOptimizer_t opt) {
  return cuoptim_comm_sharded(opt) || (opt->step_kind == CUOPTIM_STEP_LOCAL && opt->prologue.rule.dynamic_loss_scale);
}

/* The prologue reads the inspect pass's sums only when it ran. */
static cuoptimStatus_t run_prologue(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  return opt->ops->prologue(opt, cuoptim_needs_inspect(opt), stream);
}

cuoptimStatus_t cuoptimApplyGradients(cuoptimOptimizer_t opt, int n, const cuoptimGradient_t *grads,
                                      cuoptimStream_t stream) {
  static const char *caller = "cuoptimApplyGradients";
  if (opt && opt->multi) return cuoptim_multi_apply(opt, n, grads, stream);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  if (cuoptim_multi_lone_step_of(opt)) return cuoptim_multi_lone_step(opt, n, grads, stream);
  if (n < 0) return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: n = %d: must be >= 0", caller, n);
  if (n == 0) return CUOPTIM_STATUS_SUCCESS; /* Keras returns early, iterations unchanged */
  CUOPTIM_REQUIRE_NOT_NULL(caller, grads);
  if (opt->num_variables == 0)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: the optimizer has no variables (cuoptimAddVariable)", caller);
  /* A rank whose first step fails here still joins the ranks' first comparison, so that they fail
   * with it rather than wait for it. */
  cuoptimStatus_t status = bind_gradients(opt, n, grads, caller);
  if (status == CUOPTIM_STATUS_SUCCESS) status = cuoptim_build(opt, caller, &stream);
  if (status == CUOPTIM_STATUS_SUCCESS) status = cuoptim_arena_check_step(opt, caller);
  if (status != CUOPTIM_STATUS_SUCCESS) return cuoptim_comm_first_step_failed(opt, status, caller);
  cuoptim_comm_prepare_step(opt);
  opt->step_kind = cuoptim_comm_step_kind(opt, stream);
  CUOPTIM_CHECK(cuoptim_comm_check_capture(opt, stream, caller));

  range_push("cuoptim step");
  status = opt->ops->begin_step(opt, stream);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    range_pop();
    return status;
  }
  if (cuoptim_comm_active(opt)) status = run_stage("aggregate", aggregate_stage, opt, stream);
  /* Every bucket of the arena has been reduced (or there was nothing to reduce): the next step's
   * gradients may be marked. */
  if (status == CUOPTIM_STATUS_SUCCESS) cuoptim_arena_end_step(opt);
  int inspected = cuoptim_needs_inspect(opt);
  if (inspected && status == CUOPTIM_STATUS_SUCCESS) status = run_stage("inspect", opt->ops->inspect, opt, stream);
  /* The parts' sums and flags combined into every variable's (the aggregate range). */
  if (inspected && status == CUOPTIM_STATUS_SUCCESS && combines_inspect(opt))
    status = run_stage("aggregate", cuoptim_comm_combine_inspect, opt, stream);
  if (status == CUOPTIM_STATUS_SUCCESS) status = run_stage("prologue", run_prologue, opt, stream);
  if (status == CUOPTIM_STATUS_SUCCESS) status = run_stage("update", opt->ops->update, opt, stream);
  /* A backend without a finish stage advances the state in its prologue. */
  if (status == CUOPTIM_STATUS_SUCCESS && opt->ops->finish)
    status = run_stage("finish", opt->ops->finish, opt, stream);
  /* Sharded state: every rank's share of the parameters gathered. */
  if (status == CUOPTIM_STATUS_SUCCESS && cuoptim_comm_sharded(opt))
    status = run_stage("aggregate", cuoptim_comm_end_step, opt, stream);
  status = opt->ops->end_step(opt, stream, status);
  cuoptim_comm_end_accumulation(opt, opt->step_kind, stream, status);
  range_pop();
  return status;
}

cuoptimStatus_t cuoptimMinimize(cuoptimOptimizer_t opt, cuoptimGradientFn grad_fn, void *user, cuoptimStream_t stream) {
  static const char *caller = "cuoptimMinimize";
  /* A MultiOptimizer steps through cuoptimApplyGradients too. */
  if (opt == NULL) return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: optimizer is NULL", caller);
  CUOPTIM_REQUIRE_NOT_NULL(caller, grad_fn);
  int n = -1;
  const cuoptimGradient_t *grads = NULL;
  cuoptimStatus_t status = grad_fn(user, opt, stream, &n, &grads);
  if (status != CUOPTIM_STATUS_SUCCESS) return status;
  if (n < 0)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: grad_fn left *n = %d: it must set the gradient count",
                         caller, n);
  if (n > 0 && !grads)
    return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: grad_fn set *n = %d but left *grads NULL", caller, n);
  return cuoptimApplyGradients(opt, n, grads, stream);
}
