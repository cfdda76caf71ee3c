/*
 * prologue.h — the per-step scalars, once, for the host backend and the CUDA prologue kernel.
 *
 * From the persistent scalar state (iterations, the learning-rate variable, the loss scale,
 * Nadam's u_product) and, when the inspect pass ran, the per-variable sums of squares, the
 * prologue computes everything the update needs: the learning rate (schedules, SEMANTICS.md §5),
 * bias corrections, clip scales (§1.4), the skip decision (§4), EMA momentum (§1.6). The finish
 * step then advances the state (§1.2, §4). All in float32, in Keras's order of operations.
 */
#ifndef CUOPTIM_PROLOGUE_H
#define CUOPTIM_PROLOGUE_H

#include "rules.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A schedule in the form the device evaluates: float32 casts, integer boundaries. */
typedef struct cuoptimScheduleParams {
  int32_t kind; /* cuoptimScheduleKind_t */
  int32_t staircase, cycle, has_warmup;
  float initial_learning_rate, decay_steps, decay_rate;
  float end_learning_rate, power;
  float alpha, one_minus_alpha_double; /* CosineDecay: (1 - alpha) formed in double */
  float warmup_target, warmup_steps;
  float t_mul, m_mul;
  int32_t num_boundaries;
  int32_t reserved;
  int64_t boundaries[CUOPTIM_MAX_BOUNDARIES];
  float values[CUOPTIM_MAX_BOUNDARIES + 1];
} cuoptimScheduleParams;

/* Everything the prologue needs that does not change from step to step. */
typedef struct cuoptimPrologueParams {
  cuoptimRuleParams rule;
  cuoptimScheduleParams schedule;
  int64_t ema_overwrite_frequency; /* 0 = None */
  int64_t dynamic_growth_steps;
  float global_clipnorm_inverse;   /* float32(1.0 / global_clipnorm) formed in double */
  float nadam_decay;               /* 0.96 */
} cuoptimPrologueParams;

#define CUOPTIM_PI_F 3.14159265358979323846f

/* keras.optimizers.schedules.*.__call__(step) in float32 (SEMANTICS.md §5). */
CUOPTIM_HD float cuoptim_schedule_value(const cuoptimScheduleParams *q, int64_t raw_step) {
  float step = (float)raw_step;
  switch (q->kind) {
    case CUOPTIM_SCHEDULE_EXPONENTIAL: {
      float p = step / q->decay_steps;
      if (q->staircase) p = floorf(p);
      return q->initial_learning_rate * cuoptim_powf(q->decay_rate, p);
    }
    case CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT: {
      /* Boundaries are cast to the step's integer type; upper bounds inclusive. */
      int n = q->num_boundaries;
      if (raw_step <= q->boundaries[0]) return q->values[0];
      for (int i = 1; i < n; i++)
        if (raw_step > q->boundaries[i - 1] && raw_step <= q->boundaries[i]) return q->values[i];
      return q->values[n];
    }
    case CUOPTIM_SCHEDULE_POLYNOMIAL: {
      float decay_steps = q->decay_steps;
      if (q->cycle) {
        float multiplier = step == 0.0f ? 1.0f : ceilf(step / q->decay_steps);
        decay_steps = decay_steps * multiplier;
      } else {
        step = cuoptim_minf(step, decay_steps);
      }
      float p = step / decay_steps;
      return (q->initial_learning_rate - q->end_learning_rate) * cuoptim_powf(1.0f - p, q->power) + q->end_learning_rate;
    }
    case CUOPTIM_SCHEDULE_INVERSE_TIME: {
      float p = step / q->decay_steps;
      if (q->staircase) p = floorf(p);
      return q->initial_learning_rate / (1.0f + q->decay_rate * p);
    }
    case CUOPTIM_SCHEDULE_COSINE: {
      float from = q->initial_learning_rate;
      if (q->has_warmup) {
        step = cuoptim_minf(step, q->decay_steps + q->warmup_steps);
        if (step < q->warmup_steps) {
          float fraction = step / q->warmup_steps;
          return (q->warmup_target - q->initial_learning_rate) * fraction + q->initial_learning_rate;
        }
        step = step - q->warmup_steps;
        from = q->warmup_target;
      } else {
        step = cuoptim_minf(step, q->decay_steps);
      }
      float fraction = step / q->decay_steps;
      float cosine = 0.5f * (1.0f + cuoptim_cosf(CUOPTIM_PI_F * fraction));
      float decayed = q->one_minus_alpha_double * cosine + q->alpha;
      return from * decayed;
    }
    case CUOPTIM_SCHEDULE_COSINE_RESTARTS: {
      float fraction = step / q->decay_steps;
      float restart;
      if (q->t_mul == 1.0f) {
        restart = floorf(fraction);
        fraction = fraction - restart;
      } else {
        restart = floorf(cuoptim_logf(1.0f - fraction * (1.0f - q->t_mul)) / cuoptim_logf(q->t_mul));
        float sum_r = (1.0f - cuoptim_powf(q->t_mul, restart)) / (1.0f - q->t_mul);
        fraction = (fraction - sum_r) / cuoptim_powf(q->t_mul, restart);
      }
      float m_fac = cuoptim_powf(q->m_mul, restart);
      float cosine = 0.5f * m_fac * (1.0f + cuoptim_cosf(CUOPTIM_PI_F * fraction));
      float decayed = (1.0f - q->alpha) * cosine + q->alpha;
      return q->initial_learning_rate * decayed;
    }
    default: return q->initial_learning_rate;
  }
}

/* The learning rate a step at raw counter `raw_step` uses. */
CUOPTIM_HD float cuoptim_learning_rate(const cuoptimPrologueParams *q, const cuoptimScalarState *state) {
  if (q->schedule.kind == CUOPTIM_SCHEDULE_CONSTANT) return state->learning_rate;
  return cuoptim_schedule_value(&q->schedule, state->iterations);
}

/* Keras `iterations` from the raw counter (SEMANTICS.md §1.2). */
CUOPTIM_HD int64_t cuoptim_public_iterations(const cuoptimRuleParams *p, int64_t raw) {
  return p->accumulation_steps ? raw / p->accumulation_steps : raw;
}

/* Prologue, first half: everything that needs no gradient norm. */
CUOPTIM_HD void cuoptim_prologue_begin(const cuoptimPrologueParams *q, const cuoptimScalarState *state,
                                       cuoptimStepScalars *s) {
  const cuoptimRuleParams *p = &q->rule;
  int64_t raw = state->iterations;
  int64_t it = cuoptim_public_iterations(p, raw);
  s->skip = 0;
  s->apply_update = p->accumulation_steps ? ((raw + 1) % p->accumulation_steps == 0) : 1;
  s->lr = cuoptim_learning_rate(q, state);
  s->loss_scale = state->loss_scale;
  s->global_clip_scale = 1.0f;

  /* Only what the configured rule reads (its other fields keep what they held): the double-
   * precision pow calls cost the step's fixed time on the device. */
  const int k = p->kind;
  float t = (float)(it + 1);
  if (k == CUOPTIM_ADAM || k == CUOPTIM_ADAMW || k == CUOPTIM_ADAMAX || k == CUOPTIM_NADAM || k == CUOPTIM_LAMB ||
      k == CUOPTIM_SCHEDULE_FREE_ADAMW || k == CUOPTIM_MUON) {
    /* Bias corrections: ops.power(float32(beta), float32(t)). */
    s->beta_1_power = cuoptim_powf(p->beta_1, t);
    s->beta_2_power = cuoptim_powf(p->beta_2, t);
    s->one_minus_beta_1_power = 1.0f - s->beta_1_power;
    s->one_minus_beta_2_power = 1.0f - s->beta_2_power;
    /* Muon's AdamW path: its learning rate is lr * adam_lr_ratio (float32). */
    float lr = k == CUOPTIM_MUON ? s->lr * p->muon_adam_lr_ratio : s->lr;
    s->adam_alpha = lr * sqrtf(s->one_minus_beta_2_power) / s->one_minus_beta_1_power;
  }

  if (k == CUOPTIM_NADAM) {
    /* Nadam (§2.8): u_product advances before the per-variable updates. */
    float decay_t = cuoptim_powf(q->nadam_decay, t);
    s->nadam_u_t = p->beta_1 * (1.0f - 0.5f * decay_t);
    s->nadam_u_t1 = p->beta_1 * (1.0f - 0.5f * cuoptim_powf(q->nadam_decay, (float)(it + 2)));
    s->nadam_u_product = (state->u_product * p->beta_1) * (1.0f - 0.5f * decay_t);
    s->nadam_u_product_t1 = s->nadam_u_product * s->nadam_u_t1;
  }
  if (k == CUOPTIM_NADAM || k == CUOPTIM_SCHEDULE_FREE_ADAMW) {
    /* (1 - float32 beta) in float32: Nadam's and ScheduleFreeAdamW's. */
    s->one_minus_beta_1_f32 = 1.0f - p->beta_1;
    s->one_minus_beta_2_f32 = 1.0f - p->beta_2;
  }

  /* ScheduleFreeAdamW: the warmup of the learning rate, the averaging weight. */
  if (k == CUOPTIM_SCHEDULE_FREE_ADAMW) {
    s->sf_lr = p->sf_has_warmup ? s->lr * cuoptim_minf(t / p->sf_warmup_steps, 1.0f) : s->lr;
    s->sf_weight = 1.0f / t;
  }

  /* Adafactor: the relative step size's cap and beta_2 of step t (ops.power of float32 t). */
  if (k == CUOPTIM_ADAFACTOR) {
    s->af_rho = cuoptim_minf(s->lr, 1.0f / sqrtf(t));
    s->af_beta_2 = 1.0f - cuoptim_powf(t, p->af_beta_2_decay);
    s->af_one_minus_beta_2 = 1.0f - s->af_beta_2;
  }

  /* Ftrl (§2.11): l2 + beta / (2 lr). */
  if (k == CUOPTIM_FTRL) s->ftrl_l2 = p->l2 + p->ftrl_beta / (2.0f * s->lr);

  /* EMA (§1.6): momentum 0 on the first step. */
  s->ema_momentum = it != 0 ? p->ema_momentum : 0.0f;
  s->ema_one_minus_momentum = 1.0f - s->ema_momentum;
  s->ema_overwrite = p->use_ema && q->ema_overwrite_frequency != 0 && (it + 1) % q->ema_overwrite_frequency == 0;
}

/* clipnorm's denominator for one variable: max(l2norm, clipnorm) (§1.4). */
CUOPTIM_HD float cuoptim_clipnorm_denominator(const cuoptimRuleParams *p, double sumsq) {
  float l2sum = (float)sumsq;
  float l2norm = l2sum > 0.0f ? sqrtf(l2sum) : l2sum;
  return cuoptim_maxf(l2norm, p->clipnorm);
}

/* global_clipnorm's scale from the sum over variables (§1.4). NaN when the norm is not finite. */
CUOPTIM_HD float cuoptim_global_clip_scale(const cuoptimPrologueParams *q, double total_sumsq) {
  float use_norm = sqrtf((float)total_sumsq);
  float scale = q->rule.global_clipnorm * cuoptim_minf(1.0f / use_norm, q->global_clipnorm_inverse);
  return scale + (use_norm - use_norm);
}

/* Prologue, second half, per variable after the inspect pass: clipnorm's denominator. */
CUOPTIM_HD void cuoptim_prologue_tensor(const cuoptimPrologueParams *q, cuoptimTensorScalars *t) {
  if (q->rule.clip == CUOPTIM_CLIP_NORM) t->clip_denominator = cuoptim_clipnorm_denominator(&q->rule, t->grad_sumsq);
}

/* Prologue, second half, over all variables: the skip decision and global_clipnorm's scale from
 * the sum of every variable's sum of squares and the OR of their non-finite flags (variables
 * without a gradient this step contribute zeros). */
CUOPTIM_HD void cuoptim_prologue_totals(const cuoptimPrologueParams *q, double total_sumsq, int nonfinite,
                                        cuoptimStepScalars *s) {
  s->skip = q->rule.dynamic_loss_scale && nonfinite;
  if (q->rule.clip == CUOPTIM_CLIP_GLOBAL_NORM) s->global_clip_scale = cuoptim_global_clip_scale(q, total_sumsq);
}

/* Finish: advance the persistent state after the update (§1.2, §2.8, §4). */
CUOPTIM_HD void cuoptim_finish_step(const cuoptimPrologueParams *q, const cuoptimStepScalars *s,
                                    cuoptimScalarState *state) {
  const cuoptimRuleParams *p = &q->rule;
  if (s->skip) {
    state->loss_scale_counter = 0;
    state->loss_scale = state->loss_scale * 0.5f;
    return;
  }
  if (p->kind == CUOPTIM_NADAM && s->apply_update) state->u_product = s->nadam_u_product;
  state->iterations += 1;
  if (p->dynamic_loss_scale) {
    if (state->loss_scale_counter == q->dynamic_growth_steps - 1) {
      state->loss_scale_counter = 0;
      state->loss_scale = state->loss_scale * 2.0f;
    } else {
      state->loss_scale_counter += 1;
    }
  }
}

#ifdef __cplusplus
}
#endif

#endif /* CUOPTIM_PROLOGUE_H */
