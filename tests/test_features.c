/*
 * test_features.c — behaviours beyond single update formulas, against real Keras.
 *
 * Weight-decay exclusion, EMA with overwrite frequency and finalize_variable_values, gradient
 * accumulation (with schedules and EMA), loss_scale_factor, LossScaleOptimizer (dynamic loss
 * scaling), gradient lists covering only some variables, cuoptimMinimize, clipping across several
 * variables, the Keras-ordered state (names, Get/SetWeights round trips), and float16/bfloat16
 * parameters and gradients on the host backend.
 *
 * Expected values were printed by real Keras 3.15.1 (KERAS_BACKEND=jax, float32 variables); the
 * comment above each table names the Keras calls. Compared with rtol 1e-6 / atol 1e-7 unless a
 * test says otherwise. Tests that take a backend also run on CUOPTIM_BACKEND_CUDA (suite
 * features_cuda) when a GPU is present.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuoptim.h"
#include "testutil.h"

#define RTOL 1e-6
#define ATOL 1e-7

#define BOTH_BACKENDS(test_name, fn)                      \
  Test(features, test_name) { fn(CUOPTIM_BACKEND_HOST); } \
  Test(features_cuda, test_name) { fn(CUOPTIM_BACKEND_CUDA); }

/* grads[k]: host values for variable k, or NULL for "no gradient" (the pair is not listed). */
static void rig_apply(test_rig_t *r, const float *const *grads) { OK(test_rig_try_apply(r, grads)); }

static void rig_apply1(test_rig_t *r, const float *grad) {
  const float *grads[1] = {grad};
  rig_apply(r, grads);
}

/* The last state entry named `name` (with dynamic_loss_scale, "iteration" and "learning_rate"
 * occur twice: the LossScaleOptimizer's own first, the inner optimizer's later), or -1.
 * (test_weight_index gives the first.) */
static int weight_index(cuoptimOptimizer_t opt, const char *name) {
  int count = 0, found = -1;
  OK(cuoptimGetWeightCount(opt, &count));
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(opt, i, &info));
    if (strcmp(info.name, name) == 0) found = i;
  }
  return found;
}

static void weight_floats(cuoptimOptimizer_t opt, const char *name, float *out, size_t count) {
  int index = weight_index(opt, name);
  cr_assert_geq(index, 0, "no state entry named \"%s\"", name);
  double values[64];
  cr_assert_leq(count, 64);
  OK(cuoptimGetWeights(opt, index, values, count));
  for (size_t i = 0; i < count; i++) out[i] = (float)values[i];
}

static double weight_scalar(cuoptimOptimizer_t opt, const char *name) {
  double v = NAN;
  int index = weight_index(opt, name);
  cr_assert_geq(index, 0, "no state entry named \"%s\"", name);
  OK(cuoptimGetWeights(opt, index, &v, 1));
  return v;
}

static void expect_close(const float *got, const float *want, size_t n, double rtol, double atol, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void expect_close(const float *got, const float *want, size_t n, double rtol, double atol, const char *fmt,
                         ...) {
  long i = test_first_mismatch(got, want, n, rtol, atol);
  if (i < 0) return;
  char what[256];
  va_list args;
  va_start(args, fmt);
  vsnprintf(what, sizeof what, fmt, args);
  va_end(args);
  cr_assert_fail("%s: element %ld is %.9g, Keras gives %.9g (rtol %g, atol %g)", what, i, (double)got[i],
                 (double)want[i], rtol, atol);
}

/* ---- real Keras 3.15.1 values (KERAS_BACKEND=jax, float32) ------------------------------------------ */
/* A. AdamW(learning_rate=0.01, weight_decay=0.1) on kernel, bias, embeddings, layer_norm_gamma;
 *    opt.exclude_from_weight_decay(var_names=['bias', 'norm_gamma$']); 3 steps of WD_GRADS. */
static const bool WD_KERAS_USES[4] = {true, false, true, false};
static const float WD_KERNEL_INIT[3] = {0.5f, -1.0f, 2.0f};
static const float WD_KERNEL_GRADS[3][3] = {{0.100000001f, -0.200000003f, 0.300000012f},
                                            {0.200000003f, 0.100000001f, -0.100000001f},
                                            {-0.300000012f, 0.0f, 0.200000003f}};
static const float WD_KERNEL_AFTER[3][3] = {{0.489500403f, -0.989000261f, 1.98800015f},
                                            {0.479359329f, -0.985347927f, 1.98201001f},
                                            {0.479545951f, -0.982303858f, 1.97399724f}};
static const float WD_BIAS_INIT[2] = {0.100000001f, 0.200000003f};
static const float WD_BIAS_GRADS[3][2] = {{0.5f, -0.5f}, {0.100000001f, 0.400000006f}, {0.200000003f, 0.200000003f}};
static const float WD_BIAS_AFTER[3][2] = {
    {0.0900001302f, 0.209999874f}, {0.0819698498f, 0.210581109f}, {0.0738571882f, 0.209103987f}};
static const float WD_EMBEDDINGS_INIT[2] = {1.0f, -2.0f};
static const float WD_EMBEDDINGS_GRADS[3][2] = {
    {0.0500000007f, 0.0f}, {-0.200000003f, 0.300000012f}, {0.100000001f, 0.100000001f}};
static const float WD_EMBEDDINGS_AFTER[3][2] = {
    {0.989000738f, -1.99800003f}, {0.993606627f, -2.00344324f}, {0.99371475f, -2.00891757f}};
static const float WD_LAYER_NORM_GAMMA_INIT[2] = {1.0f, 1.0f};
static const float WD_LAYER_NORM_GAMMA_GRADS[3][2] = {
    {-0.300000012f, 0.200000003f}, {0.0f, 0.100000001f}, {0.400000006f, -0.400000006f}};
static const float WD_LAYER_NORM_GAMMA_AFTER[3][2] = {
    {1.00999987f, 0.990000248f}, {1.01670027f, 0.980678678f}, {1.01469374f, 0.98274225f}};
/* A2. AdamW(learning_rate=ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5), weight_decay=0.2),
 *     w = [2, -4], zero gradients, 4 steps: the decay uses the scheduled rate. */
static const float WD_SCHEDULE_AFTER[4][2] = {
    {1.96000004f, -3.92000008f}, {1.9404f, -3.88080001f}, {1.93069804f, -3.86139607f}, {1.92587125f, -3.85174251f}};
/* B. SGD(learning_rate=0.1, momentum=0.9, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3)
 *    on a = [1, 2, 3], b = [-1, 0.5], 7 steps of EMA_GRADS_A/B; then finalize_variable_values. */
static const float EMA_GRADS_A[7][3] = {{0.5f, -0.5f, 1.0f},
                                        {0.200000003f, 0.100000001f, -0.300000012f},
                                        {1.0f, 1.0f, 1.0f},
                                        {-0.400000006f, 0.300000012f, 0.0f},
                                        {0.100000001f, 0.200000003f, 0.300000012f},
                                        {0.0f, -1.0f, 0.5f},
                                        {0.300000012f, 0.300000012f, -0.300000012f}};
static const float EMA_GRADS_B[7][2] = {{1.0f, 2.0f},    {-0.5f, 0.5f}, {0.0f, 0.0f},
                                        {0.25f, -0.75f}, {1.5f, 0.5f},  {0.100000001f, 0.100000001f},
                                        {-1.0f, 1.0f}};
static const float EMA_VAR_A[7][3] = {
    {0.949999988f, 2.04999995f, 2.9000001f},  {0.88499999f, 2.08500004f, 2.84000015f},
    {0.894899964f, 2.04889989f, 2.84760022f}, {0.792249978f, 1.95724988f, 2.70900011f},
    {0.689864993f, 1.85476482f, 2.55426002f}, {0.789518893f, 1.96883285f, 2.68640375f},
    {0.676587045f, 1.94581997f, 2.54606438f}};
static const float EMA_VAR_B[7][2] = {{-1.10000002f, 0.300000012f},   {-1.13999999f, 0.0700000226f},
                                      {-1.12160003f, 0.175800025f},   {-1.17900002f, 0.0645000488f},
                                      {-1.38066006f, -0.0856699347f}, {-1.26050758f, 0.0383938476f},
                                      {-1.33285213f, -0.192243844f}};
static const float EMA_AVG_A[7][3] = {
    {0.949999988f, 2.04999995f, 2.9000001f},  {0.936999977f, 2.05699992f, 2.88800025f},
    {0.894899964f, 2.04889989f, 2.84760022f}, {0.874369979f, 2.03057003f, 2.81988025f},
    {0.837468982f, 1.99540901f, 2.76675606f}, {0.789518893f, 1.96883285f, 2.68640375f},
    {0.766932487f, 1.9642303f, 2.65833569f}};
static const float EMA_AVG_B[7][2] = {{-1.10000002f, 0.300000012f},   {-1.10800004f, 0.254000008f},
                                      {-1.12160003f, 0.175800025f},   {-1.13308001f, 0.15354003f},
                                      {-1.18259597f, 0.105698034f},   {-1.26050758f, 0.0383938476f},
                                      {-1.27497649f, -0.00773368776f}};
static const float EMA_FINAL_A[3] = {0.766932487f, 1.9642303f, 2.65833569f};
static const float EMA_FINAL_B[2] = {-1.27497649f, -0.00773368776f};
/* C1. Adam(learning_rate=ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5), gradient_accumulation_steps=3)
 *     on w = [1, 2]; 8 micro-steps of ACC_GRADS. After each: w, the accumulator, optimizer.iterations,
 *     optimizer._iterations (the `iteration` variable), optimizer.learning_rate. */
static const float ACC_GRADS[8][2] = {{0.5f, -1.0f},
                                      {0.25f, 0.5f},
                                      {1.0f, 0.0f},
                                      {-0.5f, 0.75f},
                                      {0.100000001f, 0.200000003f},
                                      {0.300000012f, -0.300000012f},
                                      {2.0f, 1.0f},
                                      {0.0f, -0.5f}};
static const float ACC_W[8][2] = {{1.0f, 2.0f},
                                  {1.0f, 2.0f},
                                  {0.950000584f, 2.04999876f},
                                  {0.950000584f, 2.04999876f},
                                  {0.950000584f, 2.04999876f},
                                  {0.938925862f, 2.04679012f},
                                  {0.938925862f, 2.04679012f},
                                  {0.938925862f, 2.04679012f}};
static const float ACC_ACCUMULATOR[8][2] = {
    {0.5f, -1.0f}, {0.75f, -0.5f}, {0.0f, 0.0f}, {-0.5f, 0.75f}, {-0.400000006f, 0.949999988f},
    {0.0f, 0.0f},  {2.0f, 1.0f},   {2.0f, 0.5f}};
static const int64_t ACC_ITERATIONS[8] = {0, 0, 1, 1, 1, 2, 2, 2};
static const int64_t ACC_RAW[8] = {1, 2, 3, 4, 5, 6, 7, 8};
static const float ACC_LR0 = 0.100000001f;
static const float ACC_LR[8] = {0.0707106814f, 0.0500000007f, 0.0353553407f,  0.0250000004f,
                                0.0176776703f, 0.0125000002f, 0.00883883517f, 0.00625000009f};
/* names: ['iteration', 'w_gradient_accumulator', 'w_momentum', 'w_velocity'] */
/* C2. SGD(learning_rate=0.5, momentum=0.5, gradient_accumulation_steps=2, use_ema=True, ema_momentum=0.5)
 *     on w = [1, -1]; 6 micro-steps of ACC_GRADS: w and the average after each. */
static const float ACC_EMA_W[6][2] = {{1.0f, -1.0f},     {0.8125f, -0.875f}, {0.8125f, -0.875f},
                                      {0.59375f, -1.0f}, {0.59375f, -1.0f},  {0.384375006f, -1.03750002f}};
static const float ACC_EMA_AVG[6][2] = {{1.0f, -1.0f},         {0.8125f, -0.875f},      {0.8125f, -0.875f},
                                        {0.703125f, -0.9375f}, {0.6484375f, -0.96875f}, {0.516406238f, -1.00312495f}};
/* D. Adam(learning_rate=0.1, loss_scale_factor=100.0) on w = [1, 2, 3], 3 steps of LSF_GRADS * 100 (float32). */
static const float LSF_GRADS[3][3] = {{0.300000012f, -0.699999988f, 1.10000002f},
                                      {0.00999999978f, 0.5f, -0.25f},
                                      {-1.29999995f, 0.200000003f, 0.899999976f}};
static const float LSF_SCALED_GRADS[3][3] = {
    {30.0000019f, -70.0f, 110.0f}, {1.0f, 50.0f, -25.0f}, {-130.0f, 20.0f, 90.0f}};
static const float LSF_W[3][3] = {{0.900001705f, 2.09999895f, 2.90000105f},
                                  {0.830554247f, 2.11124802f, 2.85116315f},
                                  {0.880734444f, 2.10523987f, 2.78179979f}};
/* E. LossScaleOptimizer(Adam(learning_rate=0.1), initial_scale=8.0, dynamic_growth_steps=2) on w = [1, 2],
 *    stateless_apply (as Keras's JAX trainer) with LSO_GRADS (scaled gradients, some non-finite). After each
 *    step: w, inner iterations, step_counter, dynamic_scale, w_momentum, w_velocity. */
static const float LSO_GRADS[10][2] = {{8.0f, 16.0f}, {INFINITY, 16.0f}, {4.0f, 2.0f}, {4.0f, -2.0f},
                                       {NAN, 1.0f},   {2.0f, 3.0f},      {4.0f, 4.0f}, {-INFINITY, 0.0f},
                                       {8.0f, 8.0f},  {8.0f, -8.0f}};
static const float LSO_W[10][2] = {
    {0.900000989f, 1.90000081f}, {0.900000989f, 1.90000081f}, {0.800002217f, 1.81694198f}, {0.700002789f, 1.76961994f},
    {0.700002789f, 1.76961994f}, {0.605177104f, 1.71368432f}, {0.508623362f, 1.64830661f}, {0.508623362f, 1.64830661f},
    {0.412555873f, 1.57164633f}, {0.314774901f, 1.54208136f}};
static const int64_t LSO_ITERATIONS[10] = {1, 1, 2, 3, 3, 4, 5, 5, 6, 7};
static const int64_t LSO_STEP_COUNTER[10] = {1, 0, 1, 0, 0, 1, 0, 0, 1, 0};
static const float LSO_SCALE[10] = {8.0f, 4.0f, 4.0f, 8.0f, 4.0f, 4.0f, 8.0f, 4.0f, 4.0f, 8.0f};
static const float LSO_MOMENTUM[10][2] = {{0.100000001f, 0.200000003f}, {0.100000001f, 0.200000003f},
                                          {0.189999998f, 0.230000004f}, {0.270999998f, 0.157000005f},
                                          {0.270999998f, 0.157000005f}, {0.293900013f, 0.216300011f},
                                          {0.36451f, 0.294670016f},     {0.36451f, 0.294670016f},
                                          {0.528059006f, 0.465203017f}, {0.675253093f, 0.218682706f}};
static const float LSO_VELOCITY[10][2] = {{0.00100000005f, 0.00400000019f}, {0.00100000005f, 0.00400000019f},
                                          {0.00199900009f, 0.0042460002f},  {0.00299700117f, 0.00449175434f},
                                          {0.00299700117f, 0.00449175434f}, {0.00324400421f, 0.00504976278f},
                                          {0.00424076011f, 0.00604471285f}, {0.00424076011f, 0.00604471285f},
                                          {0.00823651999f, 0.0100386683f},  {0.012228284f, 0.0140286302f}};
/* F. Adam(learning_rate=0.1, use_ema=True, ema_momentum=0.9) on v0 = [1, 2], v1 = [3, 4], v2 = [-1, 1];
 *    step 1: all, step 2: v0 and v2, step 3: v1 only, step 4: all (PART_GRADS). After each: values,
 *    averages, momentum slots of the three variables. */
static const float PART_GRADS[4][3][2] = {{{0.5f, -0.5f}, {1.0f, 2.0f}, {0.300000012f, 0.300000012f}},
                                          {{0.200000003f, 0.400000006f}, {0.0f, 0.0f}, {-0.600000024f, 0.100000001f}},
                                          {{0.0f, 0.0f}, {0.5f, -1.0f}, {0.0f, 0.0f}},
                                          {{1.0f, 1.0f}, {-1.0f, 0.5f}, {0.0f, 0.200000003f}}};
static const bool PART_HAS_GRAD[4][3] = {
    {true, true, true}, {true, false, true}, {false, true, false}, {true, true, true}};
static const float PART_VALUES[4][6] = {
    {0.900001287f, 2.09999871f, 2.90000105f, 3.90000081f, -1.09999824f, 0.900001705f},
    {0.810145199f, 2.10581112f, 2.90000105f, 3.90000081f, -1.06338847f, 0.812897086f},
    {0.810145199f, 2.10581112f, 2.81997752f, 3.87713695f, -1.06338847f, 0.812897086f},
    {0.72903192f, 2.0590632f, 2.80989981f, 3.84616852f, -1.03764439f, 0.730060518f}};
static const float PART_AVERAGES[4][6] = {
    {0.900001287f, 2.09999871f, 2.90000105f, 3.90000081f, -1.09999824f, 0.900001705f},
    {0.891015649f, 2.10057998f, 2.90000105f, 3.90000081f, -1.09633732f, 0.891291201f},
    {0.88292855f, 2.10110307f, 2.89199877f, 3.89771461f, -1.09304249f, 0.88345176f},
    {0.867538869f, 2.09689903f, 2.88378906f, 3.89256001f, -1.08750272f, 0.868112683f}};
static const float PART_MOMENTUM[4][6] = {
    {0.0500000007f, -0.0500000007f, 0.100000001f, 0.200000003f, 0.0300000012f, 0.0300000012f},
    {0.0649999976f, -0.00499999896f, 0.100000001f, 0.200000003f, -0.0329999998f, 0.0370000005f},
    {0.0649999976f, -0.00499999896f, 0.140000001f, 0.0799999982f, -0.0329999998f, 0.0370000005f},
    {0.158500001f, 0.0955000073f, 0.0260000005f, 0.122000001f, -0.0296999998f, 0.0533000007f}};
static const float PART_VELOCITY[4][6] = {
    {0.000250000012f, 0.000250000012f, 0.00100000005f, 0.00400000019f, 9.00000086e-05f, 9.00000086e-05f},
    {0.000289750024f, 0.000409750035f, 0.00100000005f, 0.00400000019f, 0.000449910032f, 9.99100084e-05f},
    {0.000289750024f, 0.000409750035f, 0.00124900008f, 0.00499600032f, 0.000449910032f, 9.99100084e-05f},
    {0.00128946034f, 0.00140934042f, 0.00224775122f, 0.00524100428f, 0.000449460116f, 0.000139810101f}};
/* G. Nadam(learning_rate=0.1) minimizing 0.5 * ||w - t||^2, t = [0.5, 0.5, -1], w = [1, -2, 3]: the gradient
 *    w - t (float32) applied 4 times. */
static const float MIN_W[4][3] = {{0.893721223f, -1.89372122f, 2.8937211f},
                                  {0.824830592f, -1.81783807f, 2.8172729f},
                                  {0.766090453f, -1.74878716f, 2.7474196f},
                                  {0.712379515f, -1.68127036f, 2.67887211f}};
/* u_product after the 4 steps */
static const float MIN_U_PRODUCT = 0.0590181351f;
/* J. Adam(learning_rate=0.1, global_clipnorm=1.0) and SGD(learning_rate=1.0, clipnorm=1.0) on a = [1, 1],
 *    b = [1]; step 1 gradients a: [3, 4], b: [12]; step 2 a: [0.3, 0.4], b: None. */
static const float CLIP_GLOBAL[2][3] = {{0.900002003f, 0.900001705f, 0.900000989f},
                                        {0.800169468f, 0.800168991f, 0.900000989f}};
static const float CLIP_CLIPNORM[2][3] = {{0.399999976f, 0.199999988f, 0.0f}, {0.0999999642f, -0.200000018f, 0.0f}};

/* =================================================================================================
 * A. Weight-decay exclusion by regex
 * ================================================================================================= */

static const char *const WD_NAMES[4] = {"kernel", "bias", "embeddings", "layer_norm_gamma"};
static const float *const WD_INITS[4] = {WD_KERNEL_INIT, WD_BIAS_INIT, WD_EMBEDDINGS_INIT, WD_LAYER_NORM_GAMMA_INIT};
static const size_t WD_COUNTS[4] = {3, 2, 2, 2};

static const float *wd_grad(int var, int step) {
  switch (var) {
    case 0:
      return WD_KERNEL_GRADS[step];
    case 1:
      return WD_BIAS_GRADS[step];
    case 2:
      return WD_EMBEDDINGS_GRADS[step];
    default:
      return WD_LAYER_NORM_GAMMA_GRADS[step];
  }
}

static const float *wd_after(int var, int step) {
  switch (var) {
    case 0:
      return WD_KERNEL_AFTER[step];
    case 1:
      return WD_BIAS_AFTER[step];
    case 2:
      return WD_EMBEDDINGS_AFTER[step];
    default:
      return WD_LAYER_NORM_GAMMA_AFTER[step];
  }
}

/* Keras: one exclude_from_weight_decay(var_names=["bias", "norm_gamma$"]). cuoptim: patterns
 * accumulate over calls and apply to variables added before and after the call. */
static void weight_decay_exclusion(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAMW, 0.01);
  c.weight_decay = 0.1;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  OK(cuoptimExcludeFromWeightDecay(r.opt, "bias")); /* before the variables exist */
  for (int k = 0; k < 4; k++) test_rig_add(&r, WD_NAMES[k], WD_INITS[k], WD_COUNTS[k]);
  OK(cuoptimExcludeFromWeightDecay(r.opt, "norm_gamma$")); /* after */
  for (int k = 0; k < 4; k++) {
    int uses = -1;
    OK(cuoptimUsesWeightDecay(r.opt, k, &uses));
    cr_assert_eq(uses, WD_KERAS_USES[k] ? 1 : 0, "%s: cuoptimUsesWeightDecay = %d, Keras _use_weight_decay = %d",
                 WD_NAMES[k], uses, (int)WD_KERAS_USES[k]);
  }
  for (int s = 0; s < 3; s++) {
    const float *grads[4] = {wd_grad(0, s), wd_grad(1, s), wd_grad(2, s), wd_grad(3, s)};
    rig_apply(&r, grads);
    for (int k = 0; k < 4; k++) {
      float got[3];
      test_rig_get(&r, k, got);
      expect_close(got, wd_after(k, s), WD_COUNTS[k], RTOL, ATOL, "%s after step %d (%s)", WD_NAMES[k], s + 1,
                   test_backend_name(b));
    }
  }
  test_rig_destroy(&r);
}

/* Regexes are searched anywhere in the name (re.search), not matched from the start. */
Test(features, weight_decay_exclusion_regex_semantics) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.1);
  c.weight_decay = 0.01;
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
  static float buffer[6];
  static const char *const names[6] = {"dense_bias", "bias_dense", "dense_kernel", "BIAS", "layer_norm_beta", "x"};
  static const int uses_want[6] = {0, 0, 1, 1, 0, 1};
  OK(cuoptimExcludeFromWeightDecay(opt, "bias"));
  OK(cuoptimExcludeFromWeightDecay(opt, "^layer_(norm|scale)_.*a$"));
  for (int k = 0; k < 6; k++) {
    cuoptimVariable_t v;
    OK(cuoptimAddVariable(opt, names[k], buffer + k, CUOPTIM_FLOAT32, 1, &v));
  }
  for (int k = 0; k < 6; k++) {
    int uses = -1;
    OK(cuoptimUsesWeightDecay(opt, k, &uses));
    cr_assert_eq(uses, uses_want[k], "%s: uses weight decay = %d, re.search gives %d", names[k], uses, uses_want[k]);
  }
  OK(cuoptimDestroy(opt));
}

/* weight_decay None: no variable is decayed. */
Test(features, no_weight_decay_means_no_variable_uses_it) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 0.1);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
  static float buffer[2];
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "kernel", buffer, CUOPTIM_FLOAT32, 2, &v));
  int uses = -1;
  OK(cuoptimUsesWeightDecay(opt, v, &uses));
  cr_assert_eq(uses, 0);
  OK(cuoptimDestroy(opt));
}

/* The decay multiplies the scheduled learning rate of the step. */
static void weight_decay_with_schedule(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAMW, 0.1);
  OK(cuoptimScheduleInit(&c.learning_rate, CUOPTIM_SCHEDULE_EXPONENTIAL));
  c.learning_rate.initial_learning_rate = 0.1;
  c.learning_rate.decay_steps = 1;
  c.learning_rate.decay_rate = 0.5;
  c.weight_decay = 0.2;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float w0[2] = {2.0f, -4.0f}, zeros[2] = {0.0f, 0.0f};
  test_rig_add(&r, "w", w0, 2);
  for (int s = 0; s < 4; s++) {
    rig_apply1(&r, zeros);
    float got[2];
    test_rig_get(&r, 0, got);
    expect_close(got, WD_SCHEDULE_AFTER[s], 2, RTOL, ATOL, "AdamW decay with a schedule, step %d", s + 1);
  }
  test_rig_destroy(&r);
}

BOTH_BACKENDS(weight_decay_exclusion_matches_keras, weight_decay_exclusion)
BOTH_BACKENDS(weight_decay_with_schedule_matches_keras, weight_decay_with_schedule)

/* =================================================================================================
 * B. EMA with overwrite frequency, finalize_variable_values
 * ================================================================================================= */

static void ema_overwrite_and_finalize(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.1);
  c.momentum = 0.9;
  c.use_ema = 1;
  c.ema_momentum = 0.8;
  c.ema_overwrite_frequency = 3;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float a0[3] = {1.0f, 2.0f, 3.0f}, b0[2] = {-1.0f, 0.5f};
  test_rig_add(&r, "a", a0, 3);
  test_rig_add(&r, "b", b0, 2);
  for (int s = 0; s < 7; s++) {
    const float *grads[2] = {EMA_GRADS_A[s], EMA_GRADS_B[s]};
    rig_apply(&r, grads);
    float va[3], vb[2], aa[3], ab[2];
    test_rig_get(&r, 0, va);
    test_rig_get(&r, 1, vb);
    weight_floats(r.opt, "a_average", aa, 3);
    weight_floats(r.opt, "b_average", ab, 2);
    expect_close(va, EMA_VAR_A[s], 3, RTOL, ATOL, "a after step %d", s + 1);
    expect_close(vb, EMA_VAR_B[s], 2, RTOL, ATOL, "b after step %d", s + 1);
    expect_close(aa, EMA_AVG_A[s], 3, RTOL, ATOL, "a_average after step %d", s + 1);
    expect_close(ab, EMA_AVG_B[s], 2, RTOL, ATOL, "b_average after step %d", s + 1);
  }
  OK(cuoptimFinalizeVariableValues(r.opt, NULL));
  float va[3], vb[2];
  test_rig_get(&r, 0, va);
  test_rig_get(&r, 1, vb);
  expect_close(va, EMA_FINAL_A, 3, RTOL, ATOL, "a after finalize_variable_values");
  expect_close(vb, EMA_FINAL_B, 2, RTOL, ATOL, "b after finalize_variable_values");
  cr_assert_eq(test_iterations(r.opt), 7, "finalizing is not a step");
  test_rig_destroy(&r);
}
BOTH_BACKENDS(ema_overwrite_frequency_and_finalize_match_keras, ema_overwrite_and_finalize)

/* =================================================================================================
 * C. Gradient accumulation
 * ================================================================================================= */

/* iterations floor-divided; the schedule sees the raw micro-step counter. */
static void accumulation_with_schedule(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 0.1);
  OK(cuoptimScheduleInit(&c.learning_rate, CUOPTIM_SCHEDULE_EXPONENTIAL));
  c.learning_rate.initial_learning_rate = 0.1;
  c.learning_rate.decay_steps = 2;
  c.learning_rate.decay_rate = 0.5;
  c.gradient_accumulation_steps = 3;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float w0[2] = {1.0f, 2.0f};
  test_rig_add(&r, "w", w0, 2);
  float lr = NAN;
  OK(cuoptimGetLearningRate(r.opt, &lr));
  cr_assert_eq(lr, ACC_LR0);
  for (int s = 0; s < 8; s++) {
    rig_apply1(&r, ACC_GRADS[s]);
    float w[2], acc[2];
    test_rig_get(&r, 0, w);
    expect_close(w, ACC_W[s], 2, RTOL, ATOL, "w after micro-step %d", s + 1);
    weight_floats(r.opt, "w_gradient_accumulator", acc, 2);
    expect_close(acc, ACC_ACCUMULATOR[s], 2, RTOL, ATOL, "accumulator after micro-step %d", s + 1);
    cr_assert_eq(test_iterations(r.opt), ACC_ITERATIONS[s], "optimizer.iterations after micro-step %d", s + 1);
    cr_assert_eq(weight_scalar(r.opt, "iteration"), (double)ACC_RAW[s], "_iterations after micro-step %d", s + 1);
    OK(cuoptimGetLearningRate(r.opt, &lr));
    cr_assert(fabs(lr - ACC_LR[s]) <= RTOL * ACC_LR[s], "learning rate after micro-step %d: %.9g, Keras %.9g", s + 1,
              (double)lr, (double)ACC_LR[s]);
  }
  test_rig_destroy(&r);
}

/* EMA runs on every micro-step, with the floor-divided iterations. */
static void accumulation_with_ema(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.5);
  c.momentum = 0.5;
  c.gradient_accumulation_steps = 2;
  c.use_ema = 1;
  c.ema_momentum = 0.5;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float w0[2] = {1.0f, -1.0f};
  test_rig_add(&r, "w", w0, 2);
  for (int s = 0; s < 6; s++) {
    rig_apply1(&r, ACC_GRADS[s]);
    float w[2], avg[2];
    test_rig_get(&r, 0, w);
    weight_floats(r.opt, "w_average", avg, 2);
    expect_close(w, ACC_EMA_W[s], 2, RTOL, ATOL, "w after micro-step %d", s + 1);
    expect_close(avg, ACC_EMA_AVG[s], 2, RTOL, ATOL, "w_average after micro-step %d", s + 1);
  }
  test_rig_destroy(&r);
}

BOTH_BACKENDS(gradient_accumulation_with_schedule_matches_keras, accumulation_with_schedule)
BOTH_BACKENDS(gradient_accumulation_with_ema_matches_keras, accumulation_with_ema)

/* =================================================================================================
 * D. loss_scale_factor
 * ================================================================================================= */

static void loss_scale_factor(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 0.1);
  c.loss_scale_factor = 100.0;
  cuoptimConfig_t plain = test_config_lr(CUOPTIM_ADAM, 0.1);
  test_rig_t r, q;
  test_rig_init(&r, &c, b);
  test_rig_init(&q, &plain, b);
  static const float w0[3] = {1.0f, 2.0f, 3.0f};
  test_rig_add(&r, "w", w0, 3);
  test_rig_add(&q, "w", w0, 3);
  for (int s = 0; s < 3; s++) {
    rig_apply1(&r, LSF_SCALED_GRADS[s]);
    rig_apply1(&q, LSF_GRADS[s]);
    float w[3], unscaled[3];
    test_rig_get(&r, 0, w);
    test_rig_get(&q, 0, unscaled);
    expect_close(w, LSF_W[s], 3, RTOL, ATOL, "loss_scale_factor=100: w after step %d", s + 1);
    expect_close(w, unscaled, 3, 1e-5, 1e-6, "loss_scale_factor=100 vs unscaled gradients, step %d", s + 1);
  }
  test_rig_destroy(&r);
  test_rig_destroy(&q);
}
BOTH_BACKENDS(loss_scale_factor_matches_keras, loss_scale_factor)

/* =================================================================================================
 * E. LossScaleOptimizer (dynamic_loss_scale)
 * ================================================================================================= */

typedef struct {
  float w[2], m[2], v[2];
  double counter, scale, raw;
  int64_t iterations;
} lso_state_t;

static void lso_read(test_rig_t *r, lso_state_t *s) {
  test_rig_get(r, 0, s->w);
  weight_floats(r->opt, "w_momentum", s->m, 2);
  weight_floats(r->opt, "w_velocity", s->v, 2);
  s->counter = weight_scalar(r->opt, "step_counter");
  s->scale = weight_scalar(r->opt, "dynamic_scale");
  s->raw = weight_scalar(r->opt, "iteration");
  s->iterations = test_iterations(r->opt);
}

static void loss_scale_optimizer(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 0.1);
  c.dynamic_loss_scale = 1;
  c.initial_scale = 8.0;
  c.dynamic_growth_steps = 2;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float w0[2] = {1.0f, 2.0f};
  test_rig_add(&r, "w", w0, 2);
  /* Keras's LossScaleOptimizer.variables: its own iteration and learning_rate (never stepped),
   * step_counter, dynamic_scale, then the inner Adam's iteration, learning_rate, slots. */
  static const char *const first[8] = {"iteration", "learning_rate", "step_counter", "dynamic_scale",
                                       "iteration", "learning_rate", "w_momentum",   "w_velocity"};
  int count = 0;
  OK(cuoptimGetWeightCount(r.opt, &count));
  cr_assert_eq(count, 8);
  for (int i = 0; i < 8; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(r.opt, i, &info));
    cr_assert_str_eq(info.name, first[i]);
  }
  float scale = 0;
  OK(cuoptimGetLossScale(r.opt, &scale));
  cr_assert_eq(scale, 8.0f);
  lso_state_t before, after;
  lso_read(&r, &before);
  for (int s = 0; s < 10; s++) {
    rig_apply1(&r, LSO_GRADS[s]);
    lso_read(&r, &after);
    int finite = isfinite(LSO_GRADS[s][0]) && isfinite(LSO_GRADS[s][1]);
    if (!finite) {
      /* Skipped: nothing but the scale (halved) and the counter (reset) changes. */
      cr_assert_eq(memcmp(after.w, before.w, sizeof after.w), 0, "step %d (non-finite) changed w", s + 1);
      cr_assert_eq(memcmp(after.m, before.m, sizeof after.m), 0, "step %d (non-finite) changed w_momentum", s + 1);
      cr_assert_eq(memcmp(after.v, before.v, sizeof after.v), 0, "step %d (non-finite) changed w_velocity", s + 1);
      cr_assert_eq(after.iterations, before.iterations, "step %d (non-finite) counted", s + 1);
      cr_assert_eq(after.raw, before.raw);
      cr_assert_eq(after.scale, before.scale * 0.5, "step %d: scale %g -> %g, not halved", s + 1, before.scale,
                   after.scale);
      cr_assert_eq(after.counter, 0.0);
    }
    expect_close(after.w, LSO_W[s], 2, RTOL, ATOL, "LSO: w after step %d", s + 1);
    expect_close(after.m, LSO_MOMENTUM[s], 2, RTOL, ATOL, "LSO: w_momentum after step %d", s + 1);
    expect_close(after.v, LSO_VELOCITY[s], 2, RTOL, ATOL, "LSO: w_velocity after step %d", s + 1);
    cr_assert_eq(after.iterations, LSO_ITERATIONS[s], "LSO: iterations after step %d: %lld, Keras %lld", s + 1,
                 (long long)after.iterations, (long long)LSO_ITERATIONS[s]);
    cr_assert_eq(after.counter, (double)LSO_STEP_COUNTER[s], "LSO: step_counter after step %d", s + 1);
    cr_assert_eq(after.scale, (double)LSO_SCALE[s], "LSO: dynamic_scale after step %d: %g, Keras %g", s + 1,
                 after.scale, (double)LSO_SCALE[s]);
    OK(cuoptimGetLossScale(r.opt, &scale));
    cr_assert_eq(scale, LSO_SCALE[s]);
    double outer = -1;
    OK(cuoptimGetWeights(r.opt, 0, &outer, 1));
    cr_assert_eq(outer, 0.0, "the LossScaleOptimizer's own iteration stays 0 in Keras");
    OK(cuoptimGetWeights(r.opt, 1, &outer, 1));
    cr_assert_eq(outer, 0.0, "the LossScaleOptimizer's own learning_rate is 0.0 in Keras");
    before = after;
  }
  test_rig_destroy(&r);
}
BOTH_BACKENDS(loss_scale_optimizer_matches_keras, loss_scale_optimizer)

/* The scale doubles after dynamic_growth_steps good steps in a row, and is halved without bound. */
static void loss_scale_growth_and_backoff(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.0);
  c.dynamic_loss_scale = 1;
  c.initial_scale = 1.0;
  c.dynamic_growth_steps = 3;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float w0[1] = {1.0f}, good[1] = {1.0f};
  const float bad[1] = {NAN};
  test_rig_add(&r, "w", w0, 1);
  float scale;
  for (int s = 1; s <= 9; s++) {
    rig_apply1(&r, good);
    OK(cuoptimGetLossScale(r.opt, &scale));
    cr_assert_eq(scale, (float)(1 << (s / 3)), "after %d good steps: %g", s, (double)scale);
  }
  rig_apply1(&r, good);
  rig_apply1(&r, good);
  rig_apply1(&r, bad); /* interrupts the run: the counter restarts */
  rig_apply1(&r, good);
  rig_apply1(&r, good);
  OK(cuoptimGetLossScale(r.opt, &scale));
  cr_assert_eq(scale, 4.0f, "8 halved once, and only 2 good steps since: %g", (double)scale);
  for (int s = 0; s < 200; s++) rig_apply1(&r, bad);
  OK(cuoptimGetLossScale(r.opt, &scale));
  cr_assert_eq(scale, 0.0f, "no lower bound: 4 * 0.5^200 underflows to 0, got %g", (double)scale);
  cr_assert_eq(test_iterations(r.opt), 13);
  test_rig_destroy(&r);
}
BOTH_BACKENDS(loss_scale_growth_and_backoff_match_keras, loss_scale_growth_and_backoff)

/* =================================================================================================
 * F. A gradient list covering only some variables
 * ================================================================================================= */

/* Adam(learning_rate=0.1, use_ema=True, ema_momentum=0.9) with the variables v0, v1, v2. */
static void partial_rig_init(test_rig_t *r, cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 0.1);
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  test_rig_init(r, &c, b);
  static const float v0[2] = {1.0f, 2.0f}, v1[2] = {3.0f, 4.0f}, v2[2] = {-1.0f, 1.0f};
  test_rig_add(r, "v0", v0, 2);
  test_rig_add(r, "v1", v1, 2);
  test_rig_add(r, "v2", v2, 2);
}

static void partial_gradients(cuoptimBackend_t b) {
  test_rig_t r;
  partial_rig_init(&r, b);
  static const char *const names[3] = {"v0", "v1", "v2"};
  for (int s = 0; s < 4; s++) {
    const float *grads[3];
    for (int k = 0; k < 3; k++) grads[k] = PART_HAS_GRAD[s][k] ? PART_GRADS[s][k] : NULL;
    rig_apply(&r, grads);
    for (int k = 0; k < 3; k++) {
      float got[2];
      char slot[64];
      test_rig_get(&r, k, got);
      expect_close(got, &PART_VALUES[s][2 * k], 2, RTOL, ATOL, "%s after step %d", names[k], s + 1);
      snprintf(slot, sizeof slot, "%s_average", names[k]);
      weight_floats(r.opt, slot, got, 2);
      expect_close(got, &PART_AVERAGES[s][2 * k], 2, RTOL, ATOL, "%s after step %d", slot, s + 1);
      snprintf(slot, sizeof slot, "%s_momentum", names[k]);
      weight_floats(r.opt, slot, got, 2);
      expect_close(got, &PART_MOMENTUM[s][2 * k], 2, RTOL, ATOL, "%s after step %d", slot, s + 1);
      snprintf(slot, sizeof slot, "%s_velocity", names[k]);
      weight_floats(r.opt, slot, got, 2);
      expect_close(got, &PART_VELOCITY[s][2 * k], 2, RTOL, ATOL, "%s after step %d", slot, s + 1);
    }
    cr_assert_eq(test_iterations(r.opt), s + 1);
  }
  test_rig_destroy(&r);
}
BOTH_BACKENDS(partial_gradient_list_matches_keras, partial_gradients)

/* A listed pair whose gradient is NULL is dropped like an unlisted one (Keras's None gradient). */
static void null_gradient_pairs(cuoptimBackend_t b) {
  test_rig_t r;
  partial_rig_init(&r, b);
  for (int s = 0; s < 4; s++) {
    cuoptimGradient_t list[3];
    for (int k = 0; k < 3; k++) {
      test_mem_upload(b, r.grad[k], PART_GRADS[s][k], 2 * sizeof(float));
      list[k] = (cuoptimGradient_t){.variable = 2 - k, /* any order */
                                    .grad = PART_HAS_GRAD[s][2 - k] ? r.grad[2 - k] : NULL,
                                    .dtype = CUOPTIM_FLOAT32};
    }
    OK(cuoptimApplyGradients(r.opt, 3, list, NULL));
  }
  for (int k = 0; k < 3; k++) {
    float got[2];
    test_rig_get(&r, k, got);
    expect_close(got, &PART_VALUES[3][2 * k], 2, RTOL, ATOL, "variable %d after 4 steps", k);
  }
  test_rig_destroy(&r);
}
BOTH_BACKENDS(null_gradient_pairs_are_dropped_like_keras, null_gradient_pairs)

/* =================================================================================================
 * G. cuoptimMinimize
 * ================================================================================================= */

typedef struct {
  test_rig_t *rig;
  const float *target;
  cuoptimGradient_t grads[1];
  int calls;
} quadratic_t;

/* grad of 0.5 * ||w - t||^2 at the current w, in float32. */
static cuoptimStatus_t quadratic_gradient(void *user, cuoptimOptimizer_t opt, cuoptimStream_t stream, int *n,
                                          const cuoptimGradient_t **grads) {
  quadratic_t *q = user;
  cr_assert_eq(opt, q->rig->opt);
  float w[3], g[3];
  test_rig_get(q->rig, 0, w);
  for (int i = 0; i < 3; i++) g[i] = w[i] - q->target[i];
  test_mem_upload(q->rig->backend, q->rig->grad[0], g, sizeof g);
  q->grads[0] = (cuoptimGradient_t){.variable = 0, .grad = q->rig->grad[0], .dtype = CUOPTIM_FLOAT32};
  *n = 1;
  *grads = q->grads;
  q->calls++;
  return CUOPTIM_STATUS_SUCCESS;
}

static void minimize(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_NADAM, 0.1);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float w0[3] = {1.0f, -2.0f, 3.0f}, target[3] = {0.5f, 0.5f, -1.0f};
  test_rig_add(&r, "w", w0, 3);
  quadratic_t q = {.rig = &r, .target = target};
  for (int s = 0; s < 4; s++) {
    OK(cuoptimMinimize(r.opt, quadratic_gradient, &q, NULL));
    float w[3];
    test_rig_get(&r, 0, w);
    expect_close(w, MIN_W[s], 3, RTOL, ATOL, "Nadam minimize: w after step %d", s + 1);
  }
  cr_assert_eq(q.calls, 4);
  cr_assert_eq(test_iterations(r.opt), 4);
  /* Nadam's u_product: the last state entry (Keras: an unnamed scalar variable, "variable"). */
  int count = 0;
  OK(cuoptimGetWeightCount(r.opt, &count));
  double u = NAN;
  OK(cuoptimGetWeights(r.opt, count - 1, &u, 1));
  float uf = (float)u;
  expect_close(&uf, &MIN_U_PRODUCT, 1, RTOL, ATOL, "Nadam u_product after 4 steps");
  test_rig_destroy(&r);
}
BOTH_BACKENDS(minimize_matches_keras, minimize)

/* =================================================================================================
 * J. Clipping across variables (global_clipnorm over all gradients, clipnorm per variable)
 * ================================================================================================= */

static void run_clip_across(cuoptimBackend_t b, int global, const float want[2][3]) {
  test_require_backend(b);
  cuoptimConfig_t c = global ? test_config_lr(CUOPTIM_ADAM, 0.1) : test_config_lr(CUOPTIM_SGD, 1.0);
  if (global)
    c.global_clipnorm = 1.0;
  else
    c.clipnorm = 1.0;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float a0[2] = {1.0f, 1.0f}, b0[1] = {1.0f};
  test_rig_add(&r, "a", a0, 2);
  test_rig_add(&r, "b", b0, 1);
  static const float ga1[2] = {3.0f, 4.0f}, gb1[1] = {12.0f}, ga2[2] = {0.3f, 0.4f};
  const float *step1[2] = {ga1, gb1}, *step2[2] = {ga2, NULL};
  const float *const *steps[2] = {step1, step2};
  for (int s = 0; s < 2; s++) {
    rig_apply(&r, steps[s]);
    float got[3];
    test_rig_get(&r, 0, got);
    test_rig_get(&r, 1, got + 2);
    expect_close(got, want[s], 3, RTOL, ATOL, "%s: a, b after step %d", global ? "global_clipnorm" : "clipnorm", s + 1);
  }
  test_rig_destroy(&r);
}
static void clip_global(cuoptimBackend_t b) { run_clip_across(b, 1, CLIP_GLOBAL); }
static void clip_per_variable(cuoptimBackend_t b) { run_clip_across(b, 0, CLIP_CLIPNORM); }
BOTH_BACKENDS(global_clipnorm_across_variables_matches_keras, clip_global)
BOTH_BACKENDS(clipnorm_per_variable_matches_keras, clip_per_variable)

/* =================================================================================================
 * H. The Keras-ordered state: names, and Get/SetWeights round trips
 * ================================================================================================= */

/* [v.name for v in optimizer.variables] of real Keras 3.15.1 after opt.build([kernel, bias]), kernel
 * of 2 elements and bias of 1. */
typedef struct {
  const char *what;
  void (*configure)(cuoptimConfig_t *c);
  cuoptimOptimizerKind_t kind;
  const char *names[16];
} names_case;

static void cfg_sgd_momentum(cuoptimConfig_t *c) { c->momentum = 0.9; }
static void cfg_none(cuoptimConfig_t *c) { (void)c; }
static void cfg_rmsprop(cuoptimConfig_t *c) {
  c->momentum = 0.5;
  c->centered = 1;
}
static void cfg_amsgrad(cuoptimConfig_t *c) { c->amsgrad = 1; }
static void cfg_schedule(cuoptimConfig_t *c) {
  OK(cuoptimScheduleInit(&c->learning_rate, CUOPTIM_SCHEDULE_EXPONENTIAL));
  c->learning_rate.initial_learning_rate = 0.1;
  c->learning_rate.decay_steps = 2;
  c->learning_rate.decay_rate = 0.5;
}
static void cfg_lso_sgd_names(cuoptimConfig_t *c) {
  c->momentum = 0.9;
  c->dynamic_loss_scale = 1;
}
static void cfg_ema_accumulation(cuoptimConfig_t *c) {
  c->use_ema = 1;
  c->gradient_accumulation_steps = 2;
}

static const names_case NAMES_CASES[] = {
    {"SGD(momentum=0.9)",
     cfg_sgd_momentum,
     CUOPTIM_SGD,
     {"iteration", "learning_rate", "kernel_momentum", "bias_momentum", NULL}},
    {"SGD()", cfg_none, CUOPTIM_SGD, {"iteration", "learning_rate", NULL}},
    {"RMSprop(momentum=0.5, centered=True)",
     cfg_rmsprop,
     CUOPTIM_RMSPROP,
     {"iteration", "learning_rate", "kernel_velocity", "bias_velocity", "kernel_momentum", "bias_momentum",
      "kernel_average_gradient", "bias_average_gradient", NULL}},
    {"Adagrad()",
     cfg_none,
     CUOPTIM_ADAGRAD,
     {"iteration", "learning_rate", "kernel_accumulator", "bias_accumulator", NULL}},
    {"Adadelta()",
     cfg_none,
     CUOPTIM_ADADELTA,
     {"iteration", "learning_rate", "kernel_accumulated_grad", "kernel_accumulated_delta_var", "bias_accumulated_grad",
      "bias_accumulated_delta_var", NULL}},
    {"Adam(amsgrad=True)",
     cfg_amsgrad,
     CUOPTIM_ADAM,
     {"iteration", "learning_rate", "kernel_momentum", "kernel_velocity", "bias_momentum", "bias_velocity",
      "kernel_velocity_hat", "bias_velocity_hat", NULL}},
    {"AdamW(learning_rate=ExponentialDecay(0.1, 2, 0.5))",
     cfg_schedule,
     CUOPTIM_ADAMW,
     {"iteration", "kernel_momentum", "kernel_velocity", "bias_momentum", "bias_velocity", NULL}},
    {"Adamax()",
     cfg_none,
     CUOPTIM_ADAMAX,
     {"iteration", "learning_rate", "kernel_momentum", "kernel_norm", "bias_momentum", "bias_norm", NULL}},
    {"Nadam(use_ema=True, gradient_accumulation_steps=2)",
     cfg_ema_accumulation,
     CUOPTIM_NADAM,
     {"iteration", "learning_rate", "kernel_average", "bias_average", "kernel_gradient_accumulator",
      "bias_gradient_accumulator", "kernel_momentum", "kernel_velocity", "bias_momentum", "bias_velocity", "variable",
      NULL}},
    {"Lion()", cfg_none, CUOPTIM_LION, {"iteration", "learning_rate", "kernel_momentum", "bias_momentum", NULL}},
    {"Lamb()",
     cfg_none,
     CUOPTIM_LAMB,
     {"iteration", "learning_rate", "kernel_momentum", "kernel_velocity", "bias_momentum", "bias_velocity", NULL}},
    {"Ftrl()",
     cfg_none,
     CUOPTIM_FTRL,
     {"iteration", "learning_rate", "kernel_accumulator", "kernel_linear", "bias_accumulator", "bias_linear", NULL}},
    /* LossScaleOptimizer(SGD(momentum=0.9)) */
    {"LossScaleOptimizer(SGD(momentum=0.9))",
     cfg_lso_sgd_names,
     CUOPTIM_SGD,
     {"iteration", "learning_rate", "step_counter", "dynamic_scale", "iteration", "learning_rate", "kernel_momentum",
      "bias_momentum", NULL}},
};

Test(features, state_names_and_order_match_keras) {
  static float kernel[2], bias[1];
  for (size_t i = 0; i < sizeof NAMES_CASES / sizeof NAMES_CASES[0]; i++) {
    const names_case *k = &NAMES_CASES[i];
    cuoptimConfig_t c;
    OK(cuoptimConfigInit(&c, k->kind));
    k->configure(&c);
    cuoptimOptimizer_t opt = NULL;
    OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
    cuoptimVariable_t v;
    OK(cuoptimAddVariable(opt, "kernel", kernel, CUOPTIM_FLOAT32, 2, &v));
    OK(cuoptimAddVariable(opt, "bias", bias, CUOPTIM_FLOAT32, 1, &v));
    int count = 0, want = 0;
    while (k->names[want]) want++;
    OK(cuoptimGetWeightCount(opt, &count));
    cr_expect_eq(count, want, "%s: %d state entries, Keras has %d", k->what, count, want);
    for (int j = 0; j < count && j < want; j++) {
      cuoptimWeightInfo_t info;
      OK(cuoptimGetWeightInfo(opt, j, &info));
      cr_expect_str_eq(info.name, k->names[j], "%s: entry %d is \"%s\", Keras: \"%s\"", k->what, j, info.name,
                       k->names[j]);
      size_t elements = strstr(info.name, "kernel") == info.name ? 2 : 1;
      cr_expect_eq(info.count, elements, "%s: entry %s has %zu elements", k->what, info.name, info.count);
      cr_expect_eq(info.is_integer, strcmp(info.name, "iteration") == 0 || strcmp(info.name, "step_counter") == 0,
                   "%s: entry %s is_integer", k->what, info.name);
    }
    OK(cuoptimDestroy(opt));
  }
}

/* Initial state values as Keras builds them: accumulators at initial_accumulator_value, the rest
 * zero, u_product 1, the learning rate variable, the loss-scale counters. */
Test(features, initial_state_matches_keras) {
  static float kernel[2];
  cuoptimConfig_t c = test_config_lr(CUOPTIM_FTRL, 0.5);
  c.initial_accumulator_value = 0.25;
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "kernel", kernel, CUOPTIM_FLOAT32, 2, &v));
  float acc[2], lin[2];
  weight_floats(opt, "kernel_accumulator", acc, 2);
  weight_floats(opt, "kernel_linear", lin, 2);
  cr_assert(acc[0] == 0.25f && acc[1] == 0.25f && lin[0] == 0.0f && lin[1] == 0.0f);
  cr_assert_eq(weight_scalar(opt, "learning_rate"), 0.5);
  cr_assert_eq(weight_scalar(opt, "iteration"), 0.0);
  OK(cuoptimDestroy(opt));

  c = test_config_lr(CUOPTIM_NADAM, 0.001);
  c.dynamic_loss_scale = 1;
  c.initial_scale = 512.0;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
  OK(cuoptimAddVariable(opt, "kernel", kernel, CUOPTIM_FLOAT32, 2, &v));
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  double u = 0;
  OK(cuoptimGetWeights(opt, count - 1, &u, 1));
  cr_assert_eq(u, 1.0, "u_product starts at 1.0");
  cr_assert_eq(weight_scalar(opt, "step_counter"), 0.0);
  cr_assert_eq(weight_scalar(opt, "dynamic_scale"), 512.0);
  cr_assert_eq(weight_scalar(opt, "learning_rate"), (double)0.001f, "the inner optimizer's learning_rate");
  double outer = -1;
  OK(cuoptimGetWeights(opt, 0, &outer, 1));
  cr_assert_eq(outer, 0.0, "LossScaleOptimizer's own iteration");
  OK(cuoptimGetWeights(opt, 1, &outer, 1));
  cr_assert_eq(outer, 0.0, "LossScaleOptimizer's own learning_rate (built with 0.0)");
  OK(cuoptimDestroy(opt));
}

/* test_set_weights, generalised: an optimizer that stepped 3 times; its whole state copied into a
 * fresh one (variables copied by the caller, as they are the caller's); both take 2 more steps and
 * must agree bit for bit. */
typedef struct {
  const char *what;
  cuoptimOptimizerKind_t kind;
  void (*configure)(cuoptimConfig_t *c);
} roundtrip_case;

static void cfg_nadam(cuoptimConfig_t *c) { c->learning_rate.initial_learning_rate = 0.05; }
static void cfg_adam_all(cuoptimConfig_t *c) {
  c->amsgrad = 1;
  c->use_ema = 1;
  c->ema_momentum = 0.7;
  c->gradient_accumulation_steps = 2;
  c->weight_decay = 0.01;
}
static void cfg_ftrl(cuoptimConfig_t *c) {
  c->learning_rate.initial_learning_rate = 0.1;
  c->l1_regularization_strength = 0.01;
  c->l2_shrinkage_regularization_strength = 0.02;
  c->beta = 0.1;
}
static void cfg_lso_sgd(cuoptimConfig_t *c) {
  c->momentum = 0.9;
  c->dynamic_loss_scale = 1;
  c->initial_scale = 4.0;
  c->dynamic_growth_steps = 2;
}
static void cfg_lamb_schedule(cuoptimConfig_t *c) {
  OK(cuoptimScheduleInit(&c->learning_rate, CUOPTIM_SCHEDULE_COSINE));
  c->learning_rate.initial_learning_rate = 0.1;
  c->learning_rate.decay_steps = 4;
}

static const roundtrip_case ROUNDTRIP_CASES[] = {
    {"Nadam", CUOPTIM_NADAM, cfg_nadam},
    {"Adam(amsgrad, EMA, accumulation, weight decay)", CUOPTIM_ADAM, cfg_adam_all},
    {"RMSprop(momentum, centered)", CUOPTIM_RMSPROP, cfg_rmsprop},
    {"Adadelta", CUOPTIM_ADADELTA, cfg_none},
    {"Adagrad", CUOPTIM_ADAGRAD, cfg_none},
    {"Adamax", CUOPTIM_ADAMAX, cfg_none},
    {"Lion", CUOPTIM_LION, cfg_none},
    {"Lamb(CosineDecay)", CUOPTIM_LAMB, cfg_lamb_schedule},
    {"Ftrl", CUOPTIM_FTRL, cfg_ftrl},
    {"LossScaleOptimizer(SGD(momentum=0.9))", CUOPTIM_SGD, cfg_lso_sgd},
};

static void roundtrip_grads(int step, float *g, float scale) {
  for (int i = 0; i < 5; i++) g[i] = scale * (0.1f * (float)((step * 7 + i * 3) % 11) - 0.45f);
}

static void set_weights_roundtrip(cuoptimBackend_t b) {
  test_require_backend(b);
  static const float k0[3] = {0.5f, -1.0f, 2.0f}, b0[2] = {0.25f, -0.125f};
  for (size_t i = 0; i < sizeof ROUNDTRIP_CASES / sizeof ROUNDTRIP_CASES[0]; i++) {
    const roundtrip_case *rc = &ROUNDTRIP_CASES[i];
    cuoptimConfig_t c;
    OK(cuoptimConfigInit(&c, rc->kind));
    rc->configure(&c);
    float scale = c.dynamic_loss_scale ? 4.0f : 1.0f;
    test_rig_t a, f;
    test_rig_init(&a, &c, b);
    test_rig_add(&a, "kernel", k0, 3);
    test_rig_add(&a, "bias", b0, 2);
    float g[5];
    for (int s = 0; s < 3; s++) {
      roundtrip_grads(s, g, scale);
      const float *grads[2] = {g, g + 3};
      rig_apply(&a, grads);
    }
    float ka[3], ba[2];
    test_rig_get(&a, 0, ka);
    test_rig_get(&a, 1, ba);
    test_rig_init(&f, &c, b);
    test_rig_add(&f, "kernel", ka, 3);
    test_rig_add(&f, "bias", ba, 2);
    int na = 0, nf = 0;
    OK(cuoptimGetWeightCount(a.opt, &na));
    OK(cuoptimGetWeightCount(f.opt, &nf));
    cr_assert_eq(na, nf, "%s", rc->what);
    double values[8];
    for (int w = 0; w < na; w++) {
      cuoptimWeightInfo_t info;
      OK(cuoptimGetWeightInfo(a.opt, w, &info));
      OK(cuoptimGetWeights(a.opt, w, values, info.count));
      OK(cuoptimSetWeights(f.opt, w, values, info.count));
    }
    cr_assert_eq(test_iterations(f.opt), test_iterations(a.opt), "%s: iterations after the copy", rc->what);
    float lr_a, lr_f;
    OK(cuoptimGetLearningRate(a.opt, &lr_a));
    OK(cuoptimGetLearningRate(f.opt, &lr_f));
    cr_assert_eq(lr_a, lr_f, "%s: learning rate after the copy", rc->what);
    for (int s = 3; s < 5; s++) {
      roundtrip_grads(s, g, scale);
      const float *grads[2] = {g, g + 3};
      rig_apply(&a, grads);
      rig_apply(&f, grads);
    }
    float kf[3], bf[2];
    test_rig_get(&a, 0, ka);
    test_rig_get(&a, 1, ba);
    test_rig_get(&f, 0, kf);
    test_rig_get(&f, 1, bf);
    cr_assert_eq(memcmp(ka, kf, sizeof ka), 0, "%s: kernel differs after the round trip", rc->what);
    cr_assert_eq(memcmp(ba, bf, sizeof ba), 0, "%s: bias differs after the round trip", rc->what);
    for (int w = 0; w < na; w++) {
      cuoptimWeightInfo_t info;
      double other[8];
      OK(cuoptimGetWeightInfo(a.opt, w, &info));
      OK(cuoptimGetWeights(a.opt, w, values, info.count));
      OK(cuoptimGetWeights(f.opt, w, other, info.count));
      cr_assert_eq(memcmp(values, other, info.count * sizeof(double)), 0, "%s: state entry %s differs", rc->what,
                   info.name);
    }
    test_rig_destroy(&a);
    test_rig_destroy(&f);
  }
}
BOTH_BACKENDS(set_weights_round_trip_gives_identical_steps, set_weights_roundtrip)

/* =================================================================================================
 * I. float16 and bfloat16 on the host backend
 *
 * A half-precision variable is updated through an fp32 master copy: after every step its buffer
 * must equal the master rounded to nearest-even, and the master, the slots and the averages must
 * equal those of the same optimizer run on float32 variables initialised from the half values
 * with the half gradients widened to float32. The reference conversions below are the
 * compiler's _Float16 and a bit-level round-to-nearest-even for bfloat16.
 * ================================================================================================= */

static uint16_t to_half(float f) {
  _Float16 h = (_Float16)f;
  uint16_t bits;
  memcpy(&bits, &h, 2);
  return bits;
}
static float from_half(uint16_t bits) {
  _Float16 h;
  memcpy(&h, &bits, 2);
  return (float)h;
}
static uint16_t to_bfloat16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)((u + rounding) >> 16);
}
static float from_bfloat16(uint16_t bits) {
  uint32_t u = (uint32_t)bits << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static uint16_t to_dtype(cuoptimDtype_t d, float f) { return d == CUOPTIM_FLOAT16 ? to_half(f) : to_bfloat16(f); }
static float from_dtype(cuoptimDtype_t d, uint16_t bits) {
  return d == CUOPTIM_FLOAT16 ? from_half(bits) : from_bfloat16(bits);
}

Test(features, reference_half_conversions) {
  cr_assert_eq(to_half(1.0f), 0x3c00);
  cr_assert_eq(to_half(65504.0f), 0x7bff);
  cr_assert_eq(to_half(1.0f + 1.0f / 2048.0f), 0x3c00); /* tie to even */
  cr_assert_eq(to_half(5.96046448e-08f), 0x0001);       /* smallest subnormal */
  cr_assert_eq(to_bfloat16(1.0f), 0x3f80);
  cr_assert_eq(to_bfloat16(1.00390625f), 0x3f80); /* 1 + 2^-8: tie to even */
  cr_assert_eq(to_bfloat16(1.01171875f), 0x3f82); /* 1 + 3*2^-8: tie to even (up) */
  cr_assert_eq(from_bfloat16(0x3f82), 1.015625f);
}

#define HALF_N 6

typedef struct {
  cuoptimOptimizerKind_t kind;
  void (*configure)(cuoptimConfig_t *c);
  cuoptimDtype_t param_dtype, grad_dtype;
  const char *what;
} half_case;

static void cfg_adam_ema(cuoptimConfig_t *c) {
  c->learning_rate.initial_learning_rate = 0.01;
  c->use_ema = 1;
  c->ema_momentum = 0.9;
  c->weight_decay = 0.05;
}
static void cfg_sgd_nesterov(cuoptimConfig_t *c) {
  c->learning_rate.initial_learning_rate = 0.05;
  c->momentum = 0.9;
  c->nesterov = 1;
}
static void cfg_lamb_clip(cuoptimConfig_t *c) {
  c->learning_rate.initial_learning_rate = 0.01;
  c->global_clipnorm = 0.5;
}
static void cfg_lso_adam(cuoptimConfig_t *c) {
  c->learning_rate.initial_learning_rate = 0.01;
  c->dynamic_loss_scale = 1;
  c->initial_scale = 1024.0;
  c->dynamic_growth_steps = 2;
}

static const half_case HALF_CASES[] = {
    {CUOPTIM_ADAM, cfg_adam_ema, CUOPTIM_FLOAT16, CUOPTIM_FLOAT16, "Adam(EMA, wd): float16 params, float16 grads"},
    {CUOPTIM_SGD, cfg_sgd_nesterov, CUOPTIM_BFLOAT16, CUOPTIM_BFLOAT16, "SGD(nesterov): bfloat16 params and grads"},
    {CUOPTIM_LAMB, cfg_lamb_clip, CUOPTIM_FLOAT16, CUOPTIM_FLOAT32,
     "Lamb(global_clipnorm): float16 params, float32 grads"},
    {CUOPTIM_RMSPROP, cfg_rmsprop, CUOPTIM_BFLOAT16, CUOPTIM_FLOAT16, "RMSprop: bfloat16 params, float16 grads"},
    {CUOPTIM_ADAM, cfg_lso_adam, CUOPTIM_FLOAT16, CUOPTIM_FLOAT16, "LossScaleOptimizer(Adam): float16"},
    {CUOPTIM_NADAM, cfg_none, CUOPTIM_FLOAT32, CUOPTIM_BFLOAT16, "Nadam: float32 params, bfloat16 grads"},
    {CUOPTIM_FTRL, cfg_ftrl, CUOPTIM_FLOAT32, CUOPTIM_FLOAT16, "Ftrl: float32 params, float16 grads"},
};

static float half_case_grad(int step, int i, float scale) {
  float g = 0.37f * (float)((step * 5 + i * 3) % 7) - 1.1f + 0.013f * (float)i;
  return g * scale;
}

static void compare_states(cuoptimOptimizer_t got, cuoptimOptimizer_t want, const char *what, int step) {
  int n1 = 0, n2 = 0;
  OK(cuoptimGetWeightCount(got, &n1));
  OK(cuoptimGetWeightCount(want, &n2));
  cr_assert_eq(n1, n2, "%s: state lists differ in length", what);
  for (int w = 0; w < n1; w++) {
    cuoptimWeightInfo_t info;
    double a[HALF_N], b[HALF_N];
    OK(cuoptimGetWeightInfo(got, w, &info));
    OK(cuoptimGetWeights(got, w, a, info.count));
    OK(cuoptimGetWeights(want, w, b, info.count));
    for (size_t i = 0; i < info.count; i++)
      cr_assert(a[i] == b[i] || (isnan(a[i]) && isnan(b[i])), "%s, step %d: %s[%zu] = %.9g, float32 run: %.9g", what,
                step, info.name, i, a[i], b[i]);
  }
}

Test(features, half_precision_matches_float32_master_weights) {
  static const float init[HALF_N] = {0.1f, -0.3333f, 1.7f, 2.0f, -0.005f, 100.25f};
  for (size_t k = 0; k < sizeof HALF_CASES / sizeof HALF_CASES[0]; k++) {
    const half_case *hc = &HALF_CASES[k];
    cuoptimConfig_t c;
    OK(cuoptimConfigInit(&c, hc->kind));
    hc->configure(&c);
    float scale = c.dynamic_loss_scale ? 1024.0f : 1.0f;
    int half_param = hc->param_dtype != CUOPTIM_FLOAT32, half_grad = hc->grad_dtype != CUOPTIM_FLOAT32;

    /* The run under test: parameters and gradients in their dtypes. */
    uint16_t param16[HALF_N], grad16[HALF_N];
    float param32[HALF_N], grad32[HALF_N];
    /* The reference: float32 everywhere, from the same (rounded) values. */
    float ref_param[HALF_N], ref_grad[HALF_N];
    for (int i = 0; i < HALF_N; i++) {
      if (half_param) {
        param16[i] = to_dtype(hc->param_dtype, init[i]);
        ref_param[i] = from_dtype(hc->param_dtype, param16[i]);
      } else {
        param32[i] = ref_param[i] = init[i];
      }
    }
    cuoptimOptimizer_t opt = NULL, ref = NULL;
    OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
    OK(cuoptimCreate(&ref, &c, CUOPTIM_BACKEND_HOST, 0));
    cuoptimVariable_t v;
    OK(cuoptimAddVariable(opt, "w", half_param ? (void *)param16 : (void *)param32, hc->param_dtype, HALF_N, &v));
    OK(cuoptimAddVariable(ref, "w", ref_param, CUOPTIM_FLOAT32, HALF_N, &v));
    for (int s = 0; s < 6; s++) {
      for (int i = 0; i < HALF_N; i++) {
        float g = half_case_grad(s, i, scale);
        if (c.dynamic_loss_scale && s == 3 && i == 2) g = INFINITY; /* one skipped step */
        if (half_grad) {
          grad16[i] = to_dtype(hc->grad_dtype, g);
          ref_grad[i] = from_dtype(hc->grad_dtype, grad16[i]);
        } else {
          grad32[i] = ref_grad[i] = g;
        }
      }
      cuoptimGradient_t g1 = {
          .variable = 0, .grad = half_grad ? (void *)grad16 : (void *)grad32, .dtype = hc->grad_dtype};
      cuoptimGradient_t g2 = {.variable = 0, .grad = ref_grad, .dtype = CUOPTIM_FLOAT32};
      OK(cuoptimApplyGradients(opt, 1, &g1, NULL));
      OK(cuoptimApplyGradients(ref, 1, &g2, NULL));
      for (int i = 0; i < HALF_N; i++) {
        if (half_param)
          cr_assert_eq(param16[i], to_dtype(hc->param_dtype, ref_param[i]),
                       "%s, step %d, element %d: buffer 0x%04x (%.9g), rounded float32 master: 0x%04x (of %.9g)",
                       hc->what, s + 1, i, param16[i], (double)from_dtype(hc->param_dtype, param16[i]),
                       to_dtype(hc->param_dtype, ref_param[i]), (double)ref_param[i]);
        else
          cr_assert_eq(param32[i], ref_param[i], "%s, step %d, element %d: %.9g vs %.9g", hc->what, s + 1, i,
                       (double)param32[i], (double)ref_param[i]);
      }
      compare_states(opt, ref, hc->what, s + 1);
      cr_assert_eq(test_iterations(opt), test_iterations(ref));
    }
    if (c.use_ema) {
      OK(cuoptimFinalizeVariableValues(opt, NULL));
      OK(cuoptimFinalizeVariableValues(ref, NULL));
      for (int i = 0; i < HALF_N; i++)
        cr_assert_eq(param16[i], to_dtype(hc->param_dtype, ref_param[i]), "%s: finalize, element %d", hc->what, i);
    }
    OK(cuoptimDestroy(opt));
    OK(cuoptimDestroy(ref));
  }
}

/* Small updates accumulate in the master even when each one is below half a float16 ulp of the
 * parameter: 2048 + 100 * 0.25 = 2073 exactly in the master -> float16(2073) = 2072 (ulp 2 there),
 * whereas updating the float16 value directly would never move it. */
Test(features, half_master_accumulates_sub_ulp_updates) {
  uint16_t param[1] = {to_half(2048.0f)};
  uint16_t grad[1] = {to_half(-0.25f)};
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 1.0);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "w", param, CUOPTIM_FLOAT16, 1, &v));
  cuoptimGradient_t g = {.variable = v, .grad = grad, .dtype = CUOPTIM_FLOAT16};
  for (int s = 0; s < 100; s++) OK(cuoptimApplyGradients(opt, 1, &g, NULL));
  cr_assert_eq(from_half(param[0]), 2072.0f, "float16 buffer %.9g", (double)from_half(param[0]));
  OK(cuoptimDestroy(opt));
}

/* =================================================================================================
 * Buffers at any alignment (cuoptim.h: "any alignment")
 * ================================================================================================= */

/* Every optimizer (with EMA) on a float32 variable and gradient at addresses that are not 4-byte
 * aligned gives the same steps as on aligned buffers; and float16 at an odd address. */
static void unaligned_buffers(cuoptimBackend_t b) {
  test_require_backend(b);
  static const float w0[5] = {0.5f, -1.0f, 2.0f, 0.25f, -3.0f};
  static const float g[3][5] = {
      {0.1f, -0.2f, 0.3f, 0.0f, 1.0f}, {-0.5f, 0.5f, 0.1f, 0.2f, -0.3f}, {1.0f, 1.0f, -1.0f, 0.5f, 0.0f}};
  const size_t bytes = sizeof w0;
  unsigned char *mem = test_mem_alloc(b, 4 * (bytes + 16));
  float *wa = (float *)mem, *ga = (float *)(mem + bytes + 16);             /* aligned */
  void *wo = mem + 2 * (bytes + 16) + 1, *go = mem + 3 * (bytes + 16) + 3; /* not 4-byte aligned */
  for (int kind = 0; kind < CUOPTIM_OPTIMIZER_COUNT; kind++) {
    if (!cuoptimOptimizerName((cuoptimOptimizerKind_t)kind)) continue;     /* a value no kind has */
    cuoptimConfig_t c = test_config_lr((cuoptimOptimizerKind_t)kind, 0.1);
    c.use_ema = 1;
    if (kind == CUOPTIM_ADAM) c.global_clipnorm = 0.5; /* the inspect pass reads the gradient too */
    if (kind == CUOPTIM_SGD) c.clipnorm = 0.5;
    cuoptimOptimizer_t aligned = NULL, odd = NULL;
    OK(cuoptimCreate(&aligned, &c, b, 0));
    OK(cuoptimCreate(&odd, &c, b, 0));
    test_mem_upload(b, wa, w0, bytes);
    test_mem_upload(b, wo, w0, bytes);
    cuoptimVariable_t v;
    OK(cuoptimAddVariable(aligned, "w", wa, CUOPTIM_FLOAT32, 5, &v));
    OK(cuoptimAddVariable(odd, "w", wo, CUOPTIM_FLOAT32, 5, &v));
    for (int s = 0; s < 3; s++) {
      test_mem_upload(b, ga, g[s], bytes);
      test_mem_upload(b, go, g[s], bytes);
      cuoptimGradient_t a = {.variable = 0, .grad = ga, .dtype = CUOPTIM_FLOAT32};
      cuoptimGradient_t o = {.variable = 0, .grad = go, .dtype = CUOPTIM_FLOAT32};
      OK(cuoptimApplyGradients(aligned, 1, &a, NULL));
      OK(cuoptimApplyGradients(odd, 1, &o, NULL));
      OK(cuoptimSynchronize(aligned));
      OK(cuoptimSynchronize(odd));
    }
    OK(cuoptimFinalizeVariableValues(aligned, NULL));
    OK(cuoptimFinalizeVariableValues(odd, NULL));
    OK(cuoptimSynchronize(aligned));
    OK(cuoptimSynchronize(odd));
    float ra[5], ro[5];
    test_mem_download(b, ra, wa, bytes);
    test_mem_download(b, ro, wo, bytes);
    cr_assert_eq(memcmp(ra, ro, bytes), 0, "%s (%s): an unaligned buffer gives another result",
                 cuoptimOptimizerName((cuoptimOptimizerKind_t)kind), test_backend_name(b));
    OK(cuoptimDestroy(aligned));
    OK(cuoptimDestroy(odd));
  }
  /* float16 parameters and gradients at odd addresses. */
  uint16_t h[4] = {to_half(1.0f), to_half(-2.0f), to_half(0.5f), to_half(3.0f)};
  uint16_t hg[4] = {to_half(0.5f), to_half(0.5f), to_half(-0.5f), to_half(1.0f)};
  void *ho = mem + 1, *hgo = mem + 64 + 3;
  test_mem_upload(b, ho, h, sizeof h);
  test_mem_upload(b, hgo, hg, sizeof hg);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 1.0);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, b, 0));
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "h", ho, CUOPTIM_FLOAT16, 4, &v));
  cuoptimGradient_t gr = {.variable = v, .grad = hgo, .dtype = CUOPTIM_FLOAT16};
  OK(cuoptimApplyGradients(opt, 1, &gr, NULL));
  OK(cuoptimSynchronize(opt));
  test_mem_download(b, h, ho, sizeof h);
  cr_assert(from_half(h[0]) == 0.5f && from_half(h[1]) == -2.5f && from_half(h[2]) == 1.0f && from_half(h[3]) == 2.0f,
            "float16 at an odd address (%s): %g %g %g %g", test_backend_name(b), (double)from_half(h[0]),
            (double)from_half(h[1]), (double)from_half(h[2]), (double)from_half(h[3]));
  OK(cuoptimDestroy(opt));
  test_mem_free(b, mem);
}
Test(features, unaligned_buffers_give_the_same_steps) { unaligned_buffers(CUOPTIM_BACKEND_HOST); }

/* The CUDA backend accesses elements in place: buffers not aligned to their element size are
 * refused with a message naming the argument (cuoptim.h), and nothing changes. */
Test(features_cuda, unaligned_buffers_are_rejected) {
  test_require_backend(CUOPTIM_BACKEND_CUDA);
  unsigned char *mem = test_mem_alloc(CUOPTIM_BACKEND_CUDA, 256);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 0.1);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, 0));
  cuoptimVariable_t v = -1;
  cr_assert_eq(cuoptimAddVariable(opt, "odd", mem + 2, CUOPTIM_FLOAT32, 4, &v), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "param") != NULL, "%s", cuoptimGetLastErrorMessage());
  cr_assert_eq(cuoptimAddVariable(opt, "odd_half", mem + 1, CUOPTIM_FLOAT16, 4, &v), CUOPTIM_STATUS_INVALID_VALUE);
  int count = -1;
  OK(cuoptimGetVariableCount(opt, &count));
  cr_assert_eq(count, 0);
  OK(cuoptimAddVariable(opt, "w", mem, CUOPTIM_FLOAT32, 4, &v));
  cuoptimGradient_t g = {v, mem + 64 + 3, CUOPTIM_FLOAT32};
  cr_assert_eq(cuoptimApplyGradients(opt, 1, &g, NULL), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "grads[].grad") != NULL, "%s", cuoptimGetLastErrorMessage());
  int64_t iterations = -1;
  OK(cuoptimGetIterations(opt, &iterations));
  cr_assert_eq(iterations, 0);
  OK(cuoptimDestroy(opt));
  test_mem_free(CUOPTIM_BACKEND_CUDA, mem);
}

/* =================================================================================================
 * Weight-decay exclusion patterns are Python `re` expressions (Keras: re.search(pattern, name))
 * ================================================================================================= */

/* An SGD optimizer with weight decay on the host backend. */
static cuoptimOptimizer_t create_decaying(void) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.1);
  c.weight_decay = 0.01;
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
  return opt;
}

/* Whether `name` is excluded by `patterns` given in that order; `before`: the variable is added
 * before the patterns instead of after. */
static int excluded_by(const char *const *patterns, int num_patterns, const char *name, int before) {
  static float buffer[1];
  cuoptimOptimizer_t opt = create_decaying();
  cuoptimVariable_t v = -1;
  if (before) OK(cuoptimAddVariable(opt, name, buffer, CUOPTIM_FLOAT32, 1, &v));
  for (int i = 0; i < num_patterns; i++) OK(cuoptimExcludeFromWeightDecay(opt, patterns[i]));
  if (!before) OK(cuoptimAddVariable(opt, name, buffer, CUOPTIM_FLOAT32, 1, &v));
  int uses = -1;
  OK(cuoptimUsesWeightDecay(opt, v, &uses));
  OK(cuoptimDestroy(opt));
  return !uses;
}

/* Expected: bool(re.search(pattern, name)) printed by Python 3.11.7 (the interpreter of Keras
 * 3.15.1 here). Each row is a construct that POSIX regcomp or PCRE2 as such reads differently. */
static const struct {
  const char *pattern, *name;
  int python;
} PYTHON_SEARCH[] = {
    {"\\d$", "dense_1", 1},
    {"\\d$", "dense_one", 0},
    {"\\d$", "conv_\xd9\xa3", 1},
    {"kernel\\Z", "kernel\n", 0},
    {"kernel$", "kernel\n", 1},
    {"kernel\\Z", "dense_kernel", 1},
    {"\\Abias", "bias_add", 1},
    {"\\Abias", "dense_bias", 0},
    {"(?i)BIAS", "dense_bias", 1},
    {"(?i)BIAS", "dense_kernel", 0},
    {"(?i)bias", "dense_B\xc4\xb0" "AS", 1},
    {"(?i)k", "\xe2\x84\xaa", 1},
    {"(?i)s", "\xc5\xbf", 1},
    {"(?i)[h-j]", "\xc4\xb1", 1},
    {"(?:kernel|gamma)_\\d+", "norm_gamma_12", 1},
    {"(?:kernel|gamma)_\\d+", "norm_gamma_x", 0},
    {"^dense.*?bias\\Z", "dense_1_bias", 1},
    {"^dense.*?bias\\Z", "dense_1_bias_1", 0},
    {"^a{,2}b", "aab", 1},
    {"^a{,2}b", "aaab", 0},
    {"a{}", "a{}", 1},
    {"a{}", "aaa", 0},
    {"a{1", "a{1", 1},
    {"x{,}y", "xxxy", 1},
    {"\\x41", "A", 1},
    {"\\u00e9", "caf\xc3\xa9", 1},
    {"\\s", "a\x1c" "b", 1},
    {"\\s", "a\xe1\xa0\x8e" "b", 0},
    {"\\S\\s", "a b", 1},
    {"[[:alpha:]]", "a", 0},
    {"[[:alpha:]]", "x:]", 1},
    {"\\bbias\\b", "dense/bias", 1},
    {"\\bbias\\b", "dense_bias", 0},
    {"\\bbias\\b", "\xc3\xa9" "bias", 0},
    {"(?a)\\w$", "caf\xc3\xa9", 0},
    {"\\w$", "caf\xc3\xa9", 1},
    {"(?a)\\bbias", "\xc3\xa9" "bias", 1},
    {"(?x) dense \\d  # a comment", "dense1", 1},
    {"(?x) dense \\d  # a comment", "dense 1", 0},
    {"(?P<l>ab)(?P=l)", "xabab", 1},
    {"(?P<l>ab)(?P=l)", "xabba", 0},
    {"(a)\\1", "aa", 1},
    {"(?<=dense_)kernel", "dense_kernel", 1},
    {"(?<!dense_)kernel", "dense_kernel", 0},
    {"^(?>a+)ab", "aaab", 0},
    {"^a++b", "aab", 1},
    {"^a*+a", "aaa", 0},
    {"\\0", "x", 0},
    {"[^\\S\\d]", "1 ", 1},
    {"[^\\S\\d]", "1a", 0},
    {"[\\W\\d]x", "_x", 0},
    {"[\\W\\d]x", "1x", 1},
    {"(?s)a.b", "a\nb", 1},
    {"a.b", "a\nb", 0},
    {"(?m)^b", "a\nb", 1},
    {"^b", "a\nb", 0},
    {"(?m)a$", "a\nb", 1},
    {"(a)?(?(1)b|c)$", "ab", 1},
    {"(a)?(?(1)b|c)$", "c", 1},
    {"(a)?(?(1)b|c)$", "ac", 1},
    {"[]a]", "]", 1},
    {"[\\x41-\\x43]", "B", 1},
    {"[\\x41-\\x43]", "D", 0},
    {"[\\t]", "a\tb", 1},
    {"a\\tb", "a\tb", 1},
    {"[\\u00e9]", "caf\xc3\xa9", 1},
    {"[\\b]", "a\bb", 1},
    {"\\U0001F600", "x\xf0\x9f\x98\x80", 1},
    {"[\\\\]", "a\\b", 1},
    {"\\n", "a\nb", 1},
    {"[\\v\\f]", "x\f", 1},
};

Test(features, weight_decay_exclusion_uses_python_re_syntax) {
  for (size_t k = 0; k < sizeof PYTHON_SEARCH / sizeof PYTHON_SEARCH[0]; k++)
    for (int before = 0; before < 2; before++) {
      int got = excluded_by(&PYTHON_SEARCH[k].pattern, 1, PYTHON_SEARCH[k].name, before);
      cr_expect_eq(got, PYTHON_SEARCH[k].python, "re.search(%s, %s) is %s in Python, cuoptim %s it (variable added %s)",
                   PYTHON_SEARCH[k].pattern, PYTHON_SEARCH[k].name, PYTHON_SEARCH[k].python ? "a match" : "None",
                   got ? "excludes" : "does not exclude", before ? "before" : "after");
    }
}

/* Keras joins the names with "|" into one pattern: a global flag at the start of the first applies
 * to all, groups are numbered across all (cuoptim joins in call order), a pattern given twice
 * counts once (Keras joins a set; twice, the group name would be defined twice). Expected values
 * from Python's re.search on "(?i)BIAS|kernel", "(a)|(b)\1", "^dense|bias$", "(?P<n>a)". */
Test(features, weight_decay_exclusion_patterns_are_joined_as_keras_joins_them) {
  static const char *const flag_first[] = {"(?i)BIAS", "kernel"};
  cr_expect_eq(excluded_by(flag_first, 2, "KERNEL", 0), 1);
  cr_expect_eq(excluded_by(flag_first, 2, "dense_Bias", 1), 1);
  cr_expect_eq(excluded_by(flag_first, 2, "gamma", 0), 0);
  static const char *const numbered[] = {"(a)", "(b)\\1"};
  cr_expect_eq(excluded_by(numbered, 2, "bb", 0), 0, "\\1 is the first pattern's group once joined");
  cr_expect_eq(excluded_by(numbered, 2, "xa", 1), 1);
  cr_expect_eq(excluded_by(numbered + 1, 1, "bb", 0), 1);
  static const char *const anchors[] = {"^dense", "bias$"};
  cr_expect_eq(excluded_by(anchors, 2, "dense_kernel", 0), 1);
  cr_expect_eq(excluded_by(anchors, 2, "conv_bias", 1), 1);
  cr_expect_eq(excluded_by(anchors, 2, "conv_kernel", 0), 0);
  static const char *const twice[] = {"(?P<n>a)", "(?P<n>a)"};
  cr_expect_eq(excluded_by(twice, 2, "a", 0), 1);
}

/* Weight decay is decided when variables and patterns are added, so the steps use it: after
 * r"\d$" excludes "dense_1" but not "dense_one", one SGD step with zero gradients decays only the
 * latter: w * (1 - lr * wd) = 2 * (1 - 0.1 * 0.01) in float32. */
static void python_pattern_reaches_the_step(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.1);
  c.weight_decay = 0.01;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float two[1] = {2.0f}, zero[1] = {0.0f};
  test_rig_add(&r, "dense_1", two, 1);
  test_rig_add(&r, "dense_one", two, 1);
  OK(cuoptimExcludeFromWeightDecay(r.opt, "\\d$"));
  const float *grads[2] = {zero, zero};
  rig_apply(&r, grads);
  float excluded = 0.0f, decayed = 0.0f;
  test_rig_get(&r, 0, &excluded);
  test_rig_get(&r, 1, &decayed);
  float want = 2.0f - 2.0f * 0.01f * 0.1f;
  cr_expect_eq(excluded, 2.0f, "dense_1 (matches \\d$) = %.9g, Keras: 2", excluded);
  cr_expect(fabsf(decayed - want) <= 1e-6f, "dense_one = %.9g, Keras: %.9g", decayed, want);
  test_rig_destroy(&r);
}
BOTH_BACKENDS(python_pattern_reaches_the_step, python_pattern_reaches_the_step)

/* ---- Muon with the shared machinery: state copy, checkpoint, half precision ------------------- */

#define MUON_ROWS 3
#define MUON_COLS 5
#define MUON_N (MUON_ROWS * MUON_COLS)

typedef struct {
  cuoptimBackend_t backend;
  cuoptimOptimizer_t opt;
  float *d_matrix, *d_bias, *d_g, *d_gb; /* the backend's memory */
  float matrix[MUON_N], bias[MUON_COLS]; /* host copies (muon_model_read) */
} muon_model_t;

static void muon_model_init(muon_model_t *m, cuoptimBackend_t backend, const cuoptimConfig_t *c, const float *matrix,
                            const float *bias) {
  m->backend = backend;
  memcpy(m->matrix, matrix, sizeof m->matrix);
  memcpy(m->bias, bias, sizeof m->bias);
  m->d_matrix = test_mem_from(backend, matrix, MUON_N);
  m->d_bias = test_mem_from(backend, bias, MUON_COLS);
  m->d_g = test_mem_alloc(backend, MUON_N * sizeof(float));
  m->d_gb = test_mem_alloc(backend, MUON_COLS * sizeof(float));
  OK(cuoptimCreate(&m->opt, c, backend, 0));
  const int64_t dims[2] = {MUON_ROWS, MUON_COLS}, bias_dims[1] = {MUON_COLS};
  cuoptimVariable_t v;
  OK(cuoptimAddVariableWithShape(m->opt, "dense/kernel", m->d_matrix, CUOPTIM_FLOAT32, 2, dims, &v));
  OK(cuoptimAddVariableWithShape(m->opt, "dense/bias", m->d_bias, CUOPTIM_FLOAT32, 1, bias_dims, &v));
}

static void muon_model_step(muon_model_t *m, int step) {
  float g[MUON_N], gb[MUON_COLS];
  for (int i = 0; i < MUON_N; i++) g[i] = test_pseudo_random(41, (uint64_t)step, (uint64_t)i) - 0.5f;
  for (int i = 0; i < MUON_COLS; i++) gb[i] = test_pseudo_random(43, (uint64_t)step, (uint64_t)i) - 0.5f;
  OK(cuoptimSynchronize(m->opt)); /* the previous step has read the gradient buffers */
  test_mem_upload(m->backend, m->d_g, g, sizeof g);
  test_mem_upload(m->backend, m->d_gb, gb, sizeof gb);
  cuoptimGradient_t grads[2] = {{.variable = 0, .grad = m->d_g}, {.variable = 1, .grad = m->d_gb}};
  OK(cuoptimApplyGradients(m->opt, 2, grads, NULL));
}

/* The parameters into m->matrix and m->bias. */
static void muon_model_read(muon_model_t *m) {
  OK(cuoptimSynchronize(m->opt));
  test_mem_download(m->backend, m->matrix, m->d_matrix, sizeof m->matrix);
  test_mem_download(m->backend, m->bias, m->d_bias, sizeof m->bias);
}

static void muon_model_free(muon_model_t *m) {
  OK(cuoptimDestroy(m->opt));
  test_mem_free(m->backend, m->d_matrix);
  test_mem_free(m->backend, m->d_bias);
  test_mem_free(m->backend, m->d_g);
  test_mem_free(m->backend, m->d_gb);
}

static cuoptimConfig_t muon_feature_config(void) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_MUON, 0.05);
  c.use_ema = 1;
  c.clipnorm = 0.8;
  c.gradient_accumulation_steps = 2;
  return c;
}

/* The state copied with Get/SetWeights, or saved and loaded, after 4 steps: the next 4 give the
 * same bits as training straight through. */
static void muon_state_copy_and_checkpoint_resume(cuoptimBackend_t backend) {
  test_require_backend(backend);
  cuoptimConfig_t c = muon_feature_config();
  float w0[MUON_N], b0[MUON_COLS];
  for (int i = 0; i < MUON_N; i++) w0[i] = test_pseudo_random(40, 0, (uint64_t)i);
  for (int i = 0; i < MUON_COLS; i++) b0[i] = test_pseudo_random(42, 0, (uint64_t)i);
  muon_model_t a, copy, loaded;
  muon_model_init(&a, backend, &c, w0, b0);
  for (int s = 0; s < 4; s++) muon_model_step(&a, s);
  muon_model_read(&a);
  char path[] = "/tmp/cuoptim_muon_XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  close(fd);
  OK(cuoptimSave(a.opt, path));
  muon_model_init(&copy, backend, &c, a.matrix, a.bias);
  muon_model_init(&loaded, backend, &c, a.matrix, a.bias);
  int count = 0, count_copy = 0;
  OK(cuoptimGetWeightCount(a.opt, &count));
  OK(cuoptimGetWeightCount(copy.opt, &count_copy));
  cr_assert_eq(count, count_copy);
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(a.opt, i, &info));
    double *values = malloc(info.count * sizeof *values);
    OK(cuoptimGetWeights(a.opt, i, values, info.count));
    OK(cuoptimSetWeights(copy.opt, i, values, info.count));
    free(values);
  }
  OK(cuoptimLoad(loaded.opt, path));
  remove(path);
  for (int s = 4; s < 8; s++) {
    muon_model_step(&a, s);
    muon_model_step(&copy, s);
    muon_model_step(&loaded, s);
  }
  muon_model_read(&a);
  muon_model_read(&copy);
  muon_model_read(&loaded);
  cr_expect_eq(memcmp(a.matrix, copy.matrix, sizeof a.matrix), 0, "Get/SetWeights copy: the matrix differs");
  cr_expect_eq(memcmp(a.bias, copy.bias, sizeof a.bias), 0, "Get/SetWeights copy: the bias differs");
  cr_expect_eq(memcmp(a.matrix, loaded.matrix, sizeof a.matrix), 0, "checkpoint: the matrix differs");
  cr_expect_eq(memcmp(a.bias, loaded.bias, sizeof a.bias), 0, "checkpoint: the bias differs");
  int changed = 0;
  for (int i = 0; i < MUON_N; i++) changed += a.matrix[i] != w0[i];
  cr_expect_eq(changed, MUON_N, "the Muon path left %d elements unchanged", MUON_N - changed);
  muon_model_free(&a);
  muon_model_free(&copy);
  muon_model_free(&loaded);
}
BOTH_BACKENDS(muon_state_copy_and_checkpoint_resume_bitwise, muon_state_copy_and_checkpoint_resume)

/* A bfloat16 matrix takes the Muon path on its float32 master: from the same (bfloat16-exact) start
 * and gradients the master is the float32 run's value, so the parameter is that value rounded. */
static void muon_bfloat16_matrix(cuoptimBackend_t backend) {
  test_require_backend(backend);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_MUON, 0.05);
  uint16_t w[MUON_N];
  float w32[MUON_N];
  for (int i = 0; i < MUON_N; i++) {
    w[i] = test_to_bfloat16(test_pseudo_random(44, 0, (uint64_t)i));
    w32[i] = test_from_bfloat16(w[i]);
  }
  uint16_t *dw = test_mem_alloc(backend, sizeof w), *dgh = test_mem_alloc(backend, sizeof w);
  float *dw32 = test_mem_from(backend, w32, MUON_N), *dg = test_mem_alloc(backend, sizeof w32);
  test_mem_upload(backend, dw, w, sizeof w);
  cuoptimOptimizer_t half = NULL, full = NULL;
  OK(cuoptimCreate(&half, &c, backend, 0));
  OK(cuoptimCreate(&full, &c, backend, 0));
  const int64_t dims[2] = {MUON_ROWS, MUON_COLS};
  cuoptimVariable_t v;
  OK(cuoptimAddVariableWithShape(half, "kernel", dw, CUOPTIM_BFLOAT16, 2, dims, &v));
  OK(cuoptimAddVariableWithShape(full, "kernel", dw32, CUOPTIM_FLOAT32, 2, dims, &v));
  for (int s = 0; s < 3; s++) {
    float g[MUON_N];
    uint16_t gh[MUON_N];
    for (int i = 0; i < MUON_N; i++) {
      gh[i] = test_to_bfloat16(test_pseudo_random(45, (uint64_t)s, (uint64_t)i) - 0.5f);
      g[i] = test_from_bfloat16(gh[i]);
    }
    OK(cuoptimSynchronize(half));
    OK(cuoptimSynchronize(full));
    test_mem_upload(backend, dgh, gh, sizeof gh);
    test_mem_upload(backend, dg, g, sizeof g);
    cuoptimGradient_t gb = {.variable = 0, .grad = dgh, .dtype = CUOPTIM_BFLOAT16};
    cuoptimGradient_t gf = {.variable = 0, .grad = dg, .dtype = CUOPTIM_FLOAT32};
    OK(cuoptimApplyGradients(half, 1, &gb, NULL));
    OK(cuoptimApplyGradients(full, 1, &gf, NULL));
  }
  OK(cuoptimSynchronize(half));
  OK(cuoptimSynchronize(full));
  test_mem_download(backend, w, dw, sizeof w);
  test_mem_download(backend, w32, dw32, sizeof w32);
  for (int i = 0; i < MUON_N; i++)
    cr_expect_eq(w[i], test_to_bfloat16(w32[i]), "element %d: the bfloat16 parameter is not the master rounded", i);
  cuoptimDestroy(half);
  cuoptimDestroy(full);
  test_mem_free(backend, dw);
  test_mem_free(backend, dgh);
  test_mem_free(backend, dw32);
  test_mem_free(backend, dg);
}
BOTH_BACKENDS(muon_bfloat16_matrix_uses_its_master, muon_bfloat16_matrix)
