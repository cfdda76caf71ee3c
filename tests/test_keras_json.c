/*
 * cuoptimConfigFromKerasJSON / cuoptimConfigToKerasJSON against the text real Keras writes.
 *
 * Every KERAS_* string below is json.dumps(keras.optimizers.serialize(opt)) captured from
 * Keras 3.15.1 (jax backend); the comment above each names `opt`. Keras writes a float learning
 * rate as the float32 value of its variable (0.01 -> 0.009999999776482582), hence the (float)
 * casts in the expectations.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "case.h"
#include "cuoptim.h"
#include "testutil.h"

/* json.dumps(keras.optimizers.serialize(cls())) for each class, captured from Keras 3.15.1. */
static const char KERAS_DEFAULT_SGD[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"SGD\", \"config\": {\"name\": \"sgd\""
    ", \"learning_rate\": 0.009999999776482582, \"weight_decay\": null, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"momentum\": 0.0, \"nesterov\": false}"
    ", \"registered_name\": null}";

static const char KERAS_DEFAULT_RMSPROP[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"RMSprop\""
    ", \"config\": {\"name\": \"rm_sprop\", \"learning_rate\": 0.0010000000474974513"
    ", \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null"
    ", \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null"
    ", \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null, \"rho\": 0.9"
    ", \"momentum\": 0.0, \"epsilon\": 1e-07, \"centered\": false}, \"registered_name\": null}";

static const char KERAS_DEFAULT_ADAGRAD[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adagrad\""
    ", \"config\": {\"name\": \"adagrad\", \"learning_rate\": 0.0010000000474974513"
    ", \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null"
    ", \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null"
    ", \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null"
    ", \"initial_accumulator_value\": 0.1, \"epsilon\": 1e-07}, \"registered_name\": null}";

static const char KERAS_DEFAULT_ADADELTA[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adadelta\""
    ", \"config\": {\"name\": \"adadelta\", \"learning_rate\": 0.0010000000474974513"
    ", \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null"
    ", \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null"
    ", \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null, \"rho\": 0.95"
    ", \"epsilon\": 1e-07}, \"registered_name\": null}";

/* keras.optimizers.Muon(), serialized by Keras 3.15.1. */
static const char KERAS_DEFAULT_MUON[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Muon\", \"config\": {\"name\": \"muon\""
    ", \"learning_rate\": 0.0010000000474974513, \"weight_decay\": 0.004, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null"
    ", \"adam_beta_1\": 0.9, \"adam_beta_2\": 0.999, \"epsilon\": 1e-07, \"exclude_layers\": []"
    ", \"muon_a\": 3.4445, \"muon_b\": -4.775, \"muon_c\": 2.0315, \"adam_lr_ratio\": 1, \"momentum\": 0.95"
    ", \"ns_steps\": 5, \"nesterov\": true, \"exclude_embeddings\": true, \"adam_weight_decay\": 0.004"
    ", \"rms_rate\": 0.2}, \"registered_name\": null}";

static const char KERAS_DEFAULT_ADAM[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adam\", \"config\": {\"name\": \"adam\""
    ", \"learning_rate\": 0.0010000000474974513, \"weight_decay\": null, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.9, \"beta_2\": 0.999"
    ", \"epsilon\": 1e-07, \"amsgrad\": false}, \"registered_name\": null}";

static const char KERAS_DEFAULT_ADAMW[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"AdamW\""
    ", \"config\": {\"name\": \"adam_w\", \"learning_rate\": 0.0010000000474974513"
    ", \"weight_decay\": 0.004, \"clipnorm\": null, \"global_clipnorm\": null"
    ", \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.9, \"beta_2\": 0.999"
    ", \"epsilon\": 1e-07, \"amsgrad\": false}, \"registered_name\": null}";

static const char KERAS_DEFAULT_ADAMAX[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adamax\""
    ", \"config\": {\"name\": \"adamax\", \"learning_rate\": 0.0010000000474974513"
    ", \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null"
    ", \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null"
    ", \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null, \"beta_1\": 0.9"
    ", \"beta_2\": 0.999, \"epsilon\": 1e-07}, \"registered_name\": null}";

static const char KERAS_DEFAULT_NADAM[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Nadam\""
    ", \"config\": {\"name\": \"nadam\", \"learning_rate\": 0.0010000000474974513"
    ", \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null"
    ", \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null"
    ", \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null, \"beta_1\": 0.9"
    ", \"beta_2\": 0.999, \"epsilon\": 1e-07}, \"registered_name\": null}";

static const char KERAS_DEFAULT_LION[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Lion\", \"config\": {\"name\": \"lion\""
    ", \"learning_rate\": 0.0010000000474974513, \"weight_decay\": null, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.9, \"beta_2\": 0.99}"
    ", \"registered_name\": null}";

static const char KERAS_DEFAULT_LAMB[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Lamb\", \"config\": {\"name\": \"lamb\""
    ", \"learning_rate\": 0.0010000000474974513, \"weight_decay\": null, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.9, \"beta_2\": 0.999"
    ", \"epsilon\": 1e-07}, \"registered_name\": null}";

/* keras.optimizers.serialize(keras.optimizers.Adafactor()), Keras 3.15.1 */
static const char KERAS_DEFAULT_ADAFACTOR[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adafactor\", \"config\": {\"name\": \"adafactor\""
    ", \"learning_rate\": 0.0010000000474974513, \"weight_decay\": null, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_2_decay\": -0.8, \"epsilon_1\": 1e-30"
    ", \"epsilon_2\": 0.001, \"clip_threshold\": 1.0, \"relative_step\": true}, \"registered_name\": null}";
static const char KERAS_DEFAULT_FTRL[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Ftrl\", \"config\": {\"name\": \"ftrl\""
    ", \"learning_rate\": 0.0010000000474974513, \"weight_decay\": null, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"learning_rate_power\": -0.5"
    ", \"initial_accumulator_value\": 0.1, \"l1_regularization_strength\": 0.0"
    ", \"l2_regularization_strength\": 0.0, \"l2_shrinkage_regularization_strength\": 0.0"
    ", \"beta\": 0.0}, \"registered_name\": null}";

/* keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()) */
static const char KERAS_DEFAULT_LSO_ADAM[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"LossScaleOptimizer\""
    ", \"config\": {\"name\": \"loss_scale_optimizer\""
    ", \"inner_optimizer\": {\"module\": \"keras.optimizers\", \"class_name\": \"Adam\""
    ", \"config\": {\"name\": \"adam_1\", \"learning_rate\": 0.0010000000474974513"
    ", \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null"
    ", \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null"
    ", \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null, \"beta_1\": 0.9"
    ", \"beta_2\": 0.999, \"epsilon\": 1e-07, \"amsgrad\": false}, \"registered_name\": null}"
    ", \"initial_scale\": 32768.0, \"dynamic_growth_steps\": 2000}, \"registered_name\": null}";

/* SGD(learning_rate=0.5, momentum=0.9, nesterov=True, clipnorm=1.0, weight_decay=0.01, use_ema=True,
 *     ema_momentum=0.95, ema_overwrite_frequency=10, gradient_accumulation_steps=4, name="my_sgd") */
static const char KERAS_SGD[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"SGD\""
    ", \"config\": {\"name\": \"my_sgd\", \"learning_rate\": 0.5, \"weight_decay\": 0.01"
    ", \"clipnorm\": 1.0, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": true"
    ", \"ema_momentum\": 0.95, \"ema_overwrite_frequency\": 10, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": 4, \"momentum\": 0.9, \"nesterov\": true}"
    ", \"registered_name\": null}";

/* RMSprop(learning_rate=0.01, rho=0.8, momentum=0.5, epsilon=1e-6, centered=True, clipvalue=0.5,
 *         loss_scale_factor=128.0) */
static const char KERAS_RMS[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"RMSprop\""
    ", \"config\": {\"name\": \"rm_sprop\", \"learning_rate\": 0.009999999776482582"
    ", \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": 0.5"
    ", \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null"
    ", \"loss_scale_factor\": 128.0, \"gradient_accumulation_steps\": null, \"rho\": 0.8"
    ", \"momentum\": 0.5, \"epsilon\": 1e-06, \"centered\": true}, \"registered_name\": null}";

/* Adagrad(learning_rate=0.2, initial_accumulator_value=0.3, epsilon=1e-6, global_clipnorm=2.0) */
static const char KERAS_ADAGRAD[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adagrad\""
    ", \"config\": {\"name\": \"adagrad\", \"learning_rate\": 0.20000000298023224"
    ", \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": 2.0, \"clipvalue\": null"
    ", \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null"
    ", \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null"
    ", \"initial_accumulator_value\": 0.3, \"epsilon\": 1e-06}, \"registered_name\": null}";

/* Adadelta(learning_rate=1.0, rho=0.8, epsilon=1e-6) */
static const char KERAS_ADADELTA[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adadelta\""
    ", \"config\": {\"name\": \"adadelta\", \"learning_rate\": 1.0, \"weight_decay\": null"
    ", \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false"
    ", \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"rho\": 0.8, \"epsilon\": 1e-06}"
    ", \"registered_name\": null}";

/* Adam(learning_rate=ExponentialDecay(0.1, 1000, 0.96, staircase=True, name="exp"), beta_1=0.8,
 *      beta_2=0.99, epsilon=1e-8, amsgrad=True) */
static const char KERAS_ADAM[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adam\", \"config\": {\"name\": \"adam\""
    ", \"learning_rate\": {\"module\": \"keras.optimizers.schedules\""
    ", \"class_name\": \"ExponentialDecay\", \"config\": {\"initial_learning_rate\": 0.1"
    ", \"decay_steps\": 1000, \"decay_rate\": 0.96, \"staircase\": true, \"name\": \"exp\"}"
    ", \"registered_name\": null}, \"weight_decay\": null, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.8, \"beta_2\": 0.99"
    ", \"epsilon\": 1e-08, \"amsgrad\": true}, \"registered_name\": null}";

/* AdamW(learning_rate=1.0, weight_decay=0.5, beta_1=0.85, epsilon=2.0) */
static const char KERAS_ADAMW[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"AdamW\""
    ", \"config\": {\"name\": \"adam_w\", \"learning_rate\": 1.0, \"weight_decay\": 0.5"
    ", \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false"
    ", \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.85, \"beta_2\": 0.999"
    ", \"epsilon\": 2.0, \"amsgrad\": false}, \"registered_name\": null}";

/* Adamax(0.2, 0.85, 0.95, 1e-6) */
static const char KERAS_ADAMAX[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adamax\""
    ", \"config\": {\"name\": \"adamax\", \"learning_rate\": 0.20000000298023224"
    ", \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null"
    ", \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null"
    ", \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null, \"beta_1\": 0.85"
    ", \"beta_2\": 0.95, \"epsilon\": 1e-06}, \"registered_name\": null}";

/* Nadam(0.5, 0.5, 0.67, 1e-5) */
static const char KERAS_NADAM[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Nadam\""
    ", \"config\": {\"name\": \"nadam\", \"learning_rate\": 0.5, \"weight_decay\": null"
    ", \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false"
    ", \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.5, \"beta_2\": 0.67"
    ", \"epsilon\": 1e-05}, \"registered_name\": null}";

/* Lion(learning_rate=1e-4, beta_1=0.95, beta_2=0.98, weight_decay=0.1) */
static const char KERAS_LION[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Lion\", \"config\": {\"name\": \"lion\""
    ", \"learning_rate\": 9.999999747378752e-05, \"weight_decay\": 0.1, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.95, \"beta_2\": 0.98}"
    ", \"registered_name\": null}";

/* Lamb(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6) */
static const char KERAS_LAMB[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Lamb\", \"config\": {\"name\": \"lamb\""
    ", \"learning_rate\": 0.009999999776482582, \"weight_decay\": null, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.8, \"beta_2\": 0.99"
    ", \"epsilon\": 1e-06}, \"registered_name\": null}";

/* Ftrl(0.05, -0.2, 0.4, 0.05, 0.15, 0.01, 0.3) */
static const char KERAS_FTRL[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Ftrl\", \"config\": {\"name\": \"ftrl\""
    ", \"learning_rate\": 0.05000000074505806, \"weight_decay\": null, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"learning_rate_power\": -0.2"
    ", \"initial_accumulator_value\": 0.4, \"l1_regularization_strength\": 0.05"
    ", \"l2_regularization_strength\": 0.15, \"l2_shrinkage_regularization_strength\": 0.01"
    ", \"beta\": 0.3}, \"registered_name\": null}";

/* SGD(learning_rate=PiecewiseConstantDecay([100, 200], [0.1, 0.01, 0.001])) */
static const char KERAS_S_PIECE[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"SGD\", \"config\": {\"name\": \"sgd\""
    ", \"learning_rate\": {\"module\": \"keras.optimizers.schedules\""
    ", \"class_name\": \"PiecewiseConstantDecay\", \"config\": {\"boundaries\": [100, 200]"
    ", \"values\": [0.1, 0.01, 0.001], \"name\": \"PiecewiseConstant\"}"
    ", \"registered_name\": null}, \"weight_decay\": null, \"clipnorm\": null"
    ", \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"momentum\": 0.0, \"nesterov\": false}"
    ", \"registered_name\": null}";

/* SGD(learning_rate=PolynomialDecay(0.1, 500, end_learning_rate=0.001, power=0.5, cycle=True)) */
static const char KERAS_S_POLY[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"SGD\", \"config\": {\"name\": \"sgd_1\""
    ", \"learning_rate\": {\"module\": \"keras.optimizers.schedules\""
    ", \"class_name\": \"PolynomialDecay\", \"config\": {\"initial_learning_rate\": 0.1"
    ", \"decay_steps\": 500, \"end_learning_rate\": 0.001, \"power\": 0.5, \"cycle\": true"
    ", \"name\": \"PolynomialDecay\"}, \"registered_name\": null}, \"weight_decay\": null"
    ", \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false"
    ", \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"momentum\": 0.0, \"nesterov\": false}"
    ", \"registered_name\": null}";

/* SGD(learning_rate=InverseTimeDecay(0.1, 10, 0.5, staircase=True)) */
static const char KERAS_S_INV[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"SGD\", \"config\": {\"name\": \"sgd_2\""
    ", \"learning_rate\": {\"module\": \"keras.optimizers.schedules\""
    ", \"class_name\": \"InverseTimeDecay\", \"config\": {\"initial_learning_rate\": 0.1"
    ", \"decay_steps\": 10, \"decay_rate\": 0.5, \"staircase\": true"
    ", \"name\": \"InverseTimeDecay\"}, \"registered_name\": null}, \"weight_decay\": null"
    ", \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false"
    ", \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"momentum\": 0.0, \"nesterov\": false}"
    ", \"registered_name\": null}";

/* SGD(learning_rate=CosineDecay(0.1, 1000, alpha=0.1)) */
static const char KERAS_S_COS[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"SGD\", \"config\": {\"name\": \"sgd_3\""
    ", \"learning_rate\": {\"module\": \"keras.optimizers.schedules\""
    ", \"class_name\": \"CosineDecay\", \"config\": {\"initial_learning_rate\": 0.1"
    ", \"decay_steps\": 1000, \"alpha\": 0.1, \"name\": \"CosineDecay\", \"warmup_target\": null"
    ", \"warmup_steps\": 0}, \"registered_name\": null}, \"weight_decay\": null"
    ", \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false"
    ", \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"momentum\": 0.0, \"nesterov\": false}"
    ", \"registered_name\": null}";

/* SGD(learning_rate=CosineDecay(0.0, 1000, alpha=0.01, warmup_target=0.2, warmup_steps=100)) */
static const char KERAS_S_COSW[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"SGD\", \"config\": {\"name\": \"sgd_4\""
    ", \"learning_rate\": {\"module\": \"keras.optimizers.schedules\""
    ", \"class_name\": \"CosineDecay\", \"config\": {\"initial_learning_rate\": 0.0"
    ", \"decay_steps\": 1000, \"alpha\": 0.01, \"name\": \"CosineDecay\", \"warmup_target\": 0.2"
    ", \"warmup_steps\": 100}, \"registered_name\": null}, \"weight_decay\": null"
    ", \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false"
    ", \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"momentum\": 0.0, \"nesterov\": false}"
    ", \"registered_name\": null}";

/* SGD(learning_rate=CosineDecayRestarts(0.1, 1000, t_mul=1.5, m_mul=0.9, alpha=0.05)) */
static const char KERAS_S_COSR[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"SGD\", \"config\": {\"name\": \"sgd_5\""
    ", \"learning_rate\": {\"module\": \"keras.optimizers.schedules\""
    ", \"class_name\": \"CosineDecayRestarts\", \"config\": {\"initial_learning_rate\": 0.1"
    ", \"first_decay_steps\": 1000, \"t_mul\": 1.5, \"m_mul\": 0.9, \"alpha\": 0.05"
    ", \"name\": \"SGDRDecay\"}, \"registered_name\": null}, \"weight_decay\": null"
    ", \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false"
    ", \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"momentum\": 0.0, \"nesterov\": false}"
    ", \"registered_name\": null}";

/* LossScaleOptimizer(Lion(learning_rate=CosineDecay(0.01, 200)), initial_scale=1024.0,
 *                    dynamic_growth_steps=10, name="lso") */
static const char KERAS_LSO[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"LossScaleOptimizer\""
    ", \"config\": {\"name\": \"lso\", \"inner_optimizer\": {\"module\": \"keras.optimizers\""
    ", \"class_name\": \"Lion\", \"config\": {\"name\": \"lion_1\""
    ", \"learning_rate\": {\"module\": \"keras.optimizers.schedules\""
    ", \"class_name\": \"CosineDecay\", \"config\": {\"initial_learning_rate\": 0.01"
    ", \"decay_steps\": 200, \"alpha\": 0.0, \"name\": \"CosineDecay\", \"warmup_target\": null"
    ", \"warmup_steps\": 0}, \"registered_name\": null}, \"weight_decay\": null"
    ", \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false"
    ", \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.9, \"beta_2\": 0.99}"
    ", \"registered_name\": null}, \"initial_scale\": 1024.0, \"dynamic_growth_steps\": 10}"
    ", \"registered_name\": null}";

/* Adam(learning_rate=lambda: 0.01) */
static const char KERAS_CALLABLE_LAMBDA[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adam\", \"config\": {\"name\": \"adam\""
    ", \"learning_rate\": {\"class_name\": \"__lambda__\""
    ", \"config\": {\"value\": [\"4wAAAAAAAAAAAAAAAAEAAAADAAAA8wYAAACXAGQBUwCpAk7nexSuR+F6hD+pAHIEAAAA"
    "8wAAAAD6\\nDy90bXAva2ovY2FwMi5wefoIPGxhbWJkYT5yBwAAAAUAAABzBgAAAIAAkDSAAHIFAAAA\\n\""
    ", null, null]}}, \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null"
    ", \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null"
    ", \"gradient_accumulation_steps\": null, \"beta_1\": 0.9, \"beta_2\": 0.999"
    ", \"epsilon\": 1e-07, \"amsgrad\": false}, \"registered_name\": null}";

/* def mylr(): return 0.01;  Adam(learning_rate=mylr) */
static const char KERAS_CALLABLE_FUNCTION[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"Adam\""
    ", \"config\": {\"name\": \"adam_1\", \"learning_rate\": {\"module\": \"builtins\""
    ", \"class_name\": \"function\", \"config\": \"mylr\", \"registered_name\": \"function\"}"
    ", \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null"
    ", \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null"
    ", \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null, \"beta_1\": 0.9"
    ", \"beta_2\": 0.999, \"epsilon\": 1e-07, \"amsgrad\": false}, \"registered_name\": null}";


/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------- */
#define EXPECT_D(actual, expected)                                                                    \
  cr_expect((double)(actual) == (double)(expected), "%s = %.17g, expected %.17g", #actual, (double)(actual), \
            (double)(expected))
#define EXPECT_NONE(actual) \
  cr_expect(CUOPTIM_IS_NONE(actual), "%s = %.17g, expected None (NaN)", #actual, (double)(actual))
#define EXPECT_I(actual, expected)                                                                   \
  cr_expect((long long)(actual) == (long long)(expected), "%s = %lld, expected %lld", #actual,        \
            (long long)(actual), (long long)(expected))
#define EXPECT_S(actual, expected) \
  cr_expect(strcmp((actual), (expected)) == 0, "%s = \"%s\", expected \"%s\"", #actual, (actual), (expected))

static const char *last_message(void) { return cuoptimGetLastErrorMessage(); }

static cuoptimConfig_t parse_ok(const char *json) {
  cuoptimConfig_t c;
  memset(&c, 0, sizeof c);
  cuoptimStatus_t st = cuoptimConfigFromKerasJSON(&c, json);
  cr_assert_eq(st, CUOPTIM_STATUS_SUCCESS, "cuoptimConfigFromKerasJSON returned %d: %s\n  for %s", (int)st,
               last_message(), json);
  return c;
}

static cuoptimConfig_t init_config(cuoptimOptimizerKind_t kind) {
  cuoptimConfig_t c;
  cr_assert_eq(cuoptimConfigInit(&c, kind), CUOPTIM_STATUS_SUCCESS, "%s", last_message());
  return c;
}

/* cuoptimConfigToKerasJSON through the size query; the caller frees the text. */
static char *to_json(const cuoptimConfig_t *c) {
  size_t needed = 0;
  cuoptimStatus_t st = cuoptimConfigToKerasJSON(c, NULL, 0, &needed);
  cr_assert_eq(st, CUOPTIM_STATUS_INVALID_VALUE, "size query returned %d: %s", (int)st, last_message());
  cr_assert_gt(needed, 0);
  char *text = malloc(needed + 1);
  cr_assert_not_null(text);
  size_t written = 0;
  st = cuoptimConfigToKerasJSON(c, text, needed + 1, &written);
  cr_assert_eq(st, CUOPTIM_STATUS_SUCCESS, "cuoptimConfigToKerasJSON returned %d: %s", (int)st, last_message());
  cr_assert_eq(written, needed);
  cr_assert_eq(strlen(text), needed);
  return text;
}

/* `src` with the single occurrence of `from` replaced by `to`; the caller frees. */
static char *replace_once(const char *src, const char *from, const char *to) {
  const char *at = strstr(src, from);
  cr_assert_not_null(at, "\"%s\" not found in %s", from, src);
  cr_assert_null(strstr(at + 1, from), "\"%s\" occurs twice in %s", from, src);
  size_t head = (size_t)(at - src), nfrom = strlen(from), nto = strlen(to);
  char *out = malloc(strlen(src) - nfrom + nto + 1);
  cr_assert_not_null(out);
  memcpy(out, src, head);
  memcpy(out + head, to, nto);
  strcpy(out + head + nto, at + nfrom);
  return out;
}

/* The call fails with `status`, its message names the call and contains `fragment`, and *config
 * keeps every byte it had. */
static void expect_parse_error(const char *json, cuoptimStatus_t status, const char *fragment) {
  cuoptimConfig_t c, before;
  c = init_config(CUOPTIM_NADAM);
  strcpy(c.name, "untouched");
  c.beta_1 = 0.123;
  memcpy(&before, &c, sizeof c);
  cuoptimStatus_t st = cuoptimConfigFromKerasJSON(&c, json);
  const char *msg = last_message();
  const char *shown = json != NULL ? json : "(NULL)";
  cr_expect_eq(st, status, "status %d, expected %d (message: %s)\n  for %s", (int)st, (int)status, msg, shown);
  cr_expect(strncmp(msg, "cuoptimConfigFromKerasJSON: ", 28) == 0, "message \"%s\" does not name the call", msg);
  if (fragment != NULL) {
    cr_expect(strstr(msg, fragment) != NULL, "message \"%s\" lacks \"%s\"", msg, fragment);
  }
  cr_expect(memcmp(&c, &before, sizeof c) == 0, "a failed call changed *config (for %s)", shown);
}

/* Like expect_parse_error on `src` with one substring replaced. */
static void expect_edit_error(const char *src, const char *from, const char *to, cuoptimStatus_t status,
                              const char *fragment) {
  char *json = replace_once(src, from, to);
  expect_parse_error(json, status, fragment);
  free(json);
}

static int same_double(double a, double b) { return (CUOPTIM_IS_NONE(a) && CUOPTIM_IS_NONE(b)) || a == b; }

#define EXPECT_SAME_D(field) \
  cr_expect(same_double(a->field, b->field), "%s: %.17g vs %.17g", #field, (double)a->field, (double)b->field)
#define EXPECT_SAME_I(field) \
  cr_expect(a->field == b->field, "%s: %lld vs %lld", #field, (long long)a->field, (long long)b->field)
#define EXPECT_SAME_S(field) \
  cr_expect(strcmp(a->field, b->field) == 0, "%s: \"%s\" vs \"%s\"", #field, a->field, b->field)

/* Every field of the schedule; `all` = 0 compares only those Keras serializes for the kind. */
static void expect_schedule_equal(const cuoptimSchedule_t *a, const cuoptimSchedule_t *b, int all) {
  EXPECT_SAME_I(kind);
  cuoptimScheduleKind_t k = a->kind;
  int decays = k == CUOPTIM_SCHEDULE_EXPONENTIAL || k == CUOPTIM_SCHEDULE_INVERSE_TIME;
  if (all || k != CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT) EXPECT_SAME_D(initial_learning_rate);
  if (all || (k != CUOPTIM_SCHEDULE_CONSTANT && k != CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT)) EXPECT_SAME_D(decay_steps);
  if (all || decays) {
    EXPECT_SAME_D(decay_rate);
    EXPECT_SAME_I(staircase);
  }
  if (all || k == CUOPTIM_SCHEDULE_POLYNOMIAL) {
    EXPECT_SAME_D(end_learning_rate);
    EXPECT_SAME_D(power);
    EXPECT_SAME_I(cycle);
  }
  if (all || k == CUOPTIM_SCHEDULE_COSINE || k == CUOPTIM_SCHEDULE_COSINE_RESTARTS) EXPECT_SAME_D(alpha);
  if (all || k == CUOPTIM_SCHEDULE_COSINE) {
    EXPECT_SAME_D(warmup_target);
    EXPECT_SAME_D(warmup_steps);
  }
  if (all || k == CUOPTIM_SCHEDULE_COSINE_RESTARTS) {
    EXPECT_SAME_D(t_mul);
    EXPECT_SAME_D(m_mul);
  }
  if (all || k == CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT) {
    EXPECT_SAME_I(num_boundaries);
    int n = a->num_boundaries == b->num_boundaries ? a->num_boundaries : 0;
    if (all) n = CUOPTIM_MAX_BOUNDARIES;
    for (int i = 0; i < n; i++) EXPECT_SAME_D(boundaries[i]);
    for (int i = 0; i <= n; i++) EXPECT_SAME_D(values[i]);
  }
  if (all || k != CUOPTIM_SCHEDULE_CONSTANT) EXPECT_SAME_S(name);
}

/* Every field of the config; `all` = 0 compares only those Keras serializes for the kind. */
static void expect_config_equal(const cuoptimConfig_t *a, const cuoptimConfig_t *b, int all) {
  EXPECT_SAME_I(kind);
  EXPECT_SAME_S(name);
  expect_schedule_equal(&a->learning_rate, &b->learning_rate, all);
  EXPECT_SAME_D(weight_decay);
  EXPECT_SAME_D(clipnorm);
  EXPECT_SAME_D(clipvalue);
  EXPECT_SAME_D(global_clipnorm);
  EXPECT_SAME_I(use_ema);
  EXPECT_SAME_D(ema_momentum);
  EXPECT_SAME_I(ema_overwrite_frequency);
  EXPECT_SAME_D(loss_scale_factor);
  EXPECT_SAME_I(gradient_accumulation_steps);
  cuoptimOptimizerKind_t k = a->kind;
  int betas = k == CUOPTIM_ADAM || k == CUOPTIM_ADAMW || k == CUOPTIM_ADAMAX || k == CUOPTIM_NADAM ||
              k == CUOPTIM_LION || k == CUOPTIM_LAMB;
  int adagrad_like = k == CUOPTIM_ADAGRAD || k == CUOPTIM_FTRL;
  if (all || betas) {
    EXPECT_SAME_D(beta_1);
    EXPECT_SAME_D(beta_2);
  }
  if (all || (k != CUOPTIM_SGD && k != CUOPTIM_LION && k != CUOPTIM_FTRL && k != CUOPTIM_ADAFACTOR))
    EXPECT_SAME_D(epsilon);
  if (all || k == CUOPTIM_ADAFACTOR) {
    EXPECT_SAME_D(beta_2_decay);
    EXPECT_SAME_D(epsilon_1);
    EXPECT_SAME_D(epsilon_2);
    EXPECT_SAME_D(clip_threshold);
    EXPECT_SAME_I(relative_step);
  }
  if (all || k == CUOPTIM_RMSPROP || k == CUOPTIM_ADADELTA) EXPECT_SAME_D(rho);
  if (all || k == CUOPTIM_SGD || k == CUOPTIM_RMSPROP) EXPECT_SAME_D(momentum);
  if (all || k == CUOPTIM_SGD) EXPECT_SAME_I(nesterov);
  if (all || k == CUOPTIM_RMSPROP) EXPECT_SAME_I(centered);
  if (all || k == CUOPTIM_ADAM || k == CUOPTIM_ADAMW) EXPECT_SAME_I(amsgrad);
  if (all || adagrad_like) EXPECT_SAME_D(initial_accumulator_value);
  if (all || k == CUOPTIM_FTRL) {
    EXPECT_SAME_D(learning_rate_power);
    EXPECT_SAME_D(l1_regularization_strength);
    EXPECT_SAME_D(l2_regularization_strength);
    EXPECT_SAME_D(l2_shrinkage_regularization_strength);
    EXPECT_SAME_D(beta);
  }
  EXPECT_SAME_I(dynamic_loss_scale);
  if (all || a->dynamic_loss_scale) {
    EXPECT_SAME_D(initial_scale);
    EXPECT_SAME_I(dynamic_growth_steps);
    EXPECT_SAME_S(loss_scale_name);
  }
}

typedef struct {
  cuoptimOptimizerKind_t kind;
  const char *json;
} keras_default_t;

static const keras_default_t KERAS_DEFAULTS[] = {
    {CUOPTIM_SGD, KERAS_DEFAULT_SGD},         {CUOPTIM_RMSPROP, KERAS_DEFAULT_RMSPROP},
    {CUOPTIM_ADAGRAD, KERAS_DEFAULT_ADAGRAD}, {CUOPTIM_ADADELTA, KERAS_DEFAULT_ADADELTA},
    {CUOPTIM_ADAM, KERAS_DEFAULT_ADAM},       {CUOPTIM_ADAMW, KERAS_DEFAULT_ADAMW},
    {CUOPTIM_ADAMAX, KERAS_DEFAULT_ADAMAX},   {CUOPTIM_NADAM, KERAS_DEFAULT_NADAM},
    {CUOPTIM_LION, KERAS_DEFAULT_LION},       {CUOPTIM_LAMB, KERAS_DEFAULT_LAMB},
    {CUOPTIM_FTRL, KERAS_DEFAULT_FTRL},       {CUOPTIM_ADAFACTOR, KERAS_DEFAULT_ADAFACTOR},
    {CUOPTIM_MUON, KERAS_DEFAULT_MUON},
};
#define NUM_KERAS_DEFAULTS (sizeof KERAS_DEFAULTS / sizeof KERAS_DEFAULTS[0])

static const char *const ALL_KERAS_TEXTS[] = {
    KERAS_DEFAULT_SGD,  KERAS_DEFAULT_RMSPROP, KERAS_DEFAULT_ADAGRAD, KERAS_DEFAULT_ADADELTA, KERAS_DEFAULT_ADAM,
    KERAS_DEFAULT_ADAMW, KERAS_DEFAULT_ADAMAX, KERAS_DEFAULT_NADAM,   KERAS_DEFAULT_LION,     KERAS_DEFAULT_LAMB,
    KERAS_DEFAULT_FTRL, KERAS_DEFAULT_ADAFACTOR, KERAS_DEFAULT_LSO_ADAM, KERAS_SGD,            KERAS_RMS,              KERAS_ADAGRAD,
    KERAS_ADADELTA,     KERAS_ADAM,            KERAS_ADAMW,           KERAS_ADAMAX,           KERAS_NADAM,
    KERAS_LION,         KERAS_LAMB,            KERAS_FTRL,            KERAS_S_PIECE,          KERAS_S_POLY,
    KERAS_S_INV,        KERAS_S_COS,           KERAS_S_COSW,          KERAS_S_COSR,           KERAS_LSO,
    KERAS_DEFAULT_MUON,
};
#define NUM_KERAS_TEXTS (sizeof ALL_KERAS_TEXTS / sizeof ALL_KERAS_TEXTS[0])

/* ---------------------------------------------------------------------------------------------
 * Reading what Keras writes
 * ------------------------------------------------------------------------------------------- */
Test(keras_json, from_json_reads_keras_defaults_of_every_class) {
  for (size_t i = 0; i < NUM_KERAS_DEFAULTS; i++) {
    cuoptimConfig_t got = parse_ok(KERAS_DEFAULTS[i].json);
    cuoptimConfig_t want = init_config(KERAS_DEFAULTS[i].kind);
    /* Keras writes the float32 value of its learning-rate variable. */
    want.learning_rate.initial_learning_rate = (double)(float)want.learning_rate.initial_learning_rate;
    expect_config_equal(&got, &want, 1);
  }
}

Test(keras_json, from_json_reads_sgd_with_every_base_option) {
  cuoptimConfig_t c = parse_ok(KERAS_SGD);
  EXPECT_I(c.kind, CUOPTIM_SGD);
  EXPECT_S(c.name, "my_sgd");
  EXPECT_I(c.learning_rate.kind, CUOPTIM_SCHEDULE_CONSTANT);
  EXPECT_D(c.learning_rate.initial_learning_rate, 0.5);
  EXPECT_D(c.weight_decay, 0.01);
  EXPECT_D(c.clipnorm, 1.0);
  EXPECT_NONE(c.global_clipnorm);
  EXPECT_NONE(c.clipvalue);
  EXPECT_I(c.use_ema, 1);
  EXPECT_D(c.ema_momentum, 0.95);
  EXPECT_I(c.ema_overwrite_frequency, 10);
  EXPECT_NONE(c.loss_scale_factor);
  EXPECT_I(c.gradient_accumulation_steps, 4);
  EXPECT_D(c.momentum, 0.9);
  EXPECT_I(c.nesterov, 1);
  EXPECT_I(c.dynamic_loss_scale, 0);
}

Test(keras_json, from_json_reads_rmsprop) {
  cuoptimConfig_t c = parse_ok(KERAS_RMS);
  EXPECT_I(c.kind, CUOPTIM_RMSPROP);
  EXPECT_S(c.name, "rm_sprop");
  EXPECT_D(c.learning_rate.initial_learning_rate, (float)0.01);
  EXPECT_NONE(c.weight_decay);
  EXPECT_NONE(c.clipnorm);
  EXPECT_NONE(c.global_clipnorm);
  EXPECT_D(c.clipvalue, 0.5);
  EXPECT_I(c.use_ema, 0);
  EXPECT_D(c.ema_momentum, 0.99);
  EXPECT_I(c.ema_overwrite_frequency, 0);
  EXPECT_D(c.loss_scale_factor, 128.0);
  EXPECT_I(c.gradient_accumulation_steps, 0);
  EXPECT_D(c.rho, 0.8);
  EXPECT_D(c.momentum, 0.5);
  EXPECT_D(c.epsilon, 1e-6);
  EXPECT_I(c.centered, 1);
}

Test(keras_json, from_json_reads_adagrad) {
  cuoptimConfig_t c = parse_ok(KERAS_ADAGRAD);
  EXPECT_I(c.kind, CUOPTIM_ADAGRAD);
  EXPECT_S(c.name, "adagrad");
  EXPECT_D(c.learning_rate.initial_learning_rate, (float)0.2);
  EXPECT_D(c.global_clipnorm, 2.0);
  EXPECT_NONE(c.clipnorm);
  EXPECT_NONE(c.clipvalue);
  EXPECT_D(c.initial_accumulator_value, 0.3);
  EXPECT_D(c.epsilon, 1e-6);
}

Test(keras_json, from_json_reads_adadelta) {
  cuoptimConfig_t c = parse_ok(KERAS_ADADELTA);
  EXPECT_I(c.kind, CUOPTIM_ADADELTA);
  EXPECT_S(c.name, "adadelta");
  EXPECT_D(c.learning_rate.initial_learning_rate, 1.0);
  EXPECT_D(c.rho, 0.8);
  EXPECT_D(c.epsilon, 1e-6);
}

Test(keras_json, from_json_reads_adam_with_exponential_decay) {
  cuoptimConfig_t c = parse_ok(KERAS_ADAM);
  EXPECT_I(c.kind, CUOPTIM_ADAM);
  EXPECT_S(c.name, "adam");
  EXPECT_D(c.beta_1, 0.8);
  EXPECT_D(c.beta_2, 0.99);
  EXPECT_D(c.epsilon, 1e-8);
  EXPECT_I(c.amsgrad, 1);
  const cuoptimSchedule_t *s = &c.learning_rate;
  EXPECT_I(s->kind, CUOPTIM_SCHEDULE_EXPONENTIAL);
  EXPECT_D(s->initial_learning_rate, 0.1);
  EXPECT_D(s->decay_steps, 1000);
  EXPECT_D(s->decay_rate, 0.96);
  EXPECT_I(s->staircase, 1);
  EXPECT_S(s->name, "exp");
}

Test(keras_json, from_json_reads_adamw) {
  cuoptimConfig_t c = parse_ok(KERAS_ADAMW);
  EXPECT_I(c.kind, CUOPTIM_ADAMW);
  EXPECT_S(c.name, "adam_w");
  EXPECT_D(c.learning_rate.initial_learning_rate, 1.0);
  EXPECT_D(c.weight_decay, 0.5);
  EXPECT_D(c.beta_1, 0.85);
  EXPECT_D(c.beta_2, 0.999);
  EXPECT_D(c.epsilon, 2.0);
  EXPECT_I(c.amsgrad, 0);
}

Test(keras_json, from_json_reads_adamax) {
  cuoptimConfig_t c = parse_ok(KERAS_ADAMAX);
  EXPECT_I(c.kind, CUOPTIM_ADAMAX);
  EXPECT_S(c.name, "adamax");
  EXPECT_D(c.learning_rate.initial_learning_rate, (float)0.2);
  EXPECT_D(c.beta_1, 0.85);
  EXPECT_D(c.beta_2, 0.95);
  EXPECT_D(c.epsilon, 1e-6);
}

Test(keras_json, from_json_reads_nadam) {
  cuoptimConfig_t c = parse_ok(KERAS_NADAM);
  EXPECT_I(c.kind, CUOPTIM_NADAM);
  EXPECT_S(c.name, "nadam");
  EXPECT_D(c.learning_rate.initial_learning_rate, 0.5);
  EXPECT_D(c.beta_1, 0.5);
  EXPECT_D(c.beta_2, 0.67);
  EXPECT_D(c.epsilon, 1e-5);
}

Test(keras_json, from_json_reads_lion) {
  cuoptimConfig_t c = parse_ok(KERAS_LION);
  EXPECT_I(c.kind, CUOPTIM_LION);
  EXPECT_S(c.name, "lion");
  EXPECT_D(c.learning_rate.initial_learning_rate, (float)1e-4);
  EXPECT_D(c.weight_decay, 0.1);
  EXPECT_D(c.beta_1, 0.95);
  EXPECT_D(c.beta_2, 0.98);
}

Test(keras_json, from_json_reads_lamb) {
  cuoptimConfig_t c = parse_ok(KERAS_LAMB);
  EXPECT_I(c.kind, CUOPTIM_LAMB);
  EXPECT_S(c.name, "lamb");
  EXPECT_D(c.learning_rate.initial_learning_rate, (float)0.01);
  EXPECT_D(c.beta_1, 0.8);
  EXPECT_D(c.beta_2, 0.99);
  EXPECT_D(c.epsilon, 1e-6);
}

Test(keras_json, from_json_reads_ftrl) {
  cuoptimConfig_t c = parse_ok(KERAS_FTRL);
  EXPECT_I(c.kind, CUOPTIM_FTRL);
  EXPECT_S(c.name, "ftrl");
  EXPECT_D(c.learning_rate.initial_learning_rate, (float)0.05);
  EXPECT_D(c.learning_rate_power, -0.2);
  EXPECT_D(c.initial_accumulator_value, 0.4);
  EXPECT_D(c.l1_regularization_strength, 0.05);
  EXPECT_D(c.l2_regularization_strength, 0.15);
  EXPECT_D(c.l2_shrinkage_regularization_strength, 0.01);
  EXPECT_D(c.beta, 0.3);
}

Test(keras_json, from_json_reads_piecewise_constant_decay) {
  cuoptimConfig_t c = parse_ok(KERAS_S_PIECE);
  const cuoptimSchedule_t *s = &c.learning_rate;
  EXPECT_I(s->kind, CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT);
  EXPECT_I(s->num_boundaries, 2);
  EXPECT_D(s->boundaries[0], 100);
  EXPECT_D(s->boundaries[1], 200);
  EXPECT_D(s->values[0], 0.1);
  EXPECT_D(s->values[1], 0.01);
  EXPECT_D(s->values[2], 0.001);
  EXPECT_S(s->name, "PiecewiseConstant");
}

Test(keras_json, from_json_reads_polynomial_decay) {
  cuoptimConfig_t c = parse_ok(KERAS_S_POLY);
  const cuoptimSchedule_t *s = &c.learning_rate;
  EXPECT_S(c.name, "sgd_1");
  EXPECT_I(s->kind, CUOPTIM_SCHEDULE_POLYNOMIAL);
  EXPECT_D(s->initial_learning_rate, 0.1);
  EXPECT_D(s->decay_steps, 500);
  EXPECT_D(s->end_learning_rate, 0.001);
  EXPECT_D(s->power, 0.5);
  EXPECT_I(s->cycle, 1);
  EXPECT_S(s->name, "PolynomialDecay");
}

Test(keras_json, from_json_reads_inverse_time_decay) {
  cuoptimConfig_t c = parse_ok(KERAS_S_INV);
  const cuoptimSchedule_t *s = &c.learning_rate;
  EXPECT_I(s->kind, CUOPTIM_SCHEDULE_INVERSE_TIME);
  EXPECT_D(s->initial_learning_rate, 0.1);
  EXPECT_D(s->decay_steps, 10);
  EXPECT_D(s->decay_rate, 0.5);
  EXPECT_I(s->staircase, 1);
  EXPECT_S(s->name, "InverseTimeDecay");
}

Test(keras_json, from_json_reads_cosine_decay_without_warmup) {
  cuoptimConfig_t c = parse_ok(KERAS_S_COS);
  const cuoptimSchedule_t *s = &c.learning_rate;
  EXPECT_I(s->kind, CUOPTIM_SCHEDULE_COSINE);
  EXPECT_D(s->initial_learning_rate, 0.1);
  EXPECT_D(s->decay_steps, 1000);
  EXPECT_D(s->alpha, 0.1);
  EXPECT_NONE(s->warmup_target);
  EXPECT_D(s->warmup_steps, 0);
  EXPECT_S(s->name, "CosineDecay");
}

Test(keras_json, from_json_reads_cosine_decay_with_warmup) {
  cuoptimConfig_t c = parse_ok(KERAS_S_COSW);
  const cuoptimSchedule_t *s = &c.learning_rate;
  EXPECT_I(s->kind, CUOPTIM_SCHEDULE_COSINE);
  EXPECT_D(s->initial_learning_rate, 0.0);
  EXPECT_D(s->decay_steps, 1000);
  EXPECT_D(s->alpha, 0.01);
  EXPECT_D(s->warmup_target, 0.2);
  EXPECT_D(s->warmup_steps, 100);
}

Test(keras_json, from_json_reads_cosine_decay_restarts) {
  cuoptimConfig_t c = parse_ok(KERAS_S_COSR);
  const cuoptimSchedule_t *s = &c.learning_rate;
  EXPECT_I(s->kind, CUOPTIM_SCHEDULE_COSINE_RESTARTS);
  EXPECT_D(s->initial_learning_rate, 0.1);
  EXPECT_D(s->decay_steps, 1000); /* first_decay_steps */
  EXPECT_D(s->t_mul, 1.5);
  EXPECT_D(s->m_mul, 0.9);
  EXPECT_D(s->alpha, 0.05);
  EXPECT_S(s->name, "SGDRDecay");
}

Test(keras_json, from_json_reads_loss_scale_optimizer) {
  cuoptimConfig_t c = parse_ok(KERAS_LSO);
  EXPECT_I(c.kind, CUOPTIM_LION);
  EXPECT_S(c.name, "lion_1");
  EXPECT_I(c.dynamic_loss_scale, 1);
  EXPECT_D(c.initial_scale, 1024.0);
  EXPECT_I(c.dynamic_growth_steps, 10);
  EXPECT_S(c.loss_scale_name, "lso");
  EXPECT_NONE(c.loss_scale_factor);
  EXPECT_D(c.beta_1, 0.9);
  EXPECT_D(c.beta_2, 0.99);
  EXPECT_I(c.learning_rate.kind, CUOPTIM_SCHEDULE_COSINE);
  EXPECT_D(c.learning_rate.initial_learning_rate, 0.01);
  EXPECT_D(c.learning_rate.decay_steps, 200);
}

Test(keras_json, from_json_reads_default_loss_scale_optimizer) {
  cuoptimConfig_t got = parse_ok(KERAS_DEFAULT_LSO_ADAM);
  cuoptimConfig_t want = init_config(CUOPTIM_ADAM);
  want.learning_rate.initial_learning_rate = (double)(float)0.001;
  strcpy(want.name, "adam_1");
  want.dynamic_loss_scale = 1;
  want.initial_scale = 32768.0;
  want.dynamic_growth_steps = 2000;
  strcpy(want.loss_scale_name, "loss_scale_optimizer");
  expect_config_equal(&got, &want, 1);
}

/* ---------------------------------------------------------------------------------------------
 * Writing what Keras writes; round trips
 * ------------------------------------------------------------------------------------------- */
Test(keras_json, to_json_reproduces_keras_text_byte_for_byte) {
  for (size_t i = 0; i < NUM_KERAS_TEXTS; i++) {
    cuoptimConfig_t c = parse_ok(ALL_KERAS_TEXTS[i]);
    char *text = to_json(&c);
    cr_expect_str_eq(text, ALL_KERAS_TEXTS[i], "text %zu differs:\n  ours:  %s\n  keras: %s", i, text,
                     ALL_KERAS_TEXTS[i]);
    cuoptimConfig_t back = parse_ok(text);
    expect_config_equal(&back, &c, 1);
    free(text);
  }
}

Test(keras_json, to_json_matches_keras_for_defaults_of_every_class) {
  for (size_t i = 0; i < NUM_KERAS_DEFAULTS; i++) {
    cuoptimConfig_t c = init_config(KERAS_DEFAULTS[i].kind);
    c.learning_rate.initial_learning_rate = (double)(float)c.learning_rate.initial_learning_rate;
    char *text = to_json(&c);
    cr_expect_str_eq(text, KERAS_DEFAULTS[i].json, "ours:  %s\nkeras: %s", text, KERAS_DEFAULTS[i].json);
    free(text);
  }
}

/* A config with every Keras field of `kind` away from its default. */
static cuoptimConfig_t busy_config(cuoptimOptimizerKind_t kind, cuoptimScheduleKind_t schedule, int variant) {
  cuoptimConfig_t c = init_config(kind);
  snprintf(c.name, sizeof c.name, "opt %d/%d \"q\" \\ \xc3\xa9 \xf0\x9f\x98\x80 \t", (int)kind, variant);
  cr_assert_eq(cuoptimScheduleInit(&c.learning_rate, schedule), CUOPTIM_STATUS_SUCCESS);
  cuoptimSchedule_t *s = &c.learning_rate;
  s->initial_learning_rate = schedule == CUOPTIM_SCHEDULE_CONSTANT ? 0.01 : 0.3;
  s->decay_steps = variant ? 37.5 : 1000;
  s->decay_rate = 0.25;
  s->staircase = variant;
  s->end_learning_rate = 1e-5;
  s->power = 2.0;
  s->cycle = !variant;
  s->alpha = 0.125;
  s->warmup_target = variant ? 0.5 : CUOPTIM_NONE;
  s->warmup_steps = variant ? 10 : 0;
  s->t_mul = 3.0;
  s->m_mul = 0.75;
  if (schedule == CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT) {
    s->num_boundaries = variant ? CUOPTIM_MAX_BOUNDARIES : 3;
    for (int i = 0; i < s->num_boundaries; i++) s->boundaries[i] = 10.0 * (i + 1) + (variant ? 0.5 : 0.0);
    for (int i = 0; i <= s->num_boundaries; i++) s->values[i] = 1.0 / (i + 3);
  }
  if (schedule != CUOPTIM_SCHEDULE_CONSTANT) snprintf(s->name, sizeof s->name, "sched%d", variant);
  c.weight_decay = 0.004 + variant;
  if (variant % 3 == 0) c.clipnorm = 1.5;
  if (variant % 3 == 1) c.clipvalue = 0.25;
  if (variant % 3 == 2) c.global_clipnorm = 4.0;
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = variant ? 7 : 0;
  c.gradient_accumulation_steps = variant ? 0 : 3;
  c.beta_1 = 0.7;
  c.beta_2 = 0.77;
  c.epsilon = 3e-9;
  c.rho = 0.6;
  c.momentum = 0.3;
  c.nesterov = 1;
  c.centered = 1;
  c.amsgrad = 1;
  c.initial_accumulator_value = 0.6;
  c.learning_rate_power = -0.7;
  c.l1_regularization_strength = 0.1;
  c.l2_regularization_strength = 0.2;
  c.l2_shrinkage_regularization_strength = 0.3;
  c.beta = 0.4;
  c.beta_2_decay = -0.65;
  c.epsilon_1 = 1e-15;
  c.epsilon_2 = 1e-4;
  c.clip_threshold = 0.9;
  c.relative_step = variant;
  if (variant) {
    c.dynamic_loss_scale = 1;
    c.initial_scale = 512.0;
    c.dynamic_growth_steps = 77;
    strcpy(c.loss_scale_name, "scaler");
  } else {
    c.loss_scale_factor = 64.0;
  }
  return c;
}

Test(keras_json, round_trip_config_json_config_for_every_class_and_schedule) {
  for (int kind = 0; kind < CUOPTIM_OPTIMIZER_COUNT; kind++) {
    if (!cuoptimOptimizerName((cuoptimOptimizerKind_t)kind)) continue; /* a value no kind has */
    for (int schedule = CUOPTIM_SCHEDULE_CONSTANT; schedule <= CUOPTIM_SCHEDULE_COSINE_RESTARTS; schedule++) {
      for (int variant = 0; variant < 2; variant++) {
        cuoptimConfig_t c = busy_config((cuoptimOptimizerKind_t)kind, (cuoptimScheduleKind_t)schedule, variant);
        cr_assert_eq(cuoptimConfigValidate(&c), CUOPTIM_STATUS_SUCCESS, "%s", last_message());
        char *text = to_json(&c);
        cuoptimConfig_t back = parse_ok(text);
        expect_config_equal(&back, &c, 0);
        /* Written again, the text is the same. */
        char *again = to_json(&back);
        cr_expect_str_eq(again, text);
        free(again);
        free(text);
      }
    }
  }
}

Test(keras_json, to_json_writes_loss_scale_optimizer_around_the_inner_optimizer) {
  cuoptimConfig_t c = init_config(CUOPTIM_ADAM);
  c.learning_rate.initial_learning_rate = (double)(float)0.001;
  strcpy(c.name, "adam_1");
  c.dynamic_loss_scale = 1;
  strcpy(c.loss_scale_name, "");
  char *text = to_json(&c);
  /* An empty loss_scale_name is written as Keras's default name. */
  cr_expect_str_eq(text, KERAS_DEFAULT_LSO_ADAM);
  free(text);
}

Test(keras_json, to_json_writes_keras_default_names_for_empty_names) {
  cuoptimConfig_t c = init_config(CUOPTIM_RMSPROP);
  c.name[0] = '\0';
  cr_assert_eq(cuoptimScheduleInit(&c.learning_rate, CUOPTIM_SCHEDULE_COSINE_RESTARTS), CUOPTIM_STATUS_SUCCESS);
  char *text = to_json(&c);
  cr_expect(strstr(text, "{\"name\": \"rm_sprop\", ") != NULL, "%s", text);
  cr_expect(strstr(text, "\"alpha\": 0.0, \"name\": \"SGDRDecay\"}") != NULL, "%s", text);
  free(text);
  static const struct {
    cuoptimScheduleKind_t kind;
    const char *name;
  } names[] = {
      {CUOPTIM_SCHEDULE_EXPONENTIAL, "\"name\": \"ExponentialDecay\""},
      {CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT, "\"name\": \"PiecewiseConstant\""},
      {CUOPTIM_SCHEDULE_POLYNOMIAL, "\"name\": \"PolynomialDecay\""},
      {CUOPTIM_SCHEDULE_INVERSE_TIME, "\"name\": \"InverseTimeDecay\""},
      {CUOPTIM_SCHEDULE_COSINE, "\"name\": \"CosineDecay\""},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    cr_assert_eq(cuoptimScheduleInit(&c.learning_rate, names[i].kind), CUOPTIM_STATUS_SUCCESS);
    text = to_json(&c);
    cr_expect(strstr(text, names[i].name) != NULL, "%s lacks %s", text, names[i].name);
    free(text);
  }
}

Test(keras_json, to_json_writes_step_counts_as_integers) {
  cuoptimConfig_t c = init_config(CUOPTIM_SGD);
  c.use_ema = 1;
  c.ema_overwrite_frequency = 5;
  c.gradient_accumulation_steps = 8;
  c.dynamic_loss_scale = 1;
  c.initial_scale = 1024;
  c.dynamic_growth_steps = 100;
  cr_assert_eq(cuoptimScheduleInit(&c.learning_rate, CUOPTIM_SCHEDULE_COSINE), CUOPTIM_STATUS_SUCCESS);
  c.learning_rate.decay_steps = 1000;
  c.learning_rate.warmup_target = 0.1;
  c.learning_rate.warmup_steps = 12.5;
  char *text = to_json(&c);
  cr_expect(strstr(text, "\"decay_steps\": 1000, ") != NULL, "%s", text);
  cr_expect(strstr(text, "\"warmup_steps\": 12.5}") != NULL, "%s", text);
  cr_expect(strstr(text, "\"ema_overwrite_frequency\": 5, ") != NULL, "%s", text);
  cr_expect(strstr(text, "\"gradient_accumulation_steps\": 8, ") != NULL, "%s", text);
  cr_expect(strstr(text, "\"initial_scale\": 1024.0, \"dynamic_growth_steps\": 100}") != NULL, "%s", text);
  free(text);

  cr_assert_eq(cuoptimScheduleInit(&c.learning_rate, CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT), CUOPTIM_STATUS_SUCCESS);
  c.learning_rate.num_boundaries = 2;
  c.learning_rate.boundaries[0] = 100;
  c.learning_rate.boundaries[1] = 250.5;
  c.learning_rate.values[0] = 1;
  c.learning_rate.values[1] = 0.5;
  c.learning_rate.values[2] = 0.25;
  text = to_json(&c);
  cr_expect(strstr(text, "\"boundaries\": [100, 250.5], \"values\": [1.0, 0.5, 0.25]") != NULL, "%s", text);
  free(text);
}

Test(keras_json, to_json_formats_floats_like_python_repr) {
  static const struct {
    double value;
    const char *text;
  } cases[] = {
      {1e-7, "1e-07"},
      {1e16, "1e+16"},
      {1e15, "1000000000000000.0"},
      {0.0001, "0.0001"},
      {1e-5, "1e-05"},
      {0.1, "0.1"},
      {123.456, "123.456"},
      {-0.5, "-0.5"},
      {1.5e-10, "1.5e-10"},
      {2.5e20, "2.5e+20"},
      {5e-324, "5e-324"},
      {1.7976931348623157e308, "1.7976931348623157e+308"},
      {2.0 / 3.0, "0.6666666666666666"},
      {100.0, "100.0"},
      {0.0, "0.0"},
      {(double)0.001f, "0.0010000000474974513"},
  };
  /* Written through ema_momentum, which takes any number without use_ema (a learning rate must stay
   * finite in float32). */
  cuoptimConfig_t c = init_config(CUOPTIM_ADAM);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    c.ema_momentum = cases[i].value;
    char *text = to_json(&c);
    char want[64];
    snprintf(want, sizeof want, "\"ema_momentum\": %s, ", cases[i].text);
    cr_expect(strstr(text, want) != NULL, "%.17g: %s lacks %s", cases[i].value, text, want);
    cuoptimConfig_t back = parse_ok(text);
    EXPECT_D(back.ema_momentum, cases[i].value);
    free(text);
  }
}

Test(keras_json, to_json_escapes_names_like_python_json_dumps) {
  cuoptimConfig_t c = init_config(CUOPTIM_ADAM);
  /* json.dumps("q\"uote\\ tab\t é 😀 \x01\x7f") */
  const char *name = "q\"uote\\ tab\t \xc3\xa9 \xf0\x9f\x98\x80 \x01\x7f";
  strcpy(c.name, name);
  char *text = to_json(&c);
  const char *want = "{\"name\": \"q\\\"uote\\\\ tab\\t \\u00e9 \\ud83d\\ude00 \\u0001\\u007f\", ";
  cr_expect(strstr(text, want) != NULL, "%s lacks %s", text, want);
  cuoptimConfig_t back = parse_ok(text);
  EXPECT_S(back.name, name);
  free(text);
}

Test(keras_json, from_json_reads_python_infinity) {
  /* Python's json writes float("inf") as Infinity; Keras accepts decay_steps=inf. */
  char *json = replace_once(KERAS_S_POLY, "\"decay_steps\": 500", "\"decay_steps\": Infinity");
  cuoptimConfig_t c = parse_ok(json);
  cr_expect(isinf(c.learning_rate.decay_steps) && c.learning_rate.decay_steps > 0);
  char *text = to_json(&c);
  cr_expect(strstr(text, "\"decay_steps\": Infinity, ") != NULL, "%s", text);
  free(text);
  free(json);
  /* Not inside strings. */
  json = replace_once(KERAS_S_POLY, "\"name\": \"sgd_1\"", "\"name\": \"Infinity\"");
  c = parse_ok(json);
  EXPECT_S(c.name, "Infinity");
  free(json);
}

/* ---------------------------------------------------------------------------------------------
 * Forms Keras accepts besides its own output
 * ------------------------------------------------------------------------------------------- */
Test(keras_json, from_json_accepts_legacy_form_and_missing_keys) {
  /* No module / registered_name; keys left out keep Keras's defaults. */
  cuoptimConfig_t c = parse_ok("{\"class_name\": \"Ftrl\", \"config\": {\"learning_rate\": 0.5}}");
  cuoptimConfig_t want = init_config(CUOPTIM_FTRL);
  want.learning_rate.initial_learning_rate = 0.5;
  expect_config_equal(&c, &want, 1);
  c = parse_ok("{\"class_name\": \"Lamb\", \"config\": {}, \"module\": null, \"registered_name\": null}");
  want = init_config(CUOPTIM_LAMB);
  expect_config_equal(&c, &want, 1);
}

Test(keras_json, from_json_accepts_lowercase_class_names_like_keras_deserialize) {
  cuoptimConfig_t c = parse_ok("{\"class_name\": \"adamw\", \"config\": {}}");
  EXPECT_I(c.kind, CUOPTIM_ADAMW);
  c = parse_ok("{\"class_name\": \"rmsprop\", \"config\": {}}");
  EXPECT_I(c.kind, CUOPTIM_RMSPROP);
}

Test(keras_json, from_json_ignores_legacy_decay_key) {
  /* Keras 3 pops `decay` and ignores it. */
  char *json = replace_once(KERAS_DEFAULT_ADAM, "\"amsgrad\": false", "\"amsgrad\": false, \"decay\": 0.0");
  cuoptimConfig_t c = parse_ok(json);
  EXPECT_I(c.kind, CUOPTIM_ADAM);
  free(json);
}

Test(keras_json, from_json_null_names_mean_keras_defaults) {
  char *json = replace_once(KERAS_ADAM, "\"name\": \"adam\"", "\"name\": null");
  char *json2 = replace_once(json, "\"name\": \"exp\"", "\"name\": null");
  cuoptimConfig_t c = parse_ok(json2);
  EXPECT_S(c.name, "adam");
  EXPECT_S(c.learning_rate.name, "ExponentialDecay");
  free(json2);
  free(json);
  json = replace_once(KERAS_LSO, "\"name\": \"lso\"", "\"name\": null");
  c = parse_ok(json);
  EXPECT_S(c.loss_scale_name, "loss_scale_optimizer");
  free(json);
}

Test(keras_json, from_json_accepts_loss_scale_optimizer_legacy_keys_at_defaults) {
  /* LossScaleOptimizer's constructor accepts dynamic=True and the base options at their defaults. */
  char *json = replace_once(KERAS_LSO, "\"dynamic_growth_steps\": 10}",
                            "\"dynamic_growth_steps\": 10, \"dynamic\": true, \"weight_decay\": null, "
                            "\"clipnorm\": null, \"use_ema\": false, \"ema_momentum\": 0.99, "
                            "\"gradient_accumulation_steps\": null}");
  cuoptimConfig_t c = parse_ok(json);
  EXPECT_I(c.dynamic_loss_scale, 1);
  EXPECT_I(c.dynamic_growth_steps, 10);
  free(json);
}

Test(keras_json, from_json_loss_scale_optimizer_clears_inner_loss_scale_factor) {
  /* LossScaleOptimizer sets inner_optimizer.loss_scale_factor = None. */
  char *json = replace_once(KERAS_LSO, "\"loss_scale_factor\": null", "\"loss_scale_factor\": 128.0");
  cuoptimConfig_t c = parse_ok(json);
  EXPECT_NONE(c.loss_scale_factor);
  free(json);
}

/* ---------------------------------------------------------------------------------------------
 * Errors of cuoptimConfigFromKerasJSON
 * ------------------------------------------------------------------------------------------- */
Test(keras_json, from_json_rejects_null_config) {
  cr_expect_eq(cuoptimConfigFromKerasJSON(NULL, KERAS_DEFAULT_ADAM), CUOPTIM_STATUS_NULL_POINTER);
  cr_expect(strstr(last_message(), "config") != NULL, "%s", last_message());
}

Test(keras_json, from_json_rejects_null_json) {
  expect_parse_error(NULL, CUOPTIM_STATUS_NULL_POINTER, "json");
}

Test(keras_json, from_json_rejects_text_that_is_not_json) {
  static const char *const texts[] = {
      "", "   ", "{", "not json", "{\"class_name\": \"Adam\", \"config\": {},}", "{} {}",
      "{\"class_name\": \"Adam\", \"config\": {\"beta_1\": NaN}}", "{'class_name': 'Adam'}",
  };
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    expect_parse_error(texts[i], CUOPTIM_STATUS_PARSE_ERROR, "not valid JSON");
  }
}

Test(keras_json, from_json_rejects_json_that_is_not_an_object) {
  static const char *const texts[] = {"[]", "42", "\"Adam\"", "null", "true"};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    expect_parse_error(texts[i], CUOPTIM_STATUS_INVALID_VALUE, "expected an object");
  }
}

Test(keras_json, from_json_rejects_unknown_class) {
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"class_name\": \"Adam\"", "\"class_name\": \"Shampoo\"",
                    CUOPTIM_STATUS_INVALID_VALUE, "class_name: unknown optimizer class \"Shampoo\"");
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"class_name\": \"Adam\"", "\"class_name\": \"MyOptimizer\"",
                    CUOPTIM_STATUS_INVALID_VALUE, "\"MyOptimizer\"");
  expect_parse_error("{\"class_name\": \"ExponentialDecay\", \"config\": {}}", CUOPTIM_STATUS_INVALID_VALUE,
                     "is a learning-rate schedule, not an optimizer");
  expect_edit_error(KERAS_ADAM, "\"class_name\": \"ExponentialDecay\"", "\"class_name\": \"WarmUpSchedule\"",
                    CUOPTIM_STATUS_INVALID_VALUE,
                    "config.learning_rate.class_name: unknown learning-rate schedule class \"WarmUpSchedule\"");
  /* A user class registered under a package, or from a module outside Keras, shares only the name. */
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"registered_name\": null}", "\"registered_name\": \"my_package>Adam\"}",
                    CUOPTIM_STATUS_INVALID_VALUE, "registered_name = \"my_package>Adam\"");
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"module\": \"keras.optimizers\"", "\"module\": \"my_package.optim\"",
                    CUOPTIM_STATUS_INVALID_VALUE, "module = \"my_package.optim\"");
}

Test(keras_json, from_json_rejects_unknown_key) {
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"amsgrad\": false", "\"amsgrad\": false, \"foo\": 1",
                    CUOPTIM_STATUS_INVALID_VALUE, "config.foo: unknown key for Adam");
  /* A key of another class: Keras raises too. */
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"amsgrad\": false", "\"amsgrad\": false, \"nesterov\": true",
                    CUOPTIM_STATUS_INVALID_VALUE, "config.nesterov: unknown key for Adam");
  expect_edit_error(KERAS_DEFAULT_LION, "\"beta_2\": 0.99", "\"beta_2\": 0.99, \"epsilon\": 1e-07",
                    CUOPTIM_STATUS_INVALID_VALUE, "config.epsilon: unknown key for Lion");
  /* Written by tf.keras 2.x, rejected by Keras 3's constructor ("Argument(s) not recognized"). */
  expect_edit_error(KERAS_DEFAULT_SGD, "\"nesterov\": false", "\"nesterov\": false, \"is_legacy_optimizer\": false",
                    CUOPTIM_STATUS_INVALID_VALUE, "config.is_legacy_optimizer: unknown key for SGD");
  expect_edit_error(KERAS_ADAM, "\"staircase\": true", "\"staircase\": true, \"foo\": 1",
                    CUOPTIM_STATUS_INVALID_VALUE, "config.learning_rate.config.foo: unknown key for ExponentialDecay");
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"registered_name\": null}", "\"registered_name\": null, \"extra\": 1}",
                    CUOPTIM_STATUS_INVALID_VALUE, "extra: unknown key");
  expect_edit_error(KERAS_LSO, "\"dynamic_growth_steps\": 10}", "\"dynamic_growth_steps\": 10, \"foo\": 1}",
                    CUOPTIM_STATUS_INVALID_VALUE, "config.foo: unknown key for LossScaleOptimizer");
  expect_edit_error(KERAS_LSO, "\"beta_2\": 0.99}", "\"beta_2\": 0.99, \"foo\": 2}", CUOPTIM_STATUS_INVALID_VALUE,
                    "config.inner_optimizer.config.foo: unknown key for Lion");
}

Test(keras_json, from_json_rejects_wrong_types_naming_the_key) {
  static const struct {
    const char *src;
    const char *from;
    const char *to;
    const char *message;
  } cases[] = {
      {KERAS_DEFAULT_ADAM, "\"beta_1\": 0.9", "\"beta_1\": \"0.9\"",
       "cuoptimConfigFromKerasJSON: config.beta_1: expected a number, got a string"},
      {KERAS_DEFAULT_ADAM, "\"beta_1\": 0.9", "\"beta_1\": null", "config.beta_1: expected a number, got null"},
      {KERAS_DEFAULT_ADAM, "\"amsgrad\": false", "\"amsgrad\": 1", "config.amsgrad: expected a boolean, got a number"},
      {KERAS_DEFAULT_ADAM, "\"use_ema\": false", "\"use_ema\": \"no\"", "config.use_ema: expected a boolean"},
      {KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", "\"name\": 5", "config.name: expected a string or null, got a number"},
      {KERAS_DEFAULT_ADAM, "\"learning_rate\": 0.0010000000474974513", "\"learning_rate\": \"0.001\"",
       "config.learning_rate: expected a number or a serialized learning-rate schedule, got a string"},
      {KERAS_DEFAULT_ADAM, "\"learning_rate\": 0.0010000000474974513", "\"learning_rate\": [0.001]",
       "config.learning_rate: expected a number or a serialized learning-rate schedule, got an array"},
      {KERAS_DEFAULT_ADAM, "\"weight_decay\": null", "\"weight_decay\": true",
       "config.weight_decay: expected a number or null, got a boolean"},
      {KERAS_DEFAULT_ADAM, "\"ema_overwrite_frequency\": null", "\"ema_overwrite_frequency\": 2.5",
       "config.ema_overwrite_frequency = 2.5: expected an integer"},
      {KERAS_DEFAULT_ADAM, "\"gradient_accumulation_steps\": null", "\"gradient_accumulation_steps\": \"4\"",
       "config.gradient_accumulation_steps: expected an integer or null, got a string"},
      {KERAS_DEFAULT_ADAM, "\"class_name\": \"Adam\"", "\"class_name\": 4", "class_name: expected a string"},
      {KERAS_ADAM, "\"decay_steps\": 1000", "\"decay_steps\": \"1000\"",
       "config.learning_rate.config.decay_steps: expected a number, got a string"},
      {KERAS_ADAM, "\"staircase\": true", "\"staircase\": \"yes\"",
       "config.learning_rate.config.staircase: expected a boolean, got a string"},
      {KERAS_S_PIECE, "[100, 200]", "[100, \"200\"]",
       "config.learning_rate.config.boundaries[1]: expected a number, got a string"},
      {KERAS_S_PIECE, "[0.1, 0.01, 0.001]", "{\"a\": 1}",
       "config.learning_rate.config.values: expected an array of numbers, got an object"},
      {KERAS_S_COSW, "\"warmup_target\": 0.2", "\"warmup_target\": false",
       "config.learning_rate.config.warmup_target: expected a number or null, got a boolean"},
      {KERAS_LSO, "\"initial_scale\": 1024.0", "\"initial_scale\": \"big\"",
       "config.initial_scale: expected a number, got a string"},
      {KERAS_LSO, "\"dynamic_growth_steps\": 10", "\"dynamic_growth_steps\": 2.5",
       "config.dynamic_growth_steps = 2.5: expected an integer"},
      {KERAS_LSO, "\"dynamic_growth_steps\": 10", "\"dynamic_growth_steps\": null",
       "config.dynamic_growth_steps: expected an integer, got null"},
      {KERAS_DEFAULT_LSO_ADAM, "\"initial_scale\": 32768.0", "\"initial_scale\": 32768.0, \"dynamic\": 1",
       "config.dynamic: expected a boolean, got a number"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    expect_edit_error(cases[i].src, cases[i].from, cases[i].to, CUOPTIM_STATUS_INVALID_VALUE, cases[i].message);
  }
  expect_parse_error("{\"class_name\": \"Adam\", \"config\": []}", CUOPTIM_STATUS_INVALID_VALUE,
                     "config: expected an object, got an array");
  expect_parse_error("{\"class_name\": \"LossScaleOptimizer\", \"config\": {\"inner_optimizer\": 5}}",
                     CUOPTIM_STATUS_INVALID_VALUE, "config.inner_optimizer: expected an object");
}

Test(keras_json, from_json_rejects_values_keras_rejects) {
  static const struct {
    const char *src;
    const char *from;
    const char *to;
    const char *message;
  } cases[] = {
      /* SGD: `momentum` must be a float between [0, 1]. */
      {KERAS_DEFAULT_SGD, "\"momentum\": 0.0", "\"momentum\": 1.5", "momentum"},
      /* Only one of clipnorm, clipvalue and global_clipnorm. */
      {KERAS_DEFAULT_ADAM, "\"clipnorm\": null, \"global_clipnorm\": null, \"clipvalue\": null",
       "\"clipnorm\": 1.0, \"global_clipnorm\": null, \"clipvalue\": 0.5", "clipvalue"},
      /* gradient_accumulation_steps must be an integer >= 2. */
      {KERAS_DEFAULT_ADAM, "\"gradient_accumulation_steps\": null", "\"gradient_accumulation_steps\": 1",
       "gradient_accumulation_steps"},
      /* use_ema: ema_momentum in [0, 1]. */
      {KERAS_DEFAULT_ADAM, "\"use_ema\": false, \"ema_momentum\": 0.99", "\"use_ema\": true, \"ema_momentum\": 1.5",
       "ema_momentum"},
      /* AdamW: weight_decay must be a float. */
      {KERAS_DEFAULT_ADAMW, "\"weight_decay\": 0.004", "\"weight_decay\": null", "weight_decay"},
      /* Lion: beta_1 in (0, 1]. */
      {KERAS_DEFAULT_LION, "\"beta_1\": 0.9", "\"beta_1\": 0.0", "beta_1"},
      /* Ftrl: the strengths are >= 0, learning_rate_power <= 0. */
      {KERAS_DEFAULT_FTRL, "\"l1_regularization_strength\": 0.0", "\"l1_regularization_strength\": -1.0",
       "l1_regularization_strength"},
      {KERAS_DEFAULT_FTRL, "\"learning_rate_power\": -0.5", "\"learning_rate_power\": 0.5", "learning_rate_power"},
      /* Schedules: decay_steps > 0. */
      {KERAS_ADAM, "\"decay_steps\": 1000", "\"decay_steps\": 0", "decay_steps"},
      {KERAS_S_COSR, "\"first_decay_steps\": 1000", "\"first_decay_steps\": -5", "decay_steps"},
      /* PiecewiseConstantDecay: one value more than boundaries. */
      {KERAS_S_PIECE, "[0.1, 0.01, 0.001]", "[0.1, 0.01]",
       "config.learning_rate.config.values: 2 values for 2 boundaries"},
      /* Required constructor arguments. */
      {KERAS_ADAM, "\"decay_rate\": 0.96, ", "", "config.learning_rate.config.decay_rate: missing"},
      {KERAS_S_COSR, "\"first_decay_steps\": 1000, ", "", "config.learning_rate.config.first_decay_steps: missing"},
      /* LossScaleOptimizer: dynamic=False is gone; base options belong to the inner optimizer. */
      {KERAS_LSO, "\"dynamic_growth_steps\": 10}", "\"dynamic_growth_steps\": 10, \"dynamic\": false}",
       "config.dynamic = false"},
      {KERAS_LSO, "\"dynamic_growth_steps\": 10}", "\"dynamic_growth_steps\": 10, \"clipnorm\": 1.0}",
       "LossScaleOptimizer does not support `clipnorm`"},
      {KERAS_LSO, "\"dynamic_growth_steps\": 10", "\"dynamic_growth_steps\": 0", "dynamic_growth_steps"},
      {KERAS_LSO, "\"initial_scale\": 1024.0", "\"initial_scale\": -1.0", "initial_scale"},
      /* Envelopes. */
      {KERAS_DEFAULT_ADAM, "\"class_name\": \"Adam\", ", "", "class_name: missing"},
      {KERAS_DEFAULT_ADAGRAD, "\"config\": {\"name\": \"adagrad\", \"learning_rate\": 0.0010000000474974513, ",
       "\"cfg\": {\"name\": \"adagrad\", \"learning_rate\": 0.0010000000474974513, ", "cfg: unknown key"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    expect_edit_error(cases[i].src, cases[i].from, cases[i].to, CUOPTIM_STATUS_INVALID_VALUE, cases[i].message);
  }
  expect_parse_error("{\"class_name\": \"Adam\"}", CUOPTIM_STATUS_INVALID_VALUE, "config: missing");
  expect_parse_error("{\"class_name\": \"LossScaleOptimizer\", \"config\": {\"initial_scale\": 2.0}}",
                     CUOPTIM_STATUS_INVALID_VALUE, "config.inner_optimizer: missing");
  /* A LossScaleOptimizer inside a LossScaleOptimizer. */
  char *nested = replace_once(KERAS_DEFAULT_LSO_ADAM, "\"inner_optimizer\": {\"module\": \"keras.optimizers\", "
                                                      "\"class_name\": \"Adam\", ",
                              "\"inner_optimizer\": {\"module\": \"keras.optimizers\", "
                              "\"class_name\": \"LossScaleOptimizer\", ");
  expect_parse_error(nested, CUOPTIM_STATUS_INVALID_VALUE, "config.inner_optimizer.class_name");
  free(nested);
  /* Names longer than CUOPTIM_MAX_NAME - 1 bytes. */
  char long_name[CUOPTIM_MAX_NAME + 16];
  memset(long_name, 'n', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';
  char to[CUOPTIM_MAX_NAME + 64];
  snprintf(to, sizeof to, "\"name\": \"%s\"", long_name);
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", to, CUOPTIM_STATUS_INVALID_VALUE, "config.name");
  /* A 127-byte name fits. */
  long_name[CUOPTIM_MAX_NAME - 1] = '\0';
  snprintf(to, sizeof to, "\"name\": \"%s\"", long_name);
  char *json = replace_once(KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", to);
  cuoptimConfig_t c = parse_ok(json);
  EXPECT_S(c.name, long_name);
  free(json);
  /* More boundaries than CUOPTIM_MAX_BOUNDARIES. */
  char boundaries[1024] = "[", values[1024] = "[";
  for (int i = 0; i <= CUOPTIM_MAX_BOUNDARIES; i++) {
    snprintf(boundaries + strlen(boundaries), sizeof boundaries - strlen(boundaries), "%s%d", i ? ", " : "", i + 1);
  }
  for (int i = 0; i <= CUOPTIM_MAX_BOUNDARIES + 1; i++) {
    snprintf(values + strlen(values), sizeof values - strlen(values), "%s0.5", i ? ", " : "");
  }
  strcat(boundaries, "]");
  strcat(values, "]");
  char *b = replace_once(KERAS_S_PIECE, "[100, 200]", boundaries);
  char *bv = replace_once(b, "[0.1, 0.01, 0.001]", values);
  expect_parse_error(bv, CUOPTIM_STATUS_INVALID_VALUE, "config.learning_rate.config.boundaries: 65 elements");
  free(bv);
  free(b);
}

Test(keras_json, from_json_rejects_callable_learning_rate) {
  expect_parse_error(KERAS_CALLABLE_LAMBDA, CUOPTIM_STATUS_NOT_SUPPORTED, "config.learning_rate: a learning rate "
                                                                          "given as a serialized Python callable");
  expect_parse_error(KERAS_CALLABLE_FUNCTION, CUOPTIM_STATUS_NOT_SUPPORTED, "config.learning_rate");
}

Test(keras_json, from_json_leaves_config_untouched_after_failure) {
  cuoptimConfig_t c = parse_ok(KERAS_SGD);
  cuoptimConfig_t before;
  memcpy(&before, &c, sizeof c);
  /* Fails in parsing, in the LossScaleOptimizer after a good inner optimizer, and in validation. */
  char *bad_lso = replace_once(KERAS_LSO, "\"dynamic_growth_steps\": 10", "\"dynamic_growth_steps\": \"x\"");
  char *bad_value = replace_once(KERAS_DEFAULT_SGD, "\"momentum\": 0.0", "\"momentum\": 1.5");
  const char *const texts[] = {"{", KERAS_CALLABLE_LAMBDA, bad_lso, bad_value};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    cr_expect_neq(cuoptimConfigFromKerasJSON(&c, texts[i]), CUOPTIM_STATUS_SUCCESS);
    cr_expect(memcmp(&c, &before, sizeof c) == 0, "text %zu changed *config", i);
  }
  free(bad_value);
  free(bad_lso);
}

/* ---------------------------------------------------------------------------------------------
 * Errors and the buffer contract of cuoptimConfigToKerasJSON
 * ------------------------------------------------------------------------------------------- */
Test(keras_json, to_json_rejects_null_config) {
  char buffer[16];
  size_t length = 99;
  cr_expect_eq(cuoptimConfigToKerasJSON(NULL, buffer, sizeof buffer, &length), CUOPTIM_STATUS_NULL_POINTER);
  cr_expect(strstr(last_message(), "cuoptimConfigToKerasJSON") != NULL, "%s", last_message());
  cr_expect_eq(length, 99);
}

Test(keras_json, to_json_rejects_invalid_config) {
  cuoptimConfig_t c = init_config(CUOPTIM_SGD);
  c.momentum = 1.5;
  char buffer[4096];
  memset(buffer, 'x', sizeof buffer);
  size_t length = 99;
  cr_expect_eq(cuoptimConfigToKerasJSON(&c, buffer, sizeof buffer, &length), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect(strstr(last_message(), "cuoptimConfigToKerasJSON") != NULL, "%s", last_message());
  cr_expect(strstr(last_message(), "momentum") != NULL, "%s", last_message());
  cr_expect_eq(length, 99);
  cr_expect_eq(buffer[0], 'x');
}

Test(keras_json, to_json_size_query_reports_length_without_nul) {
  cuoptimConfig_t c = init_config(CUOPTIM_ADAM);
  c.learning_rate.initial_learning_rate = (double)(float)0.001;
  size_t length = 0;
  cr_expect_eq(cuoptimConfigToKerasJSON(&c, NULL, 0, &length), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect_eq(length, strlen(KERAS_DEFAULT_ADAM));
  /* NULL buffer with a capacity is a size query too. */
  length = 0;
  cr_expect_eq(cuoptimConfigToKerasJSON(&c, NULL, 100000, &length), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect_eq(length, strlen(KERAS_DEFAULT_ADAM));
}

Test(keras_json, to_json_small_buffer_writes_nothing) {
  cuoptimConfig_t c = init_config(CUOPTIM_ADAM);
  c.learning_rate.initial_learning_rate = (double)(float)0.001;
  size_t need = strlen(KERAS_DEFAULT_ADAM);
  char *buffer = malloc(need + 2);
  cr_assert_not_null(buffer);
  size_t capacities[] = {1, need / 2, need}; /* `need` leaves no room for the NUL */
  for (size_t i = 0; i < sizeof capacities / sizeof capacities[0]; i++) {
    memset(buffer, 'x', need + 2);
    size_t length = 0;
    cr_expect_eq(cuoptimConfigToKerasJSON(&c, buffer, capacities[i], &length), CUOPTIM_STATUS_INVALID_VALUE);
    cr_expect_eq(length, need);
    cr_expect(strstr(last_message(), "capacity") != NULL, "%s", last_message());
    for (size_t k = 0; k < need + 2; k++) cr_assert_eq(buffer[k], 'x', "byte %zu written with capacity %zu", k,
                                                        capacities[i]);
  }
  /* Exactly enough. */
  memset(buffer, 'x', need + 2);
  size_t length = 0;
  cr_expect_eq(cuoptimConfigToKerasJSON(&c, buffer, need + 1, &length), CUOPTIM_STATUS_SUCCESS, "%s",
               last_message());
  cr_expect_eq(length, need);
  cr_expect_str_eq(buffer, KERAS_DEFAULT_ADAM);
  cr_expect_eq(buffer[need + 1], 'x');
  free(buffer);
}

Test(keras_json, to_json_length_is_optional) {
  cuoptimConfig_t c = init_config(CUOPTIM_NADAM);
  char buffer[4096];
  cr_expect_eq(cuoptimConfigToKerasJSON(&c, buffer, sizeof buffer, NULL), CUOPTIM_STATUS_SUCCESS, "%s",
               last_message());
  cr_expect(strncmp(buffer, "{\"module\": \"keras.optimizers\", \"class_name\": \"Nadam\", ", 52) == 0, "%s",
            buffer);
  cr_expect_eq(cuoptimConfigToKerasJSON(&c, buffer, 10, NULL), CUOPTIM_STATUS_INVALID_VALUE);
}

/* ---------------------------------------------------------------------------------------------
 * Exactness of the text: integers, strings, duplicate keys, messages, parse -> write -> parse
 * ------------------------------------------------------------------------------------------- */
/* parse(json), written and parsed again, gives the same bytes, and the second text equals the first
 * written text. Returns the first config. */
static cuoptimConfig_t expect_exact_round_trip(const char *json) {
  cuoptimConfig_t first;
  cuoptimStatus_t st = cuoptimConfigFromKerasJSON(&first, json);
  cr_assert_eq(st, CUOPTIM_STATUS_SUCCESS, "%s\n  for %s", last_message(), json);
  char *text = to_json(&first);
  cuoptimConfig_t second;
  st = cuoptimConfigFromKerasJSON(&second, text);
  cr_assert_eq(st, CUOPTIM_STATUS_SUCCESS, "the written text does not parse: %s\n  %s", last_message(), text);
  expect_config_equal(&second, &first, 1);
  cr_expect(memcmp(&first, &second, sizeof first) == 0, "parse -> write -> parse changed the config:\n  %s\n  %s",
            json, text);
  char *again = to_json(&second);
  cr_expect_str_eq(again, text);
  free(again);
  free(text);
  return first;
}

Test(keras_json, from_json_reads_integers_above_2_to_the_53_exactly) {
  /* 2^53 + 1 and INT64_MAX have no double; Keras's Python ints hold them. */
  char *json = replace_once(KERAS_DEFAULT_ADAM, "\"gradient_accumulation_steps\": null",
                            "\"gradient_accumulation_steps\": 9007199254740993");
  cuoptimConfig_t c = expect_exact_round_trip(json);
  EXPECT_I(c.gradient_accumulation_steps, INT64_C(9007199254740993));
  free(json);

  json = replace_once(KERAS_DEFAULT_ADAM,
                      "\"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": null",
                      "\"use_ema\": true, \"ema_momentum\": 0.99, \"ema_overwrite_frequency\": 9223372036854775807");
  c = expect_exact_round_trip(json);
  EXPECT_I(c.ema_overwrite_frequency, INT64_MAX);
  free(json);

  json = replace_once(KERAS_LSO, "\"dynamic_growth_steps\": 10", "\"dynamic_growth_steps\": 9223372036854775807");
  c = expect_exact_round_trip(json);
  EXPECT_I(c.dynamic_growth_steps, INT64_MAX);
  free(json);

  /* An integral float still counts (Keras accepts 4.0), and 2^63 does not fit. */
  json = replace_once(KERAS_DEFAULT_ADAM, "\"gradient_accumulation_steps\": null",
                      "\"gradient_accumulation_steps\": 4e0");
  c = parse_ok(json);
  EXPECT_I(c.gradient_accumulation_steps, 4);
  free(json);
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"gradient_accumulation_steps\": null",
                    "\"gradient_accumulation_steps\": 9223372036854775808", CUOPTIM_STATUS_INVALID_VALUE,
                    "config.gradient_accumulation_steps = 9223372036854775808: out of the range of a 64-bit integer");
}

Test(keras_json, from_json_rejects_strings_holding_nul) {
  /* A NUL would cut the string short: "Adam\u0000junk" is not the class Adam. */
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"class_name\": \"Adam\"", "\"class_name\": \"Adam\\u0000junk\"",
                    CUOPTIM_STATUS_INVALID_VALUE, "holds \\u0000 (a NUL character)");
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", "\"name\": \"ad\\u0000am\"", CUOPTIM_STATUS_INVALID_VALUE,
                    "\\u0000");
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"beta_1\"", "\"beta_1\\u0000x\"", CUOPTIM_STATUS_INVALID_VALUE, "\\u0000");
  /* An escaped backslash followed by u0000 is no NUL. */
  char *json = replace_once(KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", "\"name\": \"a\\\\u0000\"");
  cuoptimConfig_t c = parse_ok(json);
  EXPECT_S(c.name, "a\\u0000");
  free(json);
}

Test(keras_json, from_json_rejects_text_that_is_not_utf8) {
  /* Python's json reads text: bytes that are not UTF-8 cannot come from Keras, and would be
   * written back as other characters. */
  static const char *const names[] = {
      "\"name\": \"caf\xe9\"",          /* Latin-1 */
      "\"name\": \"\xc0\xaf\"",         /* overlong "/" */
      "\"name\": \"\xed\xa0\x80\"",     /* a UTF-16 surrogate */
      "\"name\": \"\xf4\x90\x80\x80\"", /* above U+10FFFF */
      "\"name\": \"\xc3\"",             /* cut short */
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    expect_edit_error(KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", names[i], CUOPTIM_STATUS_PARSE_ERROR,
                      "json: not valid UTF-8 at byte");
  }
  /* Valid UTF-8 is kept as it is. */
  char *json = replace_once(KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", "\"name\": \"caf\xc3\xa9 \xf0\x9f\x98\x80\"");
  cuoptimConfig_t c = expect_exact_round_trip(json);
  EXPECT_S(c.name, "caf\xc3\xa9 \xf0\x9f\x98\x80");
  free(json);
}

Test(keras_json, from_json_rejects_raw_control_characters_in_strings) {
  /* json.loads refuses them (strict); json.dumps writes them as escapes. */
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", "\"name\": \"ad\nam\"", CUOPTIM_STATUS_PARSE_ERROR,
                    "control character 0x0a");
  char *json = replace_once(KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", "\"name\": \"ad\\nam\"");
  cuoptimConfig_t c = expect_exact_round_trip(json);
  EXPECT_S(c.name, "ad\nam");
  free(json);
}

Test(keras_json, to_json_rejects_names_that_are_not_utf8) {
  cuoptimConfig_t c = init_config(CUOPTIM_ADAM);
  strcpy(c.name, "caf\xe9");
  char buffer[4096];
  cr_expect_eq(cuoptimConfigToKerasJSON(&c, buffer, sizeof buffer, NULL), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect(strstr(last_message(), "config->name is not valid UTF-8") != NULL, "%s", last_message());
  c = init_config(CUOPTIM_ADAM);
  cr_assert_eq(cuoptimScheduleInit(&c.learning_rate, CUOPTIM_SCHEDULE_EXPONENTIAL), CUOPTIM_STATUS_SUCCESS);
  strcpy(c.learning_rate.name, "\xff");
  cr_expect_eq(cuoptimConfigToKerasJSON(&c, buffer, sizeof buffer, NULL), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect(strstr(last_message(), "config->learning_rate.name") != NULL, "%s", last_message());
  c = init_config(CUOPTIM_ADAM);
  c.dynamic_loss_scale = 1;
  strcpy(c.loss_scale_name, "x\x80");
  cr_expect_eq(cuoptimConfigToKerasJSON(&c, buffer, sizeof buffer, NULL), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect(strstr(last_message(), "config->loss_scale_name") != NULL, "%s", last_message());
}

Test(keras_json, validate_rejects_names_that_are_not_utf8) {
  /* The writer could not write them: a config cuoptimCreate accepts always has a JSON form. */
  cuoptimConfig_t c = init_config(CUOPTIM_ADAM);
  strcpy(c.name, "caf\xe9");
  cr_expect_eq(cuoptimConfigValidate(&c), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect(strstr(last_message(), "cuoptimConfigValidate: config->name is not valid UTF-8") != NULL, "%s",
            last_message());
  cuoptimOptimizer_t opt = NULL;
  cr_expect_eq(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect_null(opt);
  strcpy(c.name, "caf\xc3\xa9"); /* UTF-8 */
  cr_expect_eq(cuoptimConfigValidate(&c), CUOPTIM_STATUS_SUCCESS, "%s", last_message());
}

Test(keras_json, from_json_takes_the_last_of_duplicate_keys_like_python) {
  /* json.loads keeps the last value of a repeated key, in every object. */
  char *inner = replace_once(KERAS_LSO, "\"inner_optimizer\": {",
                             "\"inner_optimizer\": {\"class_name\": \"Nope\"}, \"inner_optimizer\": {");
  cuoptimConfig_t c = parse_ok(inner);
  EXPECT_I(c.kind, CUOPTIM_LION);
  free(inner);
  inner = replace_once(KERAS_LSO, "\"initial_scale\": 1024.0",
                       "\"initial_scale\": 1024.0, \"inner_optimizer\": {\"class_name\": \"SGD\", \"config\": {}}");
  c = parse_ok(inner);
  EXPECT_I(c.kind, CUOPTIM_SGD);
  free(inner);

  /* A config key: the first value would even be refused. */
  char *json = replace_once(KERAS_DEFAULT_ADAM, "\"beta_1\": 0.9", "\"beta_1\": \"x\", \"beta_1\": 0.5");
  c = parse_ok(json);
  EXPECT_D(c.beta_1, 0.5);
  free(json);
  json = replace_once(KERAS_ADAM, "\"decay_rate\": 0.96", "\"decay_rate\": null, \"decay_rate\": 0.25");
  c = parse_ok(json);
  EXPECT_D(c.learning_rate.decay_rate, 0.25);
  free(json);
  json = replace_once(KERAS_LSO, "\"dynamic_growth_steps\": 10}",
                      "\"dynamic_growth_steps\": 10, \"clipnorm\": 1.0, \"dynamic\": false, \"clipnorm\": null, "
                      "\"dynamic\": true, \"dynamic_growth_steps\": 20}");
  c = parse_ok(json);
  EXPECT_I(c.dynamic_growth_steps, 20);
  free(json);
  json = replace_once(KERAS_DEFAULT_ADAM, "\"amsgrad\": false", "\"amsgrad\": false, \"decay\": \"x\", \"decay\": 0.5");
  c = parse_ok(json);
  EXPECT_I(c.kind, CUOPTIM_ADAM);
  free(json);
  /* The envelope. */
  json = replace_once(KERAS_DEFAULT_ADAM, "\"class_name\": \"Adam\"",
                      "\"class_name\": \"SGD\", \"class_name\": \"Adam\"");
  c = parse_ok(json);
  EXPECT_I(c.kind, CUOPTIM_ADAM);
  free(json);
  /* The last value is the one that must be valid. */
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"beta_1\": 0.9", "\"beta_1\": 0.9, \"beta_1\": \"x\"",
                    CUOPTIM_STATUS_INVALID_VALUE, "config.beta_1: expected a number, got a string");
}

/* The last error message is one line of printable ASCII. */
static void expect_one_line_message(void) {
  for (const char *p = last_message(); *p != '\0'; p++) {
    cr_expect(*p >= 0x20 && *p < 0x7f, "byte 0x%02x in the message \"%s\"", (unsigned char)*p, last_message());
    if (!(*p >= 0x20 && *p < 0x7f)) break;
  }
}

Test(keras_json, from_json_messages_quote_input_text_on_one_line) {
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"class_name\": \"Adam\"", "\"class_name\": \"Ad\\nam\\u001b[31m\\u00e9\"",
                    CUOPTIM_STATUS_INVALID_VALUE, "unknown optimizer class \"Ad\\x0aam\\x1b[31m\\xc3\\xa9\"");
  expect_one_line_message();
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"beta_1\"", "\"be\\r\\nta\\\"\"", CUOPTIM_STATUS_INVALID_VALUE,
                    "config.be\\x0d\\x0ata\\\": unknown key for Adam");
  expect_one_line_message();
  expect_edit_error(KERAS_ADAM, "\"class_name\": \"ExponentialDecay\"", "\"class_name\": \"Exp\\tDecay\"",
                    CUOPTIM_STATUS_INVALID_VALUE, "unknown learning-rate schedule class \"Exp\\x09Decay\"");
  expect_one_line_message();
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"module\": \"keras.optimizers\"", "\"module\": \"my\\nmodule\"",
                    CUOPTIM_STATUS_INVALID_VALUE, "module = \"my\\x0amodule\"");
  expect_one_line_message();
  /* A long class name is cut. */
  char long_class[600] = "\"class_name\": \"";
  for (int i = 0; i < 500; i++) strcat(long_class, "A");
  strcat(long_class, "\"");
  expect_edit_error(KERAS_DEFAULT_ADAM, "\"class_name\": \"Adam\"", long_class, CUOPTIM_STATUS_INVALID_VALUE,
                    "AAAA...\"");
  cr_expect_lt(strlen(last_message()), 200, "%s", last_message());
}

Test(keras_json, round_trip_parse_write_parse_is_exact_for_edge_values) {
  char name127[CUOPTIM_MAX_NAME];
  memset(name127, 'n', sizeof name127 - 1);
  name127[sizeof name127 - 1] = '\0';
  char name_edit[CUOPTIM_MAX_NAME + 32];
  snprintf(name_edit, sizeof name_edit, "\"name\": \"%s\"", name127);
  const struct {
    const char *src, *from, *to;
  } edits[] = {
      /* Float32 extremes of the learning rate, negative zero, a negative learning rate. */
      {KERAS_DEFAULT_ADAM, "\"learning_rate\": 0.0010000000474974513", "\"learning_rate\": 1e-45"},
      {KERAS_DEFAULT_ADAM, "\"learning_rate\": 0.0010000000474974513", "\"learning_rate\": 1.401298464324817e-45"},
      {KERAS_DEFAULT_ADAM, "\"learning_rate\": 0.0010000000474974513", "\"learning_rate\": 3.4028234663852886e+38"},
      {KERAS_DEFAULT_ADAM, "\"learning_rate\": 0.0010000000474974513", "\"learning_rate\": -0.0"},
      {KERAS_DEFAULT_ADAM, "\"learning_rate\": 0.0010000000474974513", "\"learning_rate\": -0.01"},
      {KERAS_DEFAULT_ADAM, "\"weight_decay\": null", "\"weight_decay\": -0.0"},
      {KERAS_DEFAULT_ADAM, "\"ema_momentum\": 0.99", "\"ema_momentum\": 1.7976931348623157e+308"},
      {KERAS_DEFAULT_ADAM, "\"ema_momentum\": 0.99", "\"ema_momentum\": -Infinity"},
      {KERAS_DEFAULT_ADAM, "\"clipnorm\": null", "\"clipnorm\": -1e+300"},
      /* Step counts: -0.0, fractions, values above 2^53, infinity. */
      {KERAS_S_COS, "\"warmup_steps\": 0", "\"warmup_steps\": -0.0"},
      {KERAS_S_COSW, "\"warmup_steps\": 100", "\"warmup_steps\": Infinity"},
      {KERAS_S_COS, "\"decay_steps\": 1000", "\"decay_steps\": 9007199254740993"},
      {KERAS_S_COS, "\"decay_steps\": 1000", "\"decay_steps\": 1e-45"},
      {KERAS_S_POLY, "\"decay_steps\": 500", "\"decay_steps\": Infinity"},
      {KERAS_S_PIECE, "[100, 200]", "[-0.0, 0.5]"},
      {KERAS_S_PIECE, "[100, 200]", "[-9e+18, 9e+18]"},
      /* Integers. */
      {KERAS_DEFAULT_ADAM, "\"gradient_accumulation_steps\": null",
       "\"gradient_accumulation_steps\": 9223372036854775807"},
      {KERAS_DEFAULT_ADAM, "\"ema_overwrite_frequency\": null", "\"ema_overwrite_frequency\": -9223372036854775808"},
      /* Names: the longest, escapes, null and "" (the default). */
      {KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", name_edit},
      {KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", "\"name\": \"\\u00e9\\ud83d\\ude00\\\"\\\\\\/\\b\\f\\t\\u007f\""},
      {KERAS_DEFAULT_ADAM, "\"name\": \"adam\"", "\"name\": \"\""},
      {KERAS_ADAM, "\"name\": \"exp\"", "\"name\": \"\""},
      {KERAS_ADAM, "\"name\": \"exp\"", "\"name\": null"},
      {KERAS_LSO, "\"name\": \"lso\"", "\"name\": \"\""},
      {KERAS_LSO, "\"name\": \"lso\"", "\"name\": null"},
  };
  for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
    char *json = replace_once(edits[i].src, edits[i].from, edits[i].to);
    expect_exact_round_trip(json);
    free(json);
  }
  /* Every Keras text of this suite. */
  static const char *const texts[] = {KERAS_SGD,   KERAS_RMS,    KERAS_ADAGRAD, KERAS_ADADELTA, KERAS_ADAM,
                                      KERAS_ADAMW, KERAS_ADAMAX, KERAS_NADAM,   KERAS_LION,     KERAS_LAMB,
                                      KERAS_FTRL,  KERAS_S_PIECE, KERAS_S_POLY, KERAS_S_INV,    KERAS_S_COS,
                                      KERAS_S_COSW, KERAS_S_COSR, KERAS_LSO,    KERAS_DEFAULT_LSO_ADAM};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) expect_exact_round_trip(texts[i]);
  for (size_t i = 0; i < NUM_KERAS_DEFAULTS; i++) expect_exact_round_trip(KERAS_DEFAULTS[i].json);
}

/* A MultiOptimizer case: its text read and written, then read and written again, the same bytes. */
static void expect_exact_multi_round_trip(const char *json) {
  char *texts[2] = {NULL, NULL};
  for (int pass = 0; pass < 2; pass++) {
    cuoptimOptimizer_t opt = NULL;
    OK(cuoptimCreateFromKerasJSON(&opt, pass == 0 ? json : texts[0], CUOPTIM_BACKEND_HOST, 0));
    size_t length = 0;
    (void)cuoptimToKerasJSON(opt, NULL, 0, &length);
    texts[pass] = malloc(length + 1);
    OK(cuoptimToKerasJSON(opt, texts[pass], length + 1, NULL));
    OK(cuoptimDestroy(opt));
  }
  cr_expect_str_eq(texts[1], texts[0]);
  free(texts[0]);
  free(texts[1]);
}

Test(keras_json, round_trip_parse_write_parse_is_exact_for_every_reference_case) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", test_data_path("cases"));
  DIR *d = opendir(dir);
  cr_assert_not_null(d, "cannot read %s", dir);
  int count = 0;
  for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
    size_t n = strlen(e->d_name);
    if (n < 6 || strcmp(e->d_name + n - 5, ".json") != 0) continue;
    char path[8192], error[512];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    cuoptimCase kase;
    cr_assert_eq(cuoptim_case_load(path, &kase, error, sizeof error), 0, "%s: %s", e->d_name, error);
    if (kase.multi)
      expect_exact_multi_round_trip(kase.optimizer_json);
    else
      expect_exact_round_trip(kase.optimizer_json);
    cuoptim_case_free(&kase);
    count++;
  }
  closedir(d);
  cr_expect_gt(count, 40);
}

/* Muon's own keys: exclude_layers a list of strings (at most CUOPTIM_MAX_EXCLUDE_LAYERS, each a
 * valid pattern), ns_steps an integer, rms_rate and adam_weight_decay None or numbers. */
Test(keras_json, muon_reads_and_writes_its_keys) {
  char *text = replace_once(KERAS_DEFAULT_MUON, "\"exclude_layers\": []", "\"exclude_layers\": [\"last\", \"^head/\"]");
  char *edited = replace_once(text, "\"rms_rate\": 0.2", "\"rms_rate\": null");
  cuoptimConfig_t c = parse_ok(edited);
  EXPECT_I(c.kind, CUOPTIM_MUON);
  EXPECT_I(c.num_exclude_layers, 2);
  EXPECT_S(c.exclude_layers[0], "last");
  EXPECT_S(c.exclude_layers[1], "^head/");
  cr_expect(CUOPTIM_IS_NONE(c.rms_rate));
  EXPECT_I(c.ns_steps, 5);
  cr_expect_eq(c.adam_lr_ratio, 1.0);
  char out[4096];
  OK(cuoptimConfigToKerasJSON(&c, out, sizeof out, NULL));
  cr_expect_str_eq(out, edited);
  expect_edit_error(KERAS_DEFAULT_MUON, "\"exclude_layers\": []", "\"exclude_layers\": [\"a(\"]",
                    CUOPTIM_STATUS_INVALID_VALUE, "exclude_layers[0]");
  expect_edit_error(KERAS_DEFAULT_MUON, "\"exclude_layers\": []", "\"exclude_layers\": [1]",
                    CUOPTIM_STATUS_INVALID_VALUE, "exclude_layers[0]");
  expect_edit_error(KERAS_DEFAULT_MUON, "\"exclude_layers\": []", "\"exclude_layers\": \"x\"",
                    CUOPTIM_STATUS_INVALID_VALUE, "exclude_layers");
  expect_edit_error(KERAS_DEFAULT_MUON, "\"exclude_layers\": []",
                    "\"exclude_layers\": [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\", \"i\"]",
                    CUOPTIM_STATUS_INVALID_VALUE, "at most 8");
  expect_edit_error(KERAS_DEFAULT_MUON, "\"ns_steps\": 5", "\"ns_steps\": null", CUOPTIM_STATUS_INVALID_VALUE,
                    "ns_steps");
  expect_edit_error(KERAS_DEFAULT_MUON, "\"ns_steps\": 5", "\"ns_steps\": 2.5", CUOPTIM_STATUS_INVALID_VALUE,
                    "ns_steps");
  free(edited);
  free(text);
}
