/* CUOPTIM_BACKEND_HOST: every stage as plain C loops over host memory, calling the same
 * per-element functions (cuda/rules.h, cuda/prologue.h) as the CUDA kernels. The reference
 * implementation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static cuoptimStatus_t host_init(cuoptimOptimizer_t opt) { return CUOPTIM_STATUS_SUCCESS; }

static cuoptimStatus_t host_release(cuoptimOptimizer_t opt) { return CUOPTIM_STATUS_SUCCESS; }

static cuoptimStatus_t host_check_pointer(cuoptimOptimizer_t opt, const void *ptr, cuoptimDtype_t dtype,
                                          const char *caller,
                                          const char *what) {
  return CUOPTIM_STATUS_SUCCESS; /* any host address is usable */
}

static cuoptimStatus_t host_alloc(cuoptimOptimizer_t opt, size_t bytes, void **ptr) {
  *ptr = aligned_alloc(256, bytes ? (bytes + 255) / 256 * 256 : 256);
  if (!*ptr) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: cannot allocate %zu bytes of host memory", bytes);
  memset(*ptr, 0, bytes);
  return CUOPTIM_STATUS_SUCCESS;
}

static void host_free(cuoptimOptimizer_t opt, void *ptr) { free(ptr); }

static cuoptimStatus_t host_copy(cuoptimOptimizer_t opt, void *dst, const void *src, size_t bytes) {
  memmove(dst, src, bytes);
  return CUOPTIM_STATUS_SUCCESS;
}

/* Caller buffers may have any alignment: their elements are copied, never dereferenced in place. */
static float load_element(const void *buffer, cuoptimDtype_t dtype, size_t i) {
  if (dtype == CUOPTIM_FLOAT32) {
    float value;
    memcpy(&value, (const char *)buffer + i * sizeof value, sizeof value);
    return value;
  }
  uint16_t bits;
  memcpy(&bits, (const char *)buffer + i * sizeof bits, sizeof bits);
  return dtype == CUOPTIM_FLOAT16 ? cuoptim_half_to_float(bits) : cuoptim_bfloat16_to_float(bits);
}

static void store_element(void *buffer, cuoptimDtype_t dtype, size_t i, float value) {
  if (dtype == CUOPTIM_FLOAT32) {
    memcpy((char *)buffer + i * sizeof value, &value, sizeof value);
    return;
  }
  uint16_t bits = dtype == CUOPTIM_FLOAT16 ? cuoptim_float_to_half(value) : cuoptim_float_to_bfloat16(value);
  memcpy((char *)buffer + i * sizeof bits, &bits, sizeof bits);
}

/* The float32 value the rules update: the master of a half variable, or the caller's float32. */
static float load_working(const cuoptimVariableRec *v, size_t i) {
  return v->master ? v->master[i] : load_element(v->local_param, CUOPTIM_FLOAT32, i);
}

/* Stores the updated value: into the master and the half parameter, or the caller's float32. */
static void store_working(const cuoptimVariableRec *v, size_t i, float value) {
  if (v->master) v->master[i] = value;
  store_element(v->local_param, v->dtype, i, value);
}

static int host_capturing(cuoptimOptimizer_t opt, cuoptimStream_t stream) { return 0; }

static cuoptimStatus_t host_check_build_stream(cuoptimOptimizer_t opt, cuoptimStream_t stream, const char *caller) {
  return CUOPTIM_STATUS_SUCCESS; /* streams mean nothing here */
}

static cuoptimStatus_t host_build(cuoptimOptimizer_t opt, const cuoptimStream_t *stream) {
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimVariableRec *v = &opt->variables[k];
    if (v->master)
      for (size_t i = 0; i < v->local_count; i++) v->master[i] = load_element(v->local_param, v->dtype, i);
    for (int s = 0; s < opt->slots.count; s++) {
      if (!v->slots[s]) continue;
      if (cuoptim_slot_copies_variable(&opt->config, s)) {
        for (size_t i = 0; i < v->local_count; i++) v->slots[s][i] = load_working(v, i);
        continue;
      }
      float initial = cuoptim_slot_initial_value(&opt->config, s);
      for (size_t i = 0; i < v->local_count; i++) v->slots[s][i] = initial;
    }
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_begin_step(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_end_step(cuoptimOptimizer_t opt, cuoptimStream_t stream, cuoptimStatus_t status) {
  return status;
}

static cuoptimStatus_t host_stage_enqueued(cuoptimOptimizer_t opt, const char *stage, cuoptimStream_t stream) {
  return CUOPTIM_STATUS_SUCCESS; /* each stage is done when it returns */
}

static cuoptimStatus_t host_inspect(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  const cuoptimRuleParams *p = &opt->prologue.rule;
  float loss_scale = opt->state->loss_scale;
  for (int k = 0; k < opt->num_variables; k++) {
    const cuoptimVariableRec *v = &opt->variables[k];
    const cuoptimStepGradient *g = &opt->step_grads[k];
    cuoptimTensorScalars *t = &opt->tensors[k];
    t->grad_sumsq = 0.0;
    t->nonfinite = 0;
    if (!g->grad) continue;
    double sumsq = 0.0;
    int nonfinite = 0;
    for (size_t i = 0; i < v->local_count; i++) {
      float raw = load_element(g->grad, g->dtype, i);
      nonfinite |= !isfinite(raw);
      float x = cuoptim_inspect_gradient(p, loss_scale, raw, v->accumulator ? v->accumulator[i] : 0.0f);
      sumsq += (double)x * (double)x;
    }
    t->grad_sumsq = sumsq;
    t->nonfinite = nonfinite;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_prologue(cuoptimOptimizer_t opt, int inspected, cuoptimStream_t stream) {
  cuoptim_prologue_begin(&opt->prologue, opt->state, opt->scalars);
  if (!inspected) return CUOPTIM_STATUS_SUCCESS;
  double total = 0.0;
  int nonfinite = 0;
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptim_prologue_tensor(&opt->prologue, &opt->tensors[k]);
    total += opt->tensors[k].grad_sumsq;
    nonfinite |= opt->tensors[k].nonfinite;
  }
  cuoptim_prologue_totals(&opt->prologue, total, nonfinite, opt->scalars);
  return CUOPTIM_STATUS_SUCCESS;
}

/* Every optimizer but Lamb: one pass. */
static void update_variable(cuoptimOptimizer_t opt, cuoptimVariableRec *v, const cuoptimStepGradient *g,
                            const cuoptimTensorScalars *t) {
  const cuoptimRuleParams *p = &opt->prologue.rule;
  const cuoptimStepScalars *s = opt->scalars;
  float unused[3] = {0, 0, 0}, acc_unused = 0;
  for (size_t i = 0; i < v->local_count; i++) {
    float *s0 = v->slots[0] ? &v->slots[0][i] : &unused[0];
    float *s1 = v->slots[1] ? &v->slots[1][i] : &unused[1];
    float *s2 = v->slots[2] ? &v->slots[2][i] : &unused[2];
    float *acc = v->accumulator ? &v->accumulator[i] : &acc_unused;
    float raw = load_element(g->grad, g->dtype, i);
    float w = load_working(v, i);
    if (cuoptim_update_element(p, s, t, v->use_weight_decay, raw, &w, s0, s1, s2, acc)) store_working(v, i, w);
  }
}

/* Lamb: pass 1 (moments, norms), the trust ratio, pass 2 (apply). */
/* Lamb pass 1 (moments, this rank's part of the two norms) of one variable. */
static void lamb_pass1(cuoptimOptimizer_t opt, cuoptimVariableRec *v, const cuoptimStepGradient *g,
                       cuoptimTensorScalars *t) {
  const cuoptimRuleParams *p = &opt->prologue.rule;
  const cuoptimStepScalars *s = opt->scalars;
  float acc_unused = 0;
  double w_sumsq = 0.0, u_sumsq = 0.0;
  for (size_t i = 0; i < v->local_count; i++) {
    float *acc = v->accumulator ? &v->accumulator[i] : &acc_unused;
    float w_decayed, update;
    float raw = load_element(g->grad, g->dtype, i);
    if (!cuoptim_lamb_pass1_element(p, s, t, v->use_weight_decay, raw, load_working(v, i), &v->slots[0][i], &v->slots[1][i], acc,
                                    &w_decayed, &update))
      continue;
    w_sumsq += (double)w_decayed * (double)w_decayed;
    u_sumsq += (double)update * (double)update;
  }
  t->lamb_w_sumsq = w_sumsq;
  t->lamb_u_sumsq = u_sumsq;
}

/* Lamb pass 2 of one variable: the trust ratio of its (whole) norms, then the step. */
static void lamb_pass2(cuoptimOptimizer_t opt, cuoptimVariableRec *v, cuoptimTensorScalars *t) {
  const cuoptimRuleParams *p = &opt->prologue.rule;
  const cuoptimStepScalars *s = opt->scalars;
  t->lamb_ratio = cuoptim_lamb_ratio(t->lamb_w_sumsq, t->lamb_u_sumsq);
  for (size_t i = 0; i < v->local_count; i++) {
    store_working(v, i,
                  cuoptim_lamb_pass2_element(p, s, t, v->use_weight_decay, load_working(v, i), v->slots[0][i],
                                             v->slots[1][i]));
  }
}

/* Lamb: pass 1 of every variable, then (sharded state) the norms' parts combined over the ranks,
 * then pass 2; an accumulation micro-step ends after pass 1. */
static cuoptimStatus_t update_lamb(cuoptimOptimizer_t opt) {
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimTensorScalars *t = &opt->tensors[k];
    t->lamb_w_sumsq = t->lamb_u_sumsq = 0.0;
    if (opt->step_grads[k].grad) lamb_pass1(opt, &opt->variables[k], &opt->step_grads[k], t);
  }
  if (!opt->scalars->apply_update) return CUOPTIM_STATUS_SUCCESS;
  CUOPTIM_CHECK(cuoptim_comm_combine_lamb(opt, NULL));
  for (int k = 0; k < opt->num_variables; k++)
    if (opt->step_grads[k].grad) lamb_pass2(opt, &opt->variables[k], &opt->tensors[k]);
  return CUOPTIM_STATUS_SUCCESS;
}

static void ema_variable(cuoptimOptimizer_t opt, cuoptimVariableRec *v) {
  for (size_t i = 0; i < v->local_count; i++) {
    float w = load_working(v, i);
    cuoptim_ema_element(opt->scalars, &w, &v->average[i]);
    store_working(v, i, w);
  }
}

static cuoptimStatus_t host_update(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  if (opt->scalars->skip) return CUOPTIM_STATUS_SUCCESS;
  if (opt->config.kind == CUOPTIM_LAMB) {
    CUOPTIM_CHECK(update_lamb(opt));
  } else {
    for (int k = 0; k < opt->num_variables; k++)
      if (opt->step_grads[k].grad) update_variable(opt, &opt->variables[k], &opt->step_grads[k], &opt->tensors[k]);
  }
  /* EMA after every update, for every variable (SEMANTICS.md §1.3). */
  if (opt->config.use_ema)
    for (int k = 0; k < opt->num_variables; k++) ema_variable(opt, &opt->variables[k]);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_finish(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  cuoptim_finish_step(&opt->prologue, opt->scalars, opt->state);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_finalize(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimVariableRec *v = &opt->variables[k];
    for (size_t i = 0; i < v->local_count; i++) store_working(v, i, v->average[i]);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_synchronize(cuoptimOptimizer_t opt) { return CUOPTIM_STATUS_SUCCESS; }

/* ---- checkpoint copies: plain memory, done when they return ----------------------------------- */

static cuoptimStatus_t host_transfer_begin(cuoptimOptimizer_t opt, size_t staging_bytes, size_t scratch_bytes,
                                           cuoptimTransfer *t) {
  memset(t, 0, sizeof *t);
  t->staging = malloc(staging_bytes);
  if (!t->staging)
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: cannot allocate a %zu-byte staging buffer",
                         staging_bytes);
  if (scratch_bytes == 0) return CUOPTIM_STATUS_SUCCESS;
  t->scratch = malloc(scratch_bytes);
  if (!t->scratch)
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: cannot allocate %zu bytes of host memory",
                         scratch_bytes);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_transfer_copy(cuoptimOptimizer_t opt, cuoptimTransfer *t, void *dst, const void *src,
                                          size_t bytes, cuoptimCopyKind kind) {
  memmove(dst, src, bytes);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_transfer_wait(cuoptimOptimizer_t opt, cuoptimTransfer *t) { return CUOPTIM_STATUS_SUCCESS; }

static void host_transfer_end(cuoptimOptimizer_t opt, cuoptimTransfer *t) {
  free(t->staging);
  free(t->scratch);
  memset(t, 0, sizeof *t);
}

static cuoptimStatus_t host_query(cuoptimOptimizer_t opt, int *complete, char *in_flight, size_t size) {
  *complete = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

const cuoptimBackendOps cuoptim_host_backend = {
    .name = "host",
    .state_in_host_memory = 1,
    .capturing = host_capturing,
    .init = host_init,
    .release = host_release,
    .check_pointer = host_check_pointer,
    .alloc = host_alloc,
    .free = host_free,
    .upload = host_copy,
    .download = host_copy,
    .check_build_stream = host_check_build_stream,
    .build = host_build,
    .begin_step = host_begin_step,
    .stage_enqueued = host_stage_enqueued,
    .end_step = host_end_step,
    .inspect = host_inspect,
    .prologue = host_prologue,
    .update = host_update,
    .finish = host_finish,
    .finalize = host_finalize,
    .synchronize = host_synchronize,
    .transfer_begin = host_transfer_begin,
    .transfer_copy = host_transfer_copy,
    .transfer_wait = host_transfer_wait,
    .transfer_end = host_transfer_end,
    .query = host_query,
};
