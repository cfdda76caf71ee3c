/*
 * rules.h — the per-element math of every optimizer, once, for the host backend and the kernels.
 *
 * Plain C99 marked CUOPTIM_HD: `__host__ __device__ __forceinline__` under nvcc, `static inline`
 * (always inlined, where the compiler has the attribute) under a C compiler. Every formula
 * follows ../shared/SEMANTICS.md (section given beside it) and rounds exactly as Keras 3 does for
 * float32 variables: each Keras op is one float32 operation here, in Keras's order, and
 * Python-float hyperparameters are combined in double and then rounded (cuoptim_rule_params_init).
 * Build with contraction off (-ffp-contract=off, nvcc -fmad=false).
 *
 * Three layers:
 *   cuoptimRuleParams   constant per optimizer (float32 casts of the config), by value;
 *   cuoptimStepScalars  per step, written by the prologue from the device-resident
 *                       cuoptimScalarState (iterations, lr variable, loss scale, u_product);
 *   cuoptimTensorScalars per variable and step (norms, clip denominator, Lamb's ratio).
 */
#ifndef CUOPTIM_RULES_H
#define CUOPTIM_RULES_H

#include <stdint.h>

#ifdef __CUDACC__
#define CUOPTIM_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
/* Always inlined, as under nvcc: the host backend's loops are vectorized only when the whole rule
 * is inlined into them, and the compiler's size limits would otherwise decide per rule. */
#define CUOPTIM_HD static inline __attribute__((always_inline))
#else
#define CUOPTIM_HD static inline
#endif
#include <float.h>
#include <math.h>

#include "cuoptim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which clip option is active (SEMANTICS.md §1.4; at most one). */
enum { CUOPTIM_CLIP_NONE = 0, CUOPTIM_CLIP_NORM = 1, CUOPTIM_CLIP_GLOBAL_NORM = 2, CUOPTIM_CLIP_VALUE = 3 };

/* Constant per optimizer: float32 values of the config, formed as Keras forms them. */
typedef struct cuoptimRuleParams {
  int32_t kind;             /* cuoptimOptimizerKind_t */
  int32_t clip;             /* CUOPTIM_CLIP_* */
  int32_t has_weight_decay; /* weight_decay is not None */
  int32_t has_loss_scale_factor;
  int32_t dynamic_loss_scale;
  int32_t use_ema;
  int32_t nesterov, centered, amsgrad, has_momentum;
  int32_t mean_over_ranks;  /* data-parallel mean: the summed gradient is multiplied by inv_world */
  int64_t accumulation_steps; /* gradient_accumulation_steps, 0 = off: any int64, as the counter */
  float weight_decay;
  float clipnorm, clipvalue, global_clipnorm;
  float loss_scale_factor;
  float accumulation_steps_f;
  float inv_world;          /* float32(1 / world size) */
  float ema_momentum;
  float beta_1, beta_2;                   /* float32(beta) */
  float one_minus_beta_1, one_minus_beta_2; /* float32(1.0 - beta) formed in double */
  float epsilon;
  float rho, one_minus_rho;
  float momentum;
  float lr_power_neg;       /* Ftrl: float32(-learning_rate_power) */
  float l1, l2, two_l2_shrinkage, ftrl_beta;
  int32_t sf_has_warmup;    /* ScheduleFreeAdamW: warmup_steps > 0 */
  float sf_warmup_steps;    /* float32(warmup_steps) */
  /* Muon. Its AdamW path is the element-wise rule: beta_1, beta_2, one_minus_beta_* and
   * weight_decay hold adam_beta_1, adam_beta_2 and adam_weight_decay there (has_weight_decay: it
   * is set); the Muon path reads these. */
  int32_t muon_has_weight_decay; /* weight_decay is not None */
  int32_t muon_has_rms_rate;     /* rms_rate is not None */
  int32_t muon_ns_steps;
  float muon_weight_decay;       /* float32(weight_decay) */
  float muon_momentum_minus_1;   /* float32(momentum - 1) formed in double */
  float muon_adam_lr_ratio, muon_rms_rate;
  float muon_a, muon_b, muon_c;
  float af_beta_2_decay, af_epsilon_1, af_epsilon_2, af_clip_threshold; /* Adafactor, float32 */
} cuoptimRuleParams;

/* Persistent scalar state, device-resident on the CUDA backend (Keras's scalar variables). */
typedef struct cuoptimScalarState {
  int64_t iterations;      /* Keras `_iterations`: raw apply() count, micro-steps included */
  int64_t loss_scale_counter; /* LossScaleOptimizer step_counter */
  float learning_rate;     /* the `learning_rate` variable (constant learning rate) */
  float loss_scale;        /* LossScaleOptimizer dynamic_scale */
  float u_product;         /* Nadam */
  int32_t reserved;
} cuoptimScalarState;

/* Per step, written by the prologue, read by the update. */
typedef struct cuoptimStepScalars {
  int32_t skip;          /* LossScaleOptimizer: a gradient is not finite; nothing but the scale changes */
  int32_t apply_update;  /* 0 on a gradient-accumulation micro-step */
  int32_t ema_overwrite; /* copy averages into the variables after this step */
  int32_t reserved;
  float lr;              /* learning rate of this step (schedule at the raw counter) */
  float loss_scale;      /* dynamic scale the gradients are divided by */
  float global_clip_scale;
  float ema_momentum, ema_one_minus_momentum;
  float beta_1_power, beta_2_power;
  float adam_alpha;      /* lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) */
  float one_minus_beta_1_power, one_minus_beta_2_power;
  float nadam_u_t, nadam_u_t1, nadam_u_product, nadam_u_product_t1;
  float one_minus_beta_1_f32, one_minus_beta_2_f32; /* (1 - float32 beta) in float32: Nadam, ScheduleFreeAdamW */
  float ftrl_l2;         /* l2 + beta / (2 lr) */
  float sf_lr;           /* ScheduleFreeAdamW: lr * min(t / warmup_steps, 1) */
  float sf_weight;       /* ScheduleFreeAdamW: 1 / t, the averaging weight */
  float af_rho;          /* Adafactor: min(lr, 1 / sqrt(t)) */
  float af_beta_2;       /* Adafactor: 1 - t^beta_2_decay */
  float af_one_minus_beta_2; /* Adafactor: 1 - af_beta_2, in float32 */
} cuoptimStepScalars;

/* Per variable and step. Sums are accumulated in double in a fixed order (deterministic). */
typedef struct cuoptimTensorScalars {
  double grad_sumsq;     /* sum of squares of the gradient entering the clip (inspect) */
  double lamb_w_sumsq;   /* Lamb: ||w||^2 after weight decay */
  double lamb_u_sumsq;   /* Lamb: ||update||^2 */
  int32_t nonfinite;     /* raw gradient holds inf or NaN (inspect) */
  float clip_denominator; /* clipnorm: max(||g||, clipnorm) */
  float lamb_ratio;      /* Lamb trust ratio */
  float af_alpha;        /* Adafactor: alpha_t = max(epsilon_2, RMS(w)) * rho_t (CUDA: the RMS stage) */
  float af_clip;         /* Adafactor: max(1, RMS(u) / clip_threshold) (CUDA: the RMS stage) */
  int32_t reserved;
} cuoptimTensorScalars;

/* ---- precision helpers ----------------------------------------------------------------------- */

CUOPTIM_HD float cuoptim_sqrtf(float x) { return sqrtf(x); }

/* ---- the fixed update kernels' square root and division --------------------------------------
 * On a GPU an IEEE float32 square root or division is a short sequence (an approximate reciprocal
 * square root or reciprocal, refined by fused multiply-adds) behind a check of its operands, and a
 * slow subroutine for operands the sequence cannot take; the compiler gives each one its own
 * branch and convergence barrier, 4 to 5 instructions an operation on top of the sequence. The
 * fixed update kernels (cuda/kernels.cu) run the same sequences with checks of their own instead:
 * a rule given a cuoptimFastMath computes with them, each clearing in_range when its operands are
 * outside the range where the sequence is exact, and the kernel computes the elements again with
 * sqrtf and '/' when any of them did. So every result is the IEEE one, bit for bit; only the
 * branches are fewer (one per 4 elements). The host backend and the generic kernels pass NULL:
 * sqrtf and '/'. tests/test_fast_math.c checks the sequences and their ranges against sqrtf and
 * '/'; the sequences are the instructions nvcc 13 emits for sqrtf and '/' from sm_80 to sm_120. */
typedef struct cuoptimFastMath {
  int in_range; /* 1 until an operand is out of the sequences' range */
} cuoptimFastMath;

/* sqrt(x) from y ~ 1/sqrt(x): s = x y and one correction s + (x - s^2) y / 2. With the GPU's
 * rsqrt.approx.ftz.f32 this is the compiler's own sqrtf for x in [2^-101, FLT_MAX] (its check has
 * that range too), so it is exact there as sqrtf is: from the hardware's approximation, not from
 * any within PTX's bound (a few significands round the other way from one an ulp off). */
CUOPTIM_HD float cuoptim_sqrt_refine(float x, float y) {
  float s = x * y, half_y = 0.5f * y;
  return fmaf(fmaf(-s, s, x), half_y, s);
}

/* a / b from r ~ 1/b: one Newton step on r, the quotient, its exact remainder and one correction
 * (the compiler's own sequence for '/', whose check is an instruction of its own). Correctly
 * rounded from any r within an ulp of 1/b (rcp.approx.ftz.f32's bound, subnormal results flushed)
 * when |a| >= 2^-90 and the result's magnitude is at least 2^-100: no operand, reciprocal,
 * quotient or remainder is then subnormal; a zero, subnormal, infinite or NaN operand gives a zero,
 * infinite or NaN result (refused), and a quotient that overflows rounds to infinity as '/' does. */
CUOPTIM_HD float cuoptim_div_refine(float a, float b, float r) {
  float r1 = fmaf(r, fmaf(-b, r, 1.0f), r);
  float q = a * r1;
  return fmaf(r1, fmaf(-b, q, a), q);
}

/* The approximations: the GPU's (PTX rsqrt.approx.ftz.f32, rcp.approx.ftz.f32); elsewhere (the
 * emulated device, tests) double precision rounded once, subnormal inputs and results flushed to
 * zero as .ftz does. */
CUOPTIM_HD float cuoptim_flush_subnormal(float x) { return fabsf(x) < FLT_MIN ? copysignf(0.0f, x) : x; }

CUOPTIM_HD float cuoptim_rsqrt_approx(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return (float)(1.0 / sqrt((double)cuoptim_flush_subnormal(x)));
#endif
}

CUOPTIM_HD float cuoptim_rcp_approx(float b) {
#ifdef __CUDA_ARCH__
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(b));
  return r;
#else
  return cuoptim_flush_subnormal((float)(1.0 / (double)cuoptim_flush_subnormal(b)));
#endif
}

/* Whether the sequences above are correctly rounded for these operands (the ranges they give). */
CUOPTIM_HD int cuoptim_sqrt_in_range(float x) { return (x >= 0x1p-101f) & (x <= FLT_MAX); }
CUOPTIM_HD int cuoptim_div_in_range(float a, float q) { return (fabsf(a) >= 0x1p-90f) & (fabsf(q) >= 0x1p-100f); }

/* sqrtf(x) and a / b, or with f the sequences (f->in_range cleared when they may not be exact). */
CUOPTIM_HD float cuoptim_sqrt_op(cuoptimFastMath *f, float x) {
  if (!f) return sqrtf(x);
  f->in_range &= cuoptim_sqrt_in_range(x);
  return cuoptim_sqrt_refine(x, cuoptim_rsqrt_approx(x));
}

CUOPTIM_HD float cuoptim_div_op(cuoptimFastMath *f, float a, float b) {
  if (!f) return a / b;
  float q = cuoptim_div_refine(a, b, cuoptim_rcp_approx(b));
  f->in_range &= cuoptim_div_in_range(a, q);
  return q;
}

/* float32 pow, cos and log, computed in double and rounded once: correctly rounded in all but
 * rare double-rounding cases, and the same on the host (glibc) and the device (CUDA's libdevice),
 * whose own powf/cosf/logf differ from each other by an ulp. Keras computes these in float32. */
CUOPTIM_HD float cuoptim_powf(float x, float y) { return (float)pow((double)x, (double)y); }
CUOPTIM_HD float cuoptim_cosf(float x) { return (float)cos((double)x); }
CUOPTIM_HD float cuoptim_logf(float x) { return (float)log((double)x); }

/* numpy/XLA sign: -1, 0, 1, NaN for NaN. */
CUOPTIM_HD float cuoptim_signf(float x) {
  return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);
}

/* maximum/minimum propagating NaN, as jnp.maximum/jnp.minimum do. */
CUOPTIM_HD float cuoptim_maxf(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}
CUOPTIM_HD float cuoptim_minf(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a < b ? a : b;
}

/* ---- gradient preparation (SEMANTICS.md §1.3, §1.4, §1.7, §1.8, §4) ---------------------------- */

/* Unscale: the mean over data-parallel ranks first (the gradient arrives summed), then the
 * LossScaleOptimizer divides by its dynamic scale and the inner optimizer by loss_scale_factor
 * (both are divisions in Keras). */
CUOPTIM_HD float cuoptim_unscale(const cuoptimRuleParams *p, float loss_scale, float g) {
  if (p->mean_over_ranks) g = g * p->inv_world;
  if (p->dynamic_loss_scale) g = g / loss_scale;
  if (p->has_loss_scale_factor) g = g / p->loss_scale_factor;
  return g;
}

/* The gradient that reaches clipping on an update step: with accumulation (g + acc) / N. */
CUOPTIM_HD float cuoptim_accumulated(const cuoptimRuleParams *p, float g, float acc) {
  return p->accumulation_steps ? (g + acc) / p->accumulation_steps_f : g;
}

CUOPTIM_HD float cuoptim_clip(const cuoptimRuleParams *p, const cuoptimStepScalars *s,
                              const cuoptimTensorScalars *t, float g) {
  switch (p->clip) {
    case CUOPTIM_CLIP_NORM: return (g * p->clipnorm) / t->clip_denominator;
    case CUOPTIM_CLIP_GLOBAL_NORM: return g * s->global_clip_scale;
    case CUOPTIM_CLIP_VALUE: {
      /* jnp.clip = minimum(maximum(g, -v), v); NaN stays NaN. */
      float lo = -p->clipvalue, hi = p->clipvalue;
      return g < lo ? lo : (g > hi ? hi : g);
    }
    default: return g;
  }
}

/* Decoupled weight decay, before the update: w - w * wd * lr (SEMANTICS.md §1.5). */
CUOPTIM_HD float cuoptim_weight_decay(float w, float wd, float lr) { return w - w * wd * lr; }

/* EMA of the variable after its update (SEMANTICS.md §1.6). */
CUOPTIM_HD float cuoptim_ema(const cuoptimStepScalars *s, float average, float w) {
  return s->ema_momentum * average + s->ema_one_minus_momentum * w;
}

/* ---- optimizer rules (SEMANTICS.md §2). Each updates w and its slots s0..s2 in place. -------- */

/* §2.1 SGD. s0 = momentum. */
CUOPTIM_HD void cuoptim_rule_sgd(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                 float *w, float *s0) {
  float lr = s->lr;
  if (!p->has_momentum) {
    *w = *w - g * lr;
    return;
  }
  float m = *s0 * p->momentum - g * lr;
  *s0 = m;
  if (p->nesterov)
    *w = *w + (m * p->momentum - g * lr);
  else
    *w = *w + m;
}

/* §2.2 RMSprop. s0 = velocity, s1 = momentum, s2 = average_gradient (Keras's slot order). */
CUOPTIM_HD void cuoptim_rule_rmsprop(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                     float *w, float *s0, float *s1, float *s2, cuoptimFastMath *f) {
  float v = p->rho * *s0 + p->one_minus_rho * (g * g);
  *s0 = v;
  float denominator;
  if (p->centered) {
    float a = p->rho * *s2 + p->one_minus_rho * g;
    *s2 = a;
    denominator = v - a * a + p->epsilon;
  } else {
    denominator = v + p->epsilon;
  }
  float increment = cuoptim_div_op(f, s->lr * g, cuoptim_sqrt_op(f, denominator));
  if (p->has_momentum) {
    float mom = p->momentum * *s1 + increment;
    *s1 = mom;
    *w = *w - mom;
  } else {
    *w = *w - increment;
  }
}

/* §2.3 Adagrad. s0 = accumulator. */
CUOPTIM_HD void cuoptim_rule_adagrad(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                     float *w, float *s0, cuoptimFastMath *f) {
  float acc = *s0 + g * g;
  *s0 = acc;
  *w = *w - cuoptim_div_op(f, s->lr * g, cuoptim_sqrt_op(f, acc + p->epsilon));
}

/* §2.4 Adadelta. s0 = accumulated_grad, s1 = accumulated_delta_var. */
CUOPTIM_HD void cuoptim_rule_adadelta(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                      float *w, float *s0, float *s1, cuoptimFastMath *f) {
  float eg2 = p->rho * *s0 + p->one_minus_rho * (g * g);
  *s0 = eg2;
  float delta = -cuoptim_div_op(f, cuoptim_sqrt_op(f, *s1 + p->epsilon) * g, cuoptim_sqrt_op(f, eg2 + p->epsilon));
  *s1 = p->rho * *s1 + p->one_minus_rho * (delta * delta);
  *w = *w + s->lr * delta;
}

/* §2.5 Adam / §2.6 AdamW. s0 = momentum, s1 = velocity, s2 = velocity_hat (amsgrad). */
CUOPTIM_HD void cuoptim_rule_adam(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                  float *w, float *s0, float *s1, float *s2, cuoptimFastMath *f) {
  float m = *s0 + (g - *s0) * p->one_minus_beta_1;
  float v = *s1 + (g * g - *s1) * p->one_minus_beta_2;
  *s0 = m;
  *s1 = v;
  if (p->amsgrad) {
    v = cuoptim_maxf(*s2, v);
    *s2 = v;
  }
  *w = *w - cuoptim_div_op(f, m * s->adam_alpha, cuoptim_sqrt_op(f, v) + p->epsilon);
}

/* §2.7 Adamax. s0 = momentum (m), s1 = norm (u). */
CUOPTIM_HD void cuoptim_rule_adamax(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                    float *w, float *s0, float *s1, cuoptimFastMath *f) {
  float m = *s0 + (g - *s0) * p->one_minus_beta_1;
  float u = cuoptim_maxf(p->beta_2 * *s1, fabsf(g));
  *s0 = m;
  *s1 = u;
  *w = *w - cuoptim_div_op(f, s->lr * m, s->one_minus_beta_1_power * (u + p->epsilon));
}

/* §2.8 Nadam. s0 = momentum, s1 = velocity; u_product comes from the prologue. */
CUOPTIM_HD void cuoptim_rule_nadam(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                   float *w, float *s0, float *s1, cuoptimFastMath *f) {
  float m = *s0 + (g - *s0) * s->one_minus_beta_1_f32;
  float v = *s1 + (g * g - *s1) * s->one_minus_beta_2_f32;
  *s0 = m;
  *s1 = v;
  float m_hat = cuoptim_div_op(f, s->nadam_u_t1 * m, 1.0f - s->nadam_u_product_t1) +
                cuoptim_div_op(f, (1.0f - s->nadam_u_t) * g, 1.0f - s->nadam_u_product);
  float v_hat = cuoptim_div_op(f, v, s->one_minus_beta_2_power);
  *w = *w - cuoptim_div_op(f, m_hat * s->lr, cuoptim_sqrt_op(f, v_hat) + p->epsilon);
}

/* §2.9 Lion. s0 = momentum. */
CUOPTIM_HD void cuoptim_rule_lion(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                  float *w, float *s0) {
  float m = *s0;
  *w = *w - s->lr * cuoptim_signf(m * p->beta_1 + g * (1.0f - p->beta_1));
  *s0 = m * p->beta_2 + g * (1.0f - p->beta_2);
}

/* §2.10 Lamb: the update direction from the new moments (recomputed in pass 2). */
CUOPTIM_HD float cuoptim_rule_lamb_direction(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float m,
                                             float v) {
  float m_hat = m / s->one_minus_beta_1_power;
  float v_sqrt = cuoptim_sqrtf(v / s->one_minus_beta_2_power) + p->epsilon;
  return m_hat / v_sqrt;
}

/* §2.10 Lamb, pass 1: moments, and the update direction whose norm the trust ratio needs.
 * s0 = momentum, s1 = velocity. */
CUOPTIM_HD float cuoptim_rule_lamb_moments(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                           float *s0, float *s1) {
  float m = *s0 + (g - *s0) * p->one_minus_beta_1;
  float v = *s1 + (g * g - *s1) * p->one_minus_beta_2;
  *s0 = m;
  *s1 = v;
  return cuoptim_rule_lamb_direction(p, s, m, v);
}

/* §2.10 Lamb, pass 2: w -= ratio * lr * update. */
CUOPTIM_HD float cuoptim_rule_lamb_apply(const cuoptimStepScalars *s, const cuoptimTensorScalars *t, float w,
                                         float update) {
  return w - (t->lamb_ratio * s->lr) * update;
}

/* Lamb's trust ratio from the two sums of squares (computed in float32 as Keras does). */
CUOPTIM_HD float cuoptim_lamb_ratio(double w_sumsq, double u_sumsq) {
  float w_norm = cuoptim_sqrtf((float)w_sumsq);
  float u_norm = cuoptim_sqrtf((float)u_sumsq);
  return (w_norm > 0.0f && u_norm > 0.0f) ? w_norm / u_norm : 1.0f;
}

/* Ftrl's n^(-learning_rate_power): the default power -0.5 is a square root (correctly rounded,
 * as a correctly rounded pow gives), which keeps the common case off the double-precision path. */
CUOPTIM_HD float cuoptim_ftrl_power(const cuoptimRuleParams *p, float n) {
  if (p->lr_power_neg == 0.5f) return cuoptim_sqrtf(n);
  if (p->lr_power_neg == 0.0f) return 1.0f;
  return cuoptim_powf(n, p->lr_power_neg);
}

/* §2.11 Ftrl. s0 = accumulator (n), s1 = linear (z). */
CUOPTIM_HD void cuoptim_rule_ftrl(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                  float *w, float *s0, float *s1) {
  float lr = s->lr;
  float n = *s0;
  float x = *w;
  float g_shrunk = g + p->two_l2_shrinkage * x;
  float n_new = n + g * g;
  float pow_new = cuoptim_ftrl_power(p, n_new);
  float z = *s1 + (g_shrunk - ((pow_new - cuoptim_ftrl_power(p, n)) / lr) * x);
  *s1 = z;
  float quadratic = pow_new / lr + 2.0f * s->ftrl_l2;
  float z_clipped = z < -p->l1 ? -p->l1 : (z > p->l1 ? p->l1 : z);
  *w = (z_clipped - z) / quadratic;
  *s0 = n_new;
}


/* ScheduleFreeAdamW's averaged point x, the weights Schedule-Free evaluates, from the variable y
 * and the sequence z (slot s0): x = (y - (1 - beta_1) z) / beta_1, as Keras's step recovers x_old
 * (1 - beta_1 a float32 subtraction: Keras casts beta_1 to float32 first). */
CUOPTIM_HD float cuoptim_schedule_free_average(const cuoptimRuleParams *p, float y, float z, cuoptimFastMath *f) {
  return cuoptim_div_op(f, y - (1.0f - p->beta_1) * z, p->beta_1);
}

/* ScheduleFreeAdamW (keras/src/optimizers/schedule_free_adamw.py). s0 = momentum (the sequence z the gradient steps act on), s1 = velocity;
 * w is the variable y, the interpolation of z and the average x: x is recovered from y and the old
 * z, moves towards the new z by the weight 1 / t, and y is formed again. The (1 - beta) factors are
 * float32 subtractions (Keras casts beta to float32 first): one_minus_beta_1_f32 and _2_f32. */
CUOPTIM_HD void cuoptim_rule_schedule_free_adamw(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g,
                                                 float *w, float *s0, float *s1, cuoptimFastMath *f) {
  float one_minus_beta_1 = s->one_minus_beta_1_f32;
  float z_old = *s0;
  float v = *s1 + (g * g - *s1) * s->one_minus_beta_2_f32;
  *s1 = v;
  float denom = cuoptim_sqrt_op(f, cuoptim_div_op(f, v, s->one_minus_beta_2_power)) + p->epsilon;
  float z = z_old - cuoptim_div_op(f, s->sf_lr * g, denom);
  *s0 = z;
  float x_old = cuoptim_schedule_free_average(p, *w, z_old, f);
  float x_new = (1.0f - s->sf_weight) * x_old + s->sf_weight * z;
  *w = one_minus_beta_1 * z + p->beta_1 * x_new;
}

/* Muon path (keras/src/optimizers/muon.py, _muon_update_step), before Newton-Schulz: the momentum
 * m += g + m (momentum - 1), and the direction Newton-Schulz orthogonalizes: g + momentum m
 * (nesterov) or m. s0 = momentum. */
CUOPTIM_HD float cuoptim_rule_muon_momentum(const cuoptimRuleParams *p, float g, float *s0) {
  float m = *s0 + (g + *s0 * p->muon_momentum_minus_1);
  *s0 = m;
  return p->nesterov ? g + p->momentum * m : m;
}

/* The denominator Newton-Schulz divides the direction by: ||X||_F + 1e-7, the norm from the sum of
 * squares of X (r x c, row-major) in the order of cuoptim_sumsq below (in double, then float32 as
 * Keras's norm). */
CUOPTIM_HD float cuoptim_muon_norm_denominator(double sumsq) { return cuoptim_sqrtf((float)sumsq) + 1e-7f; }

/* ---- sums of squares in one fixed order: Muon's norm, Adafactor's two RMS values ----------------
 * The sum of the squares of x[0], ..., x[n - 1], the same on the host and on the GPU: x in
 * segments of CUOPTIM_SUMSQ_SEGMENT elements; in a segment element j goes to lane
 * j % CUOPTIM_SUMSQ_LANES, each lane sums its squares in double in ascending order (from 0), and
 * the lanes are added as a halving tree (lane t += lane t + w for w = LANES / 2, ..., 1: a CUDA
 * block's tree over its threads); the segments' sums are added in ascending order, from 0. A GPU
 * takes a segment a block, as many blocks as the variable has segments, and the host backend
 * (cuoptim_sumsq) forms the same sum bit for bit. */
#define CUOPTIM_SUMSQ_SEGMENT 8192
#define CUOPTIM_SUMSQ_LANES 256

/* Lane `lane` of a segment of n elements. */
CUOPTIM_HD double cuoptim_sumsq_lane(const float *segment, int64_t n, int64_t lane) {
  double sum = 0.0;
  for (int64_t j = lane; j < n; j += CUOPTIM_SUMSQ_LANES) sum += (double)segment[j] * (double)segment[j];
  return sum;
}

/* The whole sum in the fixed order, segment by segment (the host backend's; the kernels take a
 * segment a block and add the segments' partials in order). */
CUOPTIM_HD double cuoptim_sumsq(const float *x, uint64_t n) {
  double total = 0.0;
  for (uint64_t start = 0; start < n; start += CUOPTIM_SUMSQ_SEGMENT) {
    const int64_t m = (int64_t)(n - start < CUOPTIM_SUMSQ_SEGMENT ? n - start : CUOPTIM_SUMSQ_SEGMENT);
    double lane[CUOPTIM_SUMSQ_LANES];
    for (int t = 0; t < CUOPTIM_SUMSQ_LANES; t++) lane[t] = cuoptim_sumsq_lane(x + start, m, t);
    for (int width = CUOPTIM_SUMSQ_LANES / 2; width > 0; width /= 2)
      for (int t = 0; t < width; t++) lane[t] += lane[t + width];
    total += lane[0];
  }
  return total;
}

/* Element i (row-major) of a rows x cols Muon variable in X's row-major order: X is the variable,
 * or its transpose when the variable is tall (rows > cols). */
CUOPTIM_HD uint64_t cuoptim_muon_x_index(int tall, uint64_t rows, uint64_t cols, uint64_t i) {
  return tall ? i % cols * rows + i / cols : i;
}

/* Muon's lr_adjust(lr * x): times sqrt(max(rows, columns)) (sqrt_dim, a float32 square root of the
 * integer) and rms_rate, unless rms_rate is None. */
CUOPTIM_HD float cuoptim_muon_apply(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float sqrt_dim, float w,
                                    float x) {
  float step = s->lr * x;
  if (p->muon_has_rms_rate) step = (step * sqrt_dim) * p->muon_rms_rate;
  return w - step;
}

/* Adafactor (keras/src/optimizers/adafactor.py). Each Keras op is one float32 operation; the
 * per-variable means and RMS values are reductions in a fixed order, the same on the host
 * (host/backend_host.c) and on the GPU (cuda/kernels.cu), and arrive here as float32 scalars.
 *
 * The fixed order: a mean is the sum of its float32 values in double, in index order from 0,
 * rounded to float32 and divided by the float32 count (Keras: a float32 sum over the float32
 * count); a mean square (of the decayed variable for RMS(w), of the update g / sqrt(v) for
 * RMS(u)) is the sum of squares of the variable's elements in row-major order in the order of
 * cuoptim_sumsq (segments of CUOPTIM_SUMSQ_SEGMENT, lanes of CUOPTIM_SUMSQ_LANES), then the same
 * rounding and division. */
CUOPTIM_HD float cuoptim_mean_of_sum(double sum, uint64_t n) { return (float)sum / (float)n; }

/* The float32 mean of x[0], x[stride], ... x[(n - 1) stride] in the fixed order. */
CUOPTIM_HD float cuoptim_strided_mean(const float *x, uint64_t n, uint64_t stride) {
  double sum = 0.0;
  for (uint64_t i = 0; i < n; i++) sum += (double)x[i * stride];
  return cuoptim_mean_of_sum(sum, n);
}

/* g^2 + epsilon_1: what the second moments average. */
CUOPTIM_HD float cuoptim_adafactor_regulated(const cuoptimRuleParams *p, float g) { return g * g + p->af_epsilon_1; }

/* One factored accumulator element (r or c) from the mean of g^2 + epsilon_1 along its axis, or the
 * full velocity of a variable of rank < 2 from g^2 + epsilon_1 itself. */
CUOPTIM_HD float cuoptim_adafactor_moment(const cuoptimStepScalars *s, float old, float mean) {
  return s->af_beta_2 * old + s->af_one_minus_beta_2 * mean;
}

/* The velocity of a factored element: (r / mean(r over the row axis)) * c. */
CUOPTIM_HD float cuoptim_adafactor_velocity(float r, float r_mean, float c) { return (r / r_mean) * c; }

/* The unclipped update g / sqrt(v). */
CUOPTIM_HD float cuoptim_adafactor_direction(float g, float v) { return g / cuoptim_sqrtf(v); }

/* alpha_t = max(epsilon_2, RMS(w)) * rho_t, from the variable's mean square. */
CUOPTIM_HD float cuoptim_adafactor_alpha(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float w_mean_square) {
  return cuoptim_maxf(p->af_epsilon_2, cuoptim_sqrtf(w_mean_square)) * s->af_rho;
}

/* The clip denominator max(1, RMS(u) / clip_threshold), from the update's mean square. */
CUOPTIM_HD float cuoptim_adafactor_clip(const cuoptimRuleParams *p, float u_mean_square) {
  return cuoptim_maxf(1.0f, cuoptim_sqrtf(u_mean_square) / p->af_clip_threshold);
}

/* The step: w - alpha_t * (u / clip). */
CUOPTIM_HD float cuoptim_adafactor_apply(float w, float u, float clip, float alpha) { return w - alpha * (u / clip); }

/* The variable as RMS(w) and the step see it: after weight decay (SEMANTICS.md §1.5). */
CUOPTIM_HD float cuoptim_adafactor_decayed(const cuoptimRuleParams *p, const cuoptimStepScalars *s, int use_weight_decay,
                                           float w) {
  return use_weight_decay ? cuoptim_weight_decay(w, p->weight_decay, s->lr) : w;
}

/* ---- one element of the update stage: everything after the inspect pass ---------------------- */

/* The gradient of one element as the optimizer rule sees it, or 0 when this is an accumulation
 * micro-step (the accumulator was updated and nothing else happens). *acc is NULL without
 * accumulation. */
CUOPTIM_HD int cuoptim_prepare_gradient(const cuoptimRuleParams *p, const cuoptimStepScalars *s,
                                        const cuoptimTensorScalars *t, float g_raw, float *acc,
                                        float *g_out) {
  float g = cuoptim_unscale(p, s->loss_scale, g_raw);
  if (p->accumulation_steps) {
    if (!s->apply_update) {
      *acc = g + *acc;
      return 0;
    }
    g = (g + *acc) / p->accumulation_steps_f;
    *acc = 0.0f;
  }
  *g_out = cuoptim_clip(p, s, t, g);
  return 1;
}

/* The gradient the inspect pass measures (before clipping). Reads the accumulator, writes nothing. */
CUOPTIM_HD float cuoptim_inspect_gradient(const cuoptimRuleParams *p, float loss_scale, float g_raw, float acc) {
  return cuoptim_accumulated(p, cuoptim_unscale(p, loss_scale, g_raw), acc);
}

/* The optimizer rule of every kind but Lamb on one element (weight decay already applied); f: the
 * fixed kernels' sequences for square roots and divisions, or NULL. */
CUOPTIM_HD void cuoptim_rule(const cuoptimRuleParams *p, const cuoptimStepScalars *s, float g, float *w,
                             float *s0, float *s1, float *s2, cuoptimFastMath *f) {
  switch (p->kind) {
    case CUOPTIM_SGD: cuoptim_rule_sgd(p, s, g, w, s0); break;
    case CUOPTIM_RMSPROP: cuoptim_rule_rmsprop(p, s, g, w, s0, s1, s2, f); break;
    case CUOPTIM_ADAGRAD: cuoptim_rule_adagrad(p, s, g, w, s0, f); break;
    case CUOPTIM_ADADELTA: cuoptim_rule_adadelta(p, s, g, w, s0, s1, f); break;
    case CUOPTIM_ADAM:
    case CUOPTIM_ADAMW:
    case CUOPTIM_MUON: /* its AdamW path; the Muon path is cuoptim_muon_pass1_element */
      cuoptim_rule_adam(p, s, g, w, s0, s1, s2, f);
      break;
    case CUOPTIM_ADAMAX: cuoptim_rule_adamax(p, s, g, w, s0, s1, f); break;
    case CUOPTIM_NADAM: cuoptim_rule_nadam(p, s, g, w, s0, s1, f); break;
    case CUOPTIM_LION: cuoptim_rule_lion(p, s, g, w, s0); break;
    case CUOPTIM_FTRL: cuoptim_rule_ftrl(p, s, g, w, s0, s1); break;
    case CUOPTIM_SCHEDULE_FREE_ADAMW: cuoptim_rule_schedule_free_adamw(p, s, g, w, s0, s1, f); break;
    default: break;
  }
}

/* Update stage, one element with a gradient (not Lamb): prepare, weight decay, rule (f as for
 * cuoptim_rule). Returns 0 on an accumulation micro-step (only *acc changed). */
CUOPTIM_HD int cuoptim_update_element(const cuoptimRuleParams *p, const cuoptimStepScalars *s,
                                      const cuoptimTensorScalars *t, int use_weight_decay, float g_raw,
                                      float *w, float *s0, float *s1, float *s2, float *acc, cuoptimFastMath *f) {
  float g;
  if (!cuoptim_prepare_gradient(p, s, t, g_raw, acc, &g)) return 0;
  if (use_weight_decay) *w = cuoptim_weight_decay(*w, p->weight_decay, s->lr);
  cuoptim_rule(p, s, g, w, s0, s1, s2, f);
  return 1;
}

/* Lamb pass 1, one element: prepare, moments; returns 0 on a micro-step. Gives the decayed
 * variable and the update direction whose squares the trust ratio sums. */
CUOPTIM_HD int cuoptim_lamb_pass1_element(const cuoptimRuleParams *p, const cuoptimStepScalars *s,
                                          const cuoptimTensorScalars *t, int use_weight_decay, float g_raw,
                                          float w, float *s0, float *s1, float *acc, float *w_decayed,
                                          float *update) {
  float g;
  if (!cuoptim_prepare_gradient(p, s, t, g_raw, acc, &g)) return 0;
  *w_decayed = use_weight_decay ? cuoptim_weight_decay(w, p->weight_decay, s->lr) : w;
  *update = cuoptim_rule_lamb_moments(p, s, g, s0, s1);
  return 1;
}

/* Lamb pass 2, one element: the variable after decay and the trust-ratio step. */
CUOPTIM_HD float cuoptim_lamb_pass2_element(const cuoptimRuleParams *p, const cuoptimStepScalars *s,
                                            const cuoptimTensorScalars *t, int use_weight_decay, float w,
                                            float m, float v) {
  float w_decayed = use_weight_decay ? cuoptim_weight_decay(w, p->weight_decay, s->lr) : w;
  return cuoptim_rule_lamb_apply(s, t, w_decayed, cuoptim_rule_lamb_direction(p, s, m, v));
}

/* Muon path, pass 1, one element: prepare, weight decay (weight_decay, not adam_weight_decay),
 * momentum; gives the direction Newton-Schulz reads. Returns 0 on a micro-step. */
CUOPTIM_HD int cuoptim_muon_pass1_element(const cuoptimRuleParams *p, const cuoptimStepScalars *s,
                                          const cuoptimTensorScalars *t, int use_weight_decay, float g_raw, float *w,
                                          float *s0, float *acc, float *direction) {
  float g;
  if (!cuoptim_prepare_gradient(p, s, t, g_raw, acc, &g)) return 0;
  if (use_weight_decay) *w = cuoptim_weight_decay(*w, p->muon_weight_decay, s->lr);
  *direction = cuoptim_rule_muon_momentum(p, g, s0);
  return 1;
}

/* Adafactor on an update step: the prepared gradient with the accumulator only read. The CUDA
 * reductions form it again from the raw gradient wherever they need it; the apply stage alone
 * writes the accumulator back (cuoptim_adafactor_apply_element). */
CUOPTIM_HD float cuoptim_adafactor_gradient(const cuoptimRuleParams *p, const cuoptimStepScalars *s,
                                            const cuoptimTensorScalars *t, float g_raw, float acc) {
  float g = 0.0f;
  cuoptim_prepare_gradient(p, s, t, g_raw, &acc, &g);
  return g;
}

/* Adafactor's apply stage, one element with a gradient, once the velocity v and the variable's
 * alpha_t and clip (t) are known: prepare, weight decay, w - alpha_t * (g / sqrt(v)) / clip.
 * Returns 0 on an accumulation micro-step (only *acc changed). */
CUOPTIM_HD int cuoptim_adafactor_apply_element(const cuoptimRuleParams *p, const cuoptimStepScalars *s,
                                               const cuoptimTensorScalars *t, int use_weight_decay, float g_raw,
                                               float v, float *w, float *acc) {
  float g;
  if (!cuoptim_prepare_gradient(p, s, t, g_raw, acc, &g)) return 0;
  float decayed = cuoptim_adafactor_decayed(p, s, use_weight_decay, *w);
  *w = cuoptim_adafactor_apply(decayed, cuoptim_adafactor_direction(g, v), t->af_clip, t->af_alpha);
  return 1;
}

/* EMA stage, one element (every variable, with or without a gradient this step). */
CUOPTIM_HD void cuoptim_ema_element(const cuoptimStepScalars *s, float *w, float *average) {
  float a = cuoptim_ema(s, *average, *w);
  *average = a;
  if (s->ema_overwrite) *w = a;
}

#ifdef __cplusplus
}
#endif

#endif /* CUOPTIM_RULES_H */
