/*
 * test_schedules.c — learning-rate schedules (keras.optimizers.schedules, SEMANTICS.md §5).
 *
 * 1. Sweeps: an SGD optimizer with each schedule; before each of the steps 0..40,
 *    cuoptimGetLearningRate must equal schedule(step) as real Keras 3.15.1 computes it in float32
 *    (the tables below: optimizer.learning_rate of keras.optimizers.SGD(learning_rate=schedule),
 *    KERAS_BACKEND=jax), rtol 1e-6; and the step itself must use that value (w = 0, g = 1 gives
 *    w = -lr).
 * 2. Ports of keras/src/optimizers/schedules/learning_rate_schedule_test.py: each assertion at
 *    step s is checked through an optimizer whose `iteration` counter is set to s with
 *    cuoptimSetWeights (the schedule sees the raw counter), with Keras's tolerances.
 * 3. test_fit_lr_correctness: Adam with ExponentialDecay training a Dense layer, as model.fit does,
 *    through cuoptimMinimize.
 * Every test runs on the host backend, and on the CUDA backend (suite schedules_cuda) when a GPU
 * is present.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "testutil.h"

#define SWEEP_STEPS 41
#define SWEEP_RTOL 1e-6

#define BOTH_BACKENDS(test_name, fn)                       \
  Test(schedules, test_name) { fn(CUOPTIM_BACKEND_HOST); } \
  Test(schedules_cuda, test_name) { fn(CUOPTIM_BACKEND_CUDA); }

static cuoptimSchedule_t schedule_of(cuoptimScheduleKind_t kind) {
  cuoptimSchedule_t s;
  OK(cuoptimScheduleInit(&s, kind));
  return s;
}

static cuoptimConfig_t config_with(cuoptimOptimizerKind_t kind, const cuoptimSchedule_t *s) {
  cuoptimConfig_t c = test_config(kind);
  c.learning_rate = *s;
  return c;
}

static float learning_rate_of(cuoptimOptimizer_t opt) {
  float lr = NAN;
  OK(cuoptimGetLearningRate(opt, &lr));
  return lr;
}

static int close_to(double got, double want, double rtol, double atol) {
  return fabs(got - want) <= atol + rtol * fabs(want);
}

/* ---- 1. sweeps over steps 0..40 ------------------------------------------------------------------ */

static void run_sweep(cuoptimBackend_t b, const cuoptimSchedule_t *s, const float want[SWEEP_STEPS], const char *what) {
  test_require_backend(b);
  cuoptimConfig_t c = config_with(CUOPTIM_SGD, s);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, b, 0));
  const float zero = 0.0f, one = 1.0f;
  float *w = test_mem_alloc(b, sizeof(float));
  float *g = test_mem_alloc(b, sizeof(float));
  test_mem_upload(b, g, &one, sizeof one);
  test_mem_upload(b, w, &zero, sizeof zero);
  cuoptimVariable_t var = -1;
  OK(cuoptimAddVariable(opt, "w", w, CUOPTIM_FLOAT32, 1, &var));
  cuoptimGradient_t grad = {.variable = var, .grad = g, .dtype = CUOPTIM_FLOAT32};
  for (int k = 0; k < SWEEP_STEPS; k++) {
    float lr = learning_rate_of(opt);
    cr_assert(close_to(lr, want[k], SWEEP_RTOL, 0.0), "%s: learning rate before step %d is %.9g, Keras: %.9g", what, k,
              (double)lr, (double)want[k]);
    test_mem_upload(b, w, &zero, sizeof zero);
    OK(cuoptimApplyGradients(opt, 1, &grad, NULL));
    OK(cuoptimSynchronize(opt));
    float after = NAN;
    test_mem_download(b, &after, w, sizeof after);
    cr_assert(close_to(-after, want[k], SWEEP_RTOL, 0.0), "%s: step %d moved w = 0 by g = 1 to %.9g, Keras: -%.9g",
              what, k, (double)after, (double)want[k]);
    cr_assert_eq(test_iterations(opt), k + 1);
  }
  OK(cuoptimDestroy(opt));
  test_mem_free(b, w);
  test_mem_free(b, g);
}

/* ---- real Keras 3.15.1 float32 schedule values (generated with KERAS_BACKEND=jax) ------------------ */
/* ExponentialDecay(0.1, decay_steps=10, decay_rate=0.96): optimizer.learning_rate of SGD(learning_rate=schedule) before
 * steps 0..40 */
static const float EXPONENTIAL_LR[41] = {
    0.100000001f,  0.0995926186f, 0.0991868898f, 0.0987828076f, 0.0983803794f, 0.0979795903f, 0.0975804329f,
    0.0971828997f, 0.0967869908f, 0.0963926911f, 0.0960000008f, 0.0956089124f, 0.0952194035f, 0.0948314965f,
    0.0944451615f, 0.0940604061f, 0.0936772153f, 0.0932955816f, 0.0929155052f, 0.0925369784f, 0.0921600014f,
    0.0917845517f, 0.0914106295f, 0.0910382345f, 0.0906673595f, 0.0902979895f, 0.0899301246f, 0.0895637572f,
    0.0891988873f, 0.0888355002f, 0.0884735957f, 0.0881131664f, 0.0877542049f, 0.0873967037f, 0.0870406553f,
    0.0866860673f, 0.0863329172f, 0.0859812051f, 0.085630931f,  0.0852820799f, 0.0849346444f};
/* ExponentialDecay(0.1, decay_steps=3, decay_rate=0.96, staircase=True): optimizer.learning_rate of
 * SGD(learning_rate=schedule) before steps 0..40 */
static const float EXPONENTIAL_STAIRCASE_LR[41] = {
    0.100000001f,  0.100000001f,  0.100000001f,  0.0960000008f, 0.0960000008f, 0.0960000008f, 0.0921600014f,
    0.0921600014f, 0.0921600014f, 0.0884735957f, 0.0884735957f, 0.0884735957f, 0.0849346444f, 0.0849346444f,
    0.0849346444f, 0.0815372616f, 0.0815372616f, 0.0815372616f, 0.0782757699f, 0.0782757699f, 0.0782757699f,
    0.075144738f,  0.075144738f,  0.075144738f,  0.0721389502f, 0.0721389502f, 0.0721389502f, 0.0692533851f,
    0.0692533851f, 0.0692533851f, 0.0664832518f, 0.0664832518f, 0.0664832518f, 0.063823916f,  0.063823916f,
    0.063823916f,  0.0612709597f, 0.0612709597f, 0.0612709597f, 0.0588201247f, 0.0588201247f};
/* ExponentialDecay(0.01, decay_steps=7, decay_rate=1.5): optimizer.learning_rate of SGD(learning_rate=schedule) before
 * steps 0..40 */
static const float EXPONENTIAL_GROWTH_LR[41] = {
    0.00999999978f, 0.0105963396f, 0.0112282429f, 0.0118978275f, 0.0126073426f, 0.0133591695f, 0.0141558312f,
    0.0149999997f,  0.0158945099f, 0.0168423634f, 0.0178467408f, 0.0189110152f, 0.0200387537f, 0.0212337468f,
    0.022499999f,   0.0238417648f, 0.0252635479f, 0.0267701112f, 0.0283665229f, 0.0300581306f, 0.0318506174f,
    0.0337499976f,  0.0357626453f, 0.0378953181f, 0.0401551649f, 0.0425497815f, 0.0450871922f, 0.0477759317f,
    0.0506250001f,  0.053643968f,  0.0568429753f, 0.0602327473f, 0.0638246834f, 0.0676307976f, 0.0716638938f,
    0.0759374946f,  0.0804659575f, 0.0852644593f, 0.0903491154f, 0.0957370177f, 0.101446196f};
/* PiecewiseConstantDecay(boundaries=[5, 10, 20], values=[1.0, 0.5, 0.1, 0.01]): optimizer.learning_rate of
 * SGD(learning_rate=schedule) before steps 0..40 */
static const float PIECEWISE_LR[41] = {
    1.0f,           1.0f,           1.0f,           1.0f,           1.0f,           1.0f,           0.5f,
    0.5f,           0.5f,           0.5f,           0.5f,           0.100000001f,   0.100000001f,   0.100000001f,
    0.100000001f,   0.100000001f,   0.100000001f,   0.100000001f,   0.100000001f,   0.100000001f,   0.100000001f,
    0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f,
    0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f,
    0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f};
/* PiecewiseConstantDecay(boundaries=[0], values=[0.3, 0.07]): optimizer.learning_rate of SGD(learning_rate=schedule)
 * before steps 0..40 */
static const float PIECEWISE_ONE_LR[41] = {
    0.300000012f,  0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f,
    0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f,
    0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f,
    0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f,
    0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f,
    0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f, 0.0700000003f};
/* PolynomialDecay(0.1, decay_steps=20, end_learning_rate=0.01): optimizer.learning_rate of SGD(learning_rate=schedule)
 * before steps 0..40 */
static const float POLYNOMIAL_LR[41] = {
    0.100000001f,   0.0954999998f,  0.0909999982f,  0.0865000039f,  0.0820000023f,  0.0775000006f,  0.0729999989f,
    0.0684999973f,  0.064000003f,   0.0595000014f,  0.0549999997f,  0.050499998f,   0.0459999964f,  0.0415000021f,
    0.0370000005f,  0.0324999988f,  0.027999999f,   0.0234999992f,  0.0190000013f,  0.0145000014f,  0.00999999978f,
    0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f,
    0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f,
    0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f, 0.00999999978f};
/* PolynomialDecay(0.1, decay_steps=10, end_learning_rate=0.01, cycle=True): optimizer.learning_rate of
 * SGD(learning_rate=schedule) before steps 0..40 */
static const float POLYNOMIAL_CYCLE_LR[41] = {
    0.100000001f,  0.0909999982f, 0.0820000023f,  0.0729999989f,  0.064000003f,  0.0549999997f, 0.0459999964f,
    0.0370000005f, 0.027999999f,  0.0190000013f,  0.00999999978f, 0.050499998f,  0.0459999964f, 0.0415000021f,
    0.0370000005f, 0.0324999988f, 0.027999999f,   0.0234999992f,  0.0190000013f, 0.0145000014f, 0.00999999978f,
    0.0370000005f, 0.0340000018f, 0.0310000014f,  0.027999999f,   0.0250000022f, 0.0219999999f, 0.0190000013f,
    0.0159999989f, 0.0130000021f, 0.00999999978f, 0.0302500036f,  0.027999999f,  0.0257500019f, 0.0234999992f,
    0.0212500002f, 0.0190000013f, 0.0167499986f,  0.0145000014f,  0.0122499978f, 0.00999999978f};
/* PolynomialDecay(0.1, decay_steps=20, end_learning_rate=0.001, power=0.5): optimizer.learning_rate of
 * SGD(learning_rate=schedule) before steps 0..40 */
static const float POLYNOMIAL_POWER_LR[41] = {
    0.100000001f,   0.0974932611f,  0.0949196443f,  0.0922734961f,  0.0895482898f,  0.0867365152f,  0.0838293433f,
    0.0808163509f,  0.077685073f,   0.0744203702f,  0.0710035712f,  0.0674112141f,  0.0636131018f,  0.0595691875f,
    0.0552245341f,  0.050499998f,   0.0452741422f,  0.0393425301f,  0.0323065482f,  0.0231370758f,  0.00100000005f,
    0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f,
    0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f,
    0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f, 0.00100000005f};
/* PolynomialDecay(0.1, decay_steps=7, end_learning_rate=0.001, power=2.0, cycle=True): optimizer.learning_rate of
 * SGD(learning_rate=schedule) before steps 0..40 */
static const float POLYNOMIAL_POWER_CYCLE_LR[41] = {
    0.100000001f,   0.0737346932f,  0.0515101999f,  0.0333265252f,  0.0191836711f,  0.0090816319f,  0.0030204081f,
    0.00100000005f, 0.0191836711f,  0.0136275506f,  0.0090816319f,  0.0055459193f,  0.0030204081f,  0.0015051025f,
    0.00100000005f, 0.0090816319f,  0.00661224453f, 0.00459183659f, 0.0030204081f,  0.00189795916f, 0.00122448988f,
    0.00100000005f, 0.0055459193f,  0.00415688707f, 0.0030204081f,  0.00213647983f, 0.0015051025f,  0.0011262754f,
    0.00100000005f, 0.00390938763f, 0.0030204081f,  0.002293061f,   0.00172734691f, 0.00132326526f, 0.00108081638f,
    0.00100000005f, 0.0030204081f,  0.00240306184f, 0.00189795916f, 0.0015051025f,  0.00122448988f};
/* InverseTimeDecay(0.1, decay_steps=5, decay_rate=0.5): optimizer.learning_rate of SGD(learning_rate=schedule) before
 * steps 0..40 */
static const float INVERSE_TIME_LR[41] = {
    0.100000001f,  0.0909090936f, 0.0833333284f, 0.0769230798f, 0.0714285746f, 0.0666666701f, 0.0625f,
    0.0588235296f, 0.0555555597f, 0.0526315793f, 0.0500000007f, 0.0476190522f, 0.0454545468f, 0.0434782617f,
    0.0416666642f, 0.0399999991f, 0.0384615399f, 0.0370370373f, 0.0357142873f, 0.0344827585f, 0.0333333351f,
    0.0322580673f, 0.03125f,      0.0303030312f, 0.0294117648f, 0.0285714287f, 0.0277777798f, 0.0270270277f,
    0.0263157897f, 0.025641026f,  0.0250000004f, 0.0243902449f, 0.0238095261f, 0.0232558139f, 0.0227272734f,
    0.0222222228f, 0.0217391308f, 0.0212765969f, 0.0208333321f, 0.0204081628f, 0.0199999996f};
/* InverseTimeDecay(0.1, decay_steps=5, decay_rate=0.5, staircase=True): optimizer.learning_rate of
 * SGD(learning_rate=schedule) before steps 0..40 */
static const float INVERSE_TIME_STAIRCASE_LR[41] = {
    0.100000001f,  0.100000001f,  0.100000001f,  0.100000001f,  0.100000001f,  0.0666666701f, 0.0666666701f,
    0.0666666701f, 0.0666666701f, 0.0666666701f, 0.0500000007f, 0.0500000007f, 0.0500000007f, 0.0500000007f,
    0.0500000007f, 0.0399999991f, 0.0399999991f, 0.0399999991f, 0.0399999991f, 0.0399999991f, 0.0333333351f,
    0.0333333351f, 0.0333333351f, 0.0333333351f, 0.0333333351f, 0.0285714287f, 0.0285714287f, 0.0285714287f,
    0.0285714287f, 0.0285714287f, 0.0250000004f, 0.0250000004f, 0.0250000004f, 0.0250000004f, 0.0250000004f,
    0.0222222228f, 0.0222222228f, 0.0222222228f, 0.0222222228f, 0.0222222228f, 0.0199999996f};
/* CosineDecay(0.1, decay_steps=20): optimizer.learning_rate of SGD(learning_rate=schedule) before steps 0..40 */
static const float COSINE_LR[41] = {0.100000001f,  0.0993844196f,  0.0975528285f,  0.0945503265f,  0.0904508457f,
                                    0.0853553414f, 0.0793892667f,  0.0726995245f,  0.0654508471f,  0.0578217283f,
                                    0.049999997f,  0.0421782732f,  0.0345491432f,  0.0273004808f,  0.0206107404f,
                                    0.0146446619f, 0.00954914745f, 0.00544967083f, 0.00244717603f, 0.00061558187f,
                                    0.0f,          0.0f,           0.0f,           0.0f,           0.0f,
                                    0.0f,          0.0f,           0.0f,           0.0f,           0.0f,
                                    0.0f,          0.0f,           0.0f,           0.0f,           0.0f,
                                    0.0f,          0.0f,           0.0f,           0.0f,           0.0f,
                                    0.0f};
/* CosineDecay(0.1, decay_steps=20, alpha=0.1): optimizer.learning_rate of SGD(learning_rate=schedule) before steps
 * 0..40 */
static const float COSINE_ALPHA_LR[41] = {
    0.100000001f,  0.0994459763f, 0.0977975428f, 0.0950952917f, 0.0914057642f, 0.0868198127f, 0.0814503357f,
    0.0754295737f, 0.0689057633f, 0.0620395541f, 0.054999996f,  0.0479604453f, 0.0410942249f, 0.0345704332f,
    0.0285496656f, 0.0231801961f, 0.0185942333f, 0.014904703f,  0.0122024585f, 0.010554024f,  0.0100000007f,
    0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f,
    0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f,
    0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f, 0.0100000007f};
/* CosineDecay(0.0, decay_steps=20, warmup_target=0.1, warmup_steps=10): optimizer.learning_rate of
 * SGD(learning_rate=schedule) before steps 0..40 */
static const float COSINE_WARMUP_LR[41] = {
    0.0f,          0.0100000007f,  0.0200000014f,  0.0300000012f,  0.0400000028f,
    0.0500000007f, 0.0600000024f,  0.0700000003f,  0.0800000057f,  0.0899999961f,
    0.100000001f,  0.0993844196f,  0.0975528285f,  0.0945503265f,  0.0904508457f,
    0.0853553414f, 0.0793892667f,  0.0726995245f,  0.0654508471f,  0.0578217283f,
    0.049999997f,  0.0421782732f,  0.0345491432f,  0.0273004808f,  0.0206107404f,
    0.0146446619f, 0.00954914745f, 0.00544967083f, 0.00244717603f, 0.00061558187f,
    0.0f,          0.0f,           0.0f,           0.0f,           0.0f,
    0.0f,          0.0f,           0.0f,           0.0f,           0.0f,
    0.0f};
/* CosineDecay(0.01, decay_steps=15, alpha=0.2, warmup_target=0.1, warmup_steps=8): optimizer.learning_rate of
 * SGD(learning_rate=schedule) before steps 0..40 */
static const float COSINE_WARMUP_ALPHA_LR[41] = {
    0.00999999978f, 0.0212500002f, 0.0324999988f, 0.043750003f,  0.0549999997f, 0.0662500039f, 0.0775000006f,
    0.0887500048f,  0.100000001f,  0.0991259068f, 0.0965418145f, 0.0923606828f, 0.0867652223f, 0.0800000057f,
    0.0723606795f,  0.0641811416f, 0.0558188558f, 0.0476393141f, 0.0399999991f, 0.0332347713f, 0.0276393183f,
    0.0234581809f,  0.0208740961f, 0.0200000014f, 0.0200000014f, 0.0200000014f, 0.0200000014f, 0.0200000014f,
    0.0200000014f,  0.0200000014f, 0.0200000014f, 0.0200000014f, 0.0200000014f, 0.0200000014f, 0.0200000014f,
    0.0200000014f,  0.0200000014f, 0.0200000014f, 0.0200000014f, 0.0200000014f, 0.0200000014f};
/* CosineDecayRestarts(0.1, first_decay_steps=5): optimizer.learning_rate of SGD(learning_rate=schedule) before steps
 * 0..40 */
static const float COSINE_RESTARTS_LR[41] = {
    0.100000001f,   0.0904508457f, 0.0654508471f, 0.0345491432f,  0.00954914745f, 0.100000001f,   0.0975528285f,
    0.0904508457f,  0.0793892667f, 0.0654508546f, 0.049999997f,   0.0345491432f,  0.0206107292f,  0.00954915583f,
    0.00244717603f, 0.100000001f,  0.0993844196f, 0.0975528285f,  0.0945503265f,  0.0904508457f,  0.0853553414f,
    0.0793892667f,  0.0726995245f, 0.0654508546f, 0.0578217171f,  0.049999997f,   0.0421782844f,  0.0345491432f,
    0.0273004808f,  0.0206107292f, 0.0146446619f, 0.00954915583f, 0.00544967083f, 0.00244717603f, 0.00061558187f,
    0.100000001f,   0.0998458713f, 0.0993844196f, 0.0986184999f,  0.0975528285f,  0.0961939767f};
/* CosineDecayRestarts(0.1, first_decay_steps=6, t_mul=1.0): optimizer.learning_rate of SGD(learning_rate=schedule)
 * before steps 0..40 */
static const float COSINE_RESTARTS_T1_LR[41] = {
    0.100000001f,   0.0933012739f,  0.075000003f,   0.049999997f,   0.0249999966f,  0.00669873087f, 0.100000001f,
    0.0933012739f,  0.0749999955f,  0.049999997f,   0.025000006f,   0.00669872481f, 0.100000001f,   0.093301259f,
    0.0750000104f,  0.049999997f,   0.0249999892f,  0.00669873646f, 0.100000001f,   0.093301259f,   0.0750000104f,
    0.049999997f,   0.0249999892f,  0.00669873646f, 0.100000001f,   0.0933012888f,  0.0749999806f,  0.049999997f,
    0.025000019f,   0.00669871271f, 0.100000001f,   0.0933012888f,  0.0749999806f,  0.049999997f,   0.025000019f,
    0.00669871271f, 0.100000001f,   0.0933012888f,  0.0749999806f,  0.049999997f,   0.025000019f};
/* CosineDecayRestarts(0.1, first_decay_steps=4, t_mul=2.0, m_mul=0.5): optimizer.learning_rate of
 * SGD(learning_rate=schedule) before steps 0..40 */
static const float COSINE_RESTARTS_MMUL_LR[41] = {
    0.100000001f,  0.0853553414f,  0.049999997f,   0.0146446619f,  0.0500000007f,  0.0480969884f,   0.0426776707f,
    0.0345670842f, 0.0249999985f,  0.0154329119f,  0.00732233096f, 0.00190300948f, 0.0250000004f,   0.024759816f,
    0.0240484942f, 0.0228933692f,  0.0213388354f,  0.0194446277f,  0.0172835421f,  0.0149386292f,   0.0124999993f,
    0.0100613711f, 0.00771645596f, 0.00555537036f, 0.00366116548f, 0.00210662931f, 0.000951504742f, 0.000240183625f,
    0.0125000002f, 0.0124699045f,  0.012379908f,   0.0122308778f,  0.0120242471f,  0.0117620081f,   0.0114466846f,
    0.0110813156f, 0.0106694177f,  0.0102149574f,  0.00972231384f, 0.00919622928f, 0.00864177104f};
/* CosineDecayRestarts(0.1, first_decay_steps=4, t_mul=1.5, m_mul=0.8, alpha=0.1): optimizer.learning_rate of
 * SGD(learning_rate=schedule) before steps 0..40 */
static const float COSINE_RESTARTS_ALPHA_LR[41] = {
    0.100000001f,  0.0868198127f, 0.054999996f,  0.0231801961f, 0.0820000023f, 0.0771769211f, 0.064000003f,
    0.0459999964f, 0.0279999971f, 0.0148230819f, 0.0676000044f, 0.0658631548f, 0.060862083f,  0.0532000028f,
    0.0438010655f, 0.0337989293f, 0.0243999995f, 0.0167379156f, 0.0117368512f, 0.0560800023f, 0.0554589592f,
    0.0536292978f, 0.0506896637f, 0.0467985384f, 0.042165678f,  0.0370408557f, 0.0317003466f, 0.026432056f,
    0.02152f,      0.0172289908f, 0.0137903588f, 0.0113894809f, 0.0101557877f, 0.0468085743f, 0.0463671647f,
    0.0454949439f, 0.0442128666f, 0.0425517298f, 0.0405514352f, 0.038260024f,  0.035732545f};

static cuoptimSchedule_t exponential(double initial, double decay_steps, double decay_rate, int staircase) {
  cuoptimSchedule_t s = schedule_of(CUOPTIM_SCHEDULE_EXPONENTIAL);
  s.initial_learning_rate = initial;
  s.decay_steps = decay_steps;
  s.decay_rate = decay_rate;
  s.staircase = staircase;
  return s;
}

static cuoptimSchedule_t piecewise(int n, const double *boundaries, const double *values) {
  cuoptimSchedule_t s = schedule_of(CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT);
  s.num_boundaries = n;
  for (int i = 0; i < n; i++) s.boundaries[i] = boundaries[i];
  for (int i = 0; i <= n; i++) s.values[i] = values[i];
  return s;
}

static cuoptimSchedule_t polynomial(double initial, double decay_steps, double end, double power, int cycle) {
  cuoptimSchedule_t s = schedule_of(CUOPTIM_SCHEDULE_POLYNOMIAL);
  s.initial_learning_rate = initial;
  s.decay_steps = decay_steps;
  s.end_learning_rate = end;
  s.power = power;
  s.cycle = cycle;
  return s;
}

static cuoptimSchedule_t inverse_time(double initial, double decay_steps, double decay_rate, int staircase) {
  cuoptimSchedule_t s = schedule_of(CUOPTIM_SCHEDULE_INVERSE_TIME);
  s.initial_learning_rate = initial;
  s.decay_steps = decay_steps;
  s.decay_rate = decay_rate;
  s.staircase = staircase;
  return s;
}

/* warmup_target NAN = None. */
static cuoptimSchedule_t cosine(double initial, double decay_steps, double alpha, double warmup_target,
                                double warmup_steps) {
  cuoptimSchedule_t s = schedule_of(CUOPTIM_SCHEDULE_COSINE);
  s.initial_learning_rate = initial;
  s.decay_steps = decay_steps;
  s.alpha = alpha;
  s.warmup_target = warmup_target;
  s.warmup_steps = warmup_steps;
  return s;
}

static cuoptimSchedule_t cosine_restarts(double initial, double first_decay_steps, double t_mul, double m_mul,
                                         double alpha) {
  cuoptimSchedule_t s = schedule_of(CUOPTIM_SCHEDULE_COSINE_RESTARTS);
  s.initial_learning_rate = initial;
  s.decay_steps = first_decay_steps;
  s.t_mul = t_mul;
  s.m_mul = m_mul;
  s.alpha = alpha;
  return s;
}

/* cuoptimScheduleInit gives Keras's constructor defaults. */
Test(schedules, schedule_init_gives_keras_defaults) {
  cuoptimSchedule_t s = schedule_of(CUOPTIM_SCHEDULE_POLYNOMIAL);
  cr_assert_eq(s.kind, CUOPTIM_SCHEDULE_POLYNOMIAL);
  cr_assert_eq(s.end_learning_rate, 0.0001);
  cr_assert_eq(s.power, 1.0);
  cr_assert_eq(s.cycle, 0);
  s = schedule_of(CUOPTIM_SCHEDULE_COSINE);
  cr_assert_eq(s.alpha, 0.0);
  cr_assert(CUOPTIM_IS_NONE(s.warmup_target));
  cr_assert_eq(s.warmup_steps, 0.0);
  s = schedule_of(CUOPTIM_SCHEDULE_COSINE_RESTARTS);
  cr_assert_eq(s.t_mul, 2.0);
  cr_assert_eq(s.m_mul, 1.0);
  cr_assert_eq(s.alpha, 0.0);
  s = schedule_of(CUOPTIM_SCHEDULE_EXPONENTIAL);
  cr_assert_eq(s.staircase, 0);
  s = schedule_of(CUOPTIM_SCHEDULE_INVERSE_TIME);
  cr_assert_eq(s.staircase, 0);
}

static void sweep_exponential(cuoptimBackend_t b) {
  cuoptimSchedule_t s = exponential(0.1, 10, 0.96, 0);
  run_sweep(b, &s, EXPONENTIAL_LR, "ExponentialDecay");
}
static void sweep_exponential_staircase(cuoptimBackend_t b) {
  cuoptimSchedule_t s = exponential(0.1, 3, 0.96, 1);
  run_sweep(b, &s, EXPONENTIAL_STAIRCASE_LR, "ExponentialDecay(staircase=True)");
}
static void sweep_exponential_growth(cuoptimBackend_t b) {
  cuoptimSchedule_t s = exponential(0.01, 7, 1.5, 0);
  run_sweep(b, &s, EXPONENTIAL_GROWTH_LR, "ExponentialDecay(decay_rate=1.5)");
}
static void sweep_piecewise(cuoptimBackend_t b) {
  static const double boundaries[3] = {5, 10, 20}, values[4] = {1.0, 0.5, 0.1, 0.01};
  cuoptimSchedule_t s = piecewise(3, boundaries, values);
  run_sweep(b, &s, PIECEWISE_LR, "PiecewiseConstantDecay");
}
static void sweep_piecewise_boundary_zero(cuoptimBackend_t b) {
  static const double boundaries[1] = {0}, values[2] = {0.3, 0.07};
  cuoptimSchedule_t s = piecewise(1, boundaries, values);
  run_sweep(b, &s, PIECEWISE_ONE_LR, "PiecewiseConstantDecay([0])");
}
static void sweep_polynomial(cuoptimBackend_t b) {
  cuoptimSchedule_t s = polynomial(0.1, 20, 0.01, 1.0, 0);
  run_sweep(b, &s, POLYNOMIAL_LR, "PolynomialDecay");
}
static void sweep_polynomial_cycle(cuoptimBackend_t b) {
  cuoptimSchedule_t s = polynomial(0.1, 10, 0.01, 1.0, 1);
  run_sweep(b, &s, POLYNOMIAL_CYCLE_LR, "PolynomialDecay(cycle=True)");
}
static void sweep_polynomial_power(cuoptimBackend_t b) {
  cuoptimSchedule_t s = polynomial(0.1, 20, 0.001, 0.5, 0);
  run_sweep(b, &s, POLYNOMIAL_POWER_LR, "PolynomialDecay(power=0.5)");
}
static void sweep_polynomial_power_cycle(cuoptimBackend_t b) {
  cuoptimSchedule_t s = polynomial(0.1, 7, 0.001, 2.0, 1);
  run_sweep(b, &s, POLYNOMIAL_POWER_CYCLE_LR, "PolynomialDecay(power=2.0, cycle=True)");
}
static void sweep_inverse_time(cuoptimBackend_t b) {
  cuoptimSchedule_t s = inverse_time(0.1, 5, 0.5, 0);
  run_sweep(b, &s, INVERSE_TIME_LR, "InverseTimeDecay");
}
static void sweep_inverse_time_staircase(cuoptimBackend_t b) {
  cuoptimSchedule_t s = inverse_time(0.1, 5, 0.5, 1);
  run_sweep(b, &s, INVERSE_TIME_STAIRCASE_LR, "InverseTimeDecay(staircase=True)");
}
static void sweep_cosine(cuoptimBackend_t b) {
  cuoptimSchedule_t s = cosine(0.1, 20, 0.0, CUOPTIM_NONE, 0);
  run_sweep(b, &s, COSINE_LR, "CosineDecay");
}
static void sweep_cosine_alpha(cuoptimBackend_t b) {
  cuoptimSchedule_t s = cosine(0.1, 20, 0.1, CUOPTIM_NONE, 0);
  run_sweep(b, &s, COSINE_ALPHA_LR, "CosineDecay(alpha=0.1)");
}
static void sweep_cosine_warmup(cuoptimBackend_t b) {
  cuoptimSchedule_t s = cosine(0.0, 20, 0.0, 0.1, 10);
  run_sweep(b, &s, COSINE_WARMUP_LR, "CosineDecay(warmup_target=0.1, warmup_steps=10)");
}
static void sweep_cosine_warmup_alpha(cuoptimBackend_t b) {
  cuoptimSchedule_t s = cosine(0.01, 15, 0.2, 0.1, 8);
  run_sweep(b, &s, COSINE_WARMUP_ALPHA_LR, "CosineDecay(alpha=0.2, warmup_target=0.1, warmup_steps=8)");
}
static void sweep_cosine_restarts(cuoptimBackend_t b) {
  cuoptimSchedule_t s = cosine_restarts(0.1, 5, 2.0, 1.0, 0.0);
  run_sweep(b, &s, COSINE_RESTARTS_LR, "CosineDecayRestarts");
}
static void sweep_cosine_restarts_t_mul_1(cuoptimBackend_t b) {
  cuoptimSchedule_t s = cosine_restarts(0.1, 6, 1.0, 1.0, 0.0);
  run_sweep(b, &s, COSINE_RESTARTS_T1_LR, "CosineDecayRestarts(t_mul=1.0)");
}
static void sweep_cosine_restarts_m_mul(cuoptimBackend_t b) {
  cuoptimSchedule_t s = cosine_restarts(0.1, 4, 2.0, 0.5, 0.0);
  run_sweep(b, &s, COSINE_RESTARTS_MMUL_LR, "CosineDecayRestarts(m_mul=0.5)");
}
static void sweep_cosine_restarts_alpha(cuoptimBackend_t b) {
  cuoptimSchedule_t s = cosine_restarts(0.1, 4, 1.5, 0.8, 0.1);
  run_sweep(b, &s, COSINE_RESTARTS_ALPHA_LR, "CosineDecayRestarts(t_mul=1.5, m_mul=0.8, alpha=0.1)");
}

BOTH_BACKENDS(exponential_decay_sweep_matches_keras, sweep_exponential)
BOTH_BACKENDS(exponential_decay_staircase_sweep_matches_keras, sweep_exponential_staircase)
BOTH_BACKENDS(exponential_decay_rate_above_one_sweep_matches_keras, sweep_exponential_growth)
BOTH_BACKENDS(piecewise_constant_decay_sweep_matches_keras, sweep_piecewise)
BOTH_BACKENDS(piecewise_constant_decay_boundary_zero_sweep_matches_keras, sweep_piecewise_boundary_zero)
BOTH_BACKENDS(polynomial_decay_sweep_matches_keras, sweep_polynomial)
BOTH_BACKENDS(polynomial_decay_cycle_sweep_matches_keras, sweep_polynomial_cycle)
BOTH_BACKENDS(polynomial_decay_power_sweep_matches_keras, sweep_polynomial_power)
BOTH_BACKENDS(polynomial_decay_power_cycle_sweep_matches_keras, sweep_polynomial_power_cycle)
BOTH_BACKENDS(inverse_time_decay_sweep_matches_keras, sweep_inverse_time)
BOTH_BACKENDS(inverse_time_decay_staircase_sweep_matches_keras, sweep_inverse_time_staircase)
BOTH_BACKENDS(cosine_decay_past_the_end_sweep_matches_keras, sweep_cosine)
BOTH_BACKENDS(cosine_decay_alpha_sweep_matches_keras, sweep_cosine_alpha)
BOTH_BACKENDS(cosine_decay_warmup_sweep_matches_keras, sweep_cosine_warmup)
BOTH_BACKENDS(cosine_decay_warmup_alpha_sweep_matches_keras, sweep_cosine_warmup_alpha)
BOTH_BACKENDS(cosine_decay_restarts_sweep_matches_keras, sweep_cosine_restarts)
BOTH_BACKENDS(cosine_decay_restarts_t_mul_1_sweep_matches_keras, sweep_cosine_restarts_t_mul_1)
BOTH_BACKENDS(cosine_decay_restarts_m_mul_sweep_matches_keras, sweep_cosine_restarts_m_mul)
BOTH_BACKENDS(cosine_decay_restarts_alpha_sweep_matches_keras, sweep_cosine_restarts_alpha)

/* ---- 2. learning_rate_schedule_test.py ----------------------------------------------------------- */

/* schedule(step): an SGD optimizer with the schedule whose raw counter is set to `step`. */
static double lr_at(cuoptimBackend_t b, const cuoptimSchedule_t *s, int64_t step) {
  cuoptimConfig_t c = config_with(CUOPTIM_SGD, s);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, b, 0));
  float *w = test_mem_alloc(b, sizeof(float));
  cuoptimVariable_t var;
  OK(cuoptimAddVariable(opt, "w", w, CUOPTIM_FLOAT32, 1, &var));
  cuoptimWeightInfo_t info;
  OK(cuoptimGetWeightInfo(opt, 0, &info));
  cr_assert_str_eq(info.name, "iteration", "with a schedule the first state entry is the iteration counter");
  double raw = (double)step;
  OK(cuoptimSetWeights(opt, 0, &raw, 1));
  double lr = learning_rate_of(opt);
  OK(cuoptimDestroy(opt));
  test_mem_free(b, w);
  return lr;
}

/* assertAllClose(decayed_lr(step), expected, 1e-6): atol = 1e-6, rtol = 1e-6 (the default). */
#define EXPECT_LR_TOL(b, s, step, expected, atol, rtol)                                               \
  do {                                                                                                \
    double got_ = lr_at((b), &(s), (step));                                                           \
    double want_ = (expected);                                                                        \
    cr_assert(close_to(got_, want_, (rtol), (atol)), "%s at step %lld: %.9g, Keras expects %.9g", #s, \
              (long long)(step), got_, want_);                                                        \
  } while (0)
#define EXPECT_LR(b, s, step, expected) EXPECT_LR_TOL(b, s, step, expected, 1e-6, 1e-6)

/* ExponentialDecayTest */
static void exponential_continuous(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimSchedule_t decayed_lr = exponential(0.05, 10, 0.96, 0);
  EXPECT_LR(b, decayed_lr, 5, 0.05 * pow(0.96, 5.0 / 10.0));
}
static void exponential_staircase(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimSchedule_t decayed_lr = exponential(0.1, 3, 0.96, 1);
  EXPECT_LR(b, decayed_lr, 1, 0.1);
  EXPECT_LR(b, decayed_lr, 2, 0.1);
  EXPECT_LR(b, decayed_lr, 100, 0.1 * pow(0.96, 100 / 3));
}
/* test_variables: the same assertions with the step held in a variable. */
static void exponential_variables(cuoptimBackend_t b) { exponential_staircase(b); }

/* PiecewiseConstantDecayTest */
static void piecewise_values(cuoptimBackend_t b) {
  test_require_backend(b);
  static const double boundaries[3] = {100, 110, 120}, values[4] = {1.0, 0.1, 0.01, 0.001};
  cuoptimSchedule_t decayed_lr = piecewise(3, boundaries, values);
  /* Keras also checks step -999 -> 1.0; cuoptim's counter cannot be negative. Step 0 instead. */
  EXPECT_LR(b, decayed_lr, 0, 1.0);
  EXPECT_LR(b, decayed_lr, 100, 1.0);
  EXPECT_LR(b, decayed_lr, 105, 0.1);
  EXPECT_LR(b, decayed_lr, 110, 0.1);
  EXPECT_LR(b, decayed_lr, 120, 0.01);
  EXPECT_LR(b, decayed_lr, 999, 0.001);
}
static void piecewise_boundary_values(cuoptimBackend_t b) {
  test_require_backend(b);
  static const double boundaries[3] = {1, 2, 3}, values[4] = {0.4, 0.5, 0.6, 0.7};
  cuoptimSchedule_t decayed_lr = piecewise(3, boundaries, values);
  EXPECT_LR(b, decayed_lr, 0, 0.4);
  EXPECT_LR(b, decayed_lr, 1, 0.4);
  EXPECT_LR(b, decayed_lr, 2, 0.5);
  EXPECT_LR(b, decayed_lr, 3, 0.6);
  EXPECT_LR(b, decayed_lr, 4, 0.7);
}

/* LinearDecayTest (PolynomialDecay, power 1) */
static void linear_halfway(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.05, end_lr = 0.0;
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, end_lr, 1.0, 0);
  EXPECT_LR(b, decayed_lr, 5, lr * 0.5);
}
static void linear_end(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.05, end_lr = 0.001;
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, end_lr, 1.0, 0);
  EXPECT_LR(b, decayed_lr, 10, end_lr);
}
static void linear_halfway_with_end(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.05, end_lr = 0.001;
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, end_lr, 1.0, 0);
  EXPECT_LR(b, decayed_lr, 5, (lr + end_lr) * 0.5);
}
static void linear_beyond_end(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.05, end_lr = 0.001;
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, end_lr, 1.0, 0);
  EXPECT_LR(b, decayed_lr, 15, end_lr);
}
static void linear_beyond_end_with_cycle(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.05, end_lr = 0.001;
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, end_lr, 1.0, 1);
  EXPECT_LR(b, decayed_lr, 15, (lr - end_lr) * 0.25 + end_lr);
}

/* SqrtDecayTest (PolynomialDecay, power 0.5) */
static void sqrt_halfway(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.05, end_lr = 0.0, power = 0.5;
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, end_lr, power, 0);
  EXPECT_LR(b, decayed_lr, 5, lr * pow(0.5, power));
}
static void sqrt_end(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.05, end_lr = 0.001, power = 0.5;
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, end_lr, power, 0);
  EXPECT_LR(b, decayed_lr, 10, end_lr);
}
static void sqrt_halfway_with_end(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.05, end_lr = 0.001, power = 0.5;
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, end_lr, power, 0);
  EXPECT_LR(b, decayed_lr, 5, (lr - end_lr) * pow(0.5, power) + end_lr);
}
static void sqrt_beyond_end(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.05, end_lr = 0.001, power = 0.5;
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, end_lr, power, 0);
  EXPECT_LR(b, decayed_lr, 15, end_lr);
}
static void sqrt_beyond_end_with_cycle(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.05, end_lr = 0.001, power = 0.5;
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, end_lr, power, 1);
  EXPECT_LR(b, decayed_lr, 15, (lr - end_lr) * pow(0.25, power) + end_lr);
}
static void sqrt_begin_with_cycle(cuoptimBackend_t b) {
  test_require_backend(b);
  double lr = 0.001;
  /* PolynomialDecay(lr, decay_steps, cycle=True): end_learning_rate and power at their defaults. */
  cuoptimSchedule_t decayed_lr = polynomial(lr, 10, 0.0001, 1.0, 1);
  EXPECT_LR(b, decayed_lr, 0, lr);
}

/* InverseTimeDecayTest */
static void inverse_time_decay(cuoptimBackend_t b) {
  test_require_backend(b);
  double initial_lr = 0.1, decay_rate = 0.96;
  int k = 10;
  cuoptimSchedule_t decayed_lr = inverse_time(initial_lr, k, decay_rate, 0);
  for (int i = 0; i < k + 1; i++) EXPECT_LR(b, decayed_lr, i, initial_lr / (1 + (double)i / k * decay_rate));
}
static void inverse_time_staircase(cuoptimBackend_t b) {
  test_require_backend(b);
  double initial_lr = 0.1, decay_rate = 0.96;
  int k = 10;
  cuoptimSchedule_t decayed_lr = inverse_time(initial_lr, k, decay_rate, 1);
  for (int i = 0; i < k + 1; i++) EXPECT_LR(b, decayed_lr, i, initial_lr / (1 + decay_rate * (i / k)));
}

/* CosineDecayTest */
static double np_cosine_decay(double step, double decay_steps, double alpha) {
  step = step < decay_steps ? step : decay_steps;
  double completed_fraction = step / decay_steps;
  double decay = 0.5 * (1.0 + cos(M_PI * completed_fraction));
  return (1.0 - alpha) * decay + alpha;
}
static double linear_warmup(double step, double warmup_steps, double initial_lr, double target_lr) {
  return step / warmup_steps * (target_lr - initial_lr);
}
static void cosine_decay(cuoptimBackend_t b) {
  test_require_backend(b);
  for (int step = 0; step < 1500; step += 250) {
    cuoptimSchedule_t decayed_lr = cosine(1.0, 1000, 0.0, CUOPTIM_NONE, 0);
    EXPECT_LR(b, decayed_lr, step, np_cosine_decay(step, 1000, 0.0));
  }
}
static void cosine_warmup(cuoptimBackend_t b) {
  test_require_backend(b);
  for (int step = 0; step < 1500; step += 250) {
    cuoptimSchedule_t lr = cosine(0.0, 10, 0.0, 10.0, 1500);
    EXPECT_LR(b, lr, step, linear_warmup(step, 1500, 0.0, 10.0));
  }
}
static void cosine_alpha(cuoptimBackend_t b) {
  test_require_backend(b);
  for (int step = 0; step < 1500; step += 250) {
    cuoptimSchedule_t decayed_lr = cosine(1.0, 1000, 0.1, CUOPTIM_NONE, 0);
    EXPECT_LR(b, decayed_lr, step, np_cosine_decay(step, 1000, 0.1));
  }
}
static void cosine_warmup_decay(cuoptimBackend_t b) {
  test_require_backend(b);
  double warmup_steps = 2000, decay_steps = 1000, initial_lr = 0.0, target_lr = 10.0;
  for (int step = 0; step < 3000; step += 250) {
    cuoptimSchedule_t lr = cosine(initial_lr, decay_steps, 0.0, target_lr, warmup_steps);
    double expected = step < warmup_steps + 1 ? linear_warmup(step, warmup_steps, initial_lr, target_lr)
                                              : target_lr * np_cosine_decay(step - warmup_steps, decay_steps, 0.0);
    EXPECT_LR(b, lr, step, expected);
  }
}

/* CosineDecayRestartsTest */
static double np_cosine_decay_restarts(double step, double decay_steps, double t_mul, double m_mul, double alpha) {
  double fac = 1.0;
  while (step >= decay_steps) {
    step -= decay_steps;
    decay_steps *= t_mul;
    fac *= m_mul;
  }
  double completed_fraction = step / decay_steps;
  double decay = fac * 0.5 * (1.0 + cos(M_PI * completed_fraction));
  return (1.0 - alpha) * decay + alpha;
}
static void restarts_decay(cuoptimBackend_t b) {
  test_require_backend(b);
  for (int step = 0; step < 1500; step += 250) {
    cuoptimSchedule_t decayed_lr = cosine_restarts(1.0, 1000, 2.0, 1.0, 0.0);
    EXPECT_LR(b, decayed_lr, step, np_cosine_decay_restarts(step, 1000, 2.0, 1.0, 0.0));
  }
}
static void restarts_alpha(cuoptimBackend_t b) {
  test_require_backend(b);
  for (int step = 0; step < 1500; step += 250) {
    cuoptimSchedule_t decayed_lr = cosine_restarts(1.0, 1000, 2.0, 1.0, 0.1);
    EXPECT_LR(b, decayed_lr, step, np_cosine_decay_restarts(step, 1000, 2.0, 1.0, 0.1));
  }
}
static void restarts_mmul(cuoptimBackend_t b) {
  test_require_backend(b);
  for (int step = 0; step < 1500; step += 250) {
    cuoptimSchedule_t decayed_lr = cosine_restarts(1.0, 1000, 2.0, 0.9, 0.0);
    EXPECT_LR(b, decayed_lr, step, np_cosine_decay_restarts(step, 1000, 2.0, 0.9, 0.0));
  }
}
static void restarts_tmul(cuoptimBackend_t b) {
  test_require_backend(b);
  for (int step = 0; step < 1500; step += 250) {
    cuoptimSchedule_t decayed_lr = cosine_restarts(1.0, 1000, 1.0, 1.0, 0.0);
    EXPECT_LR(b, decayed_lr, step, np_cosine_decay_restarts(step, 1000, 1.0, 1.0, 0.0));
  }
}

BOTH_BACKENDS(exponential_decay_continuous_matches_keras, exponential_continuous)
BOTH_BACKENDS(exponential_decay_staircase_matches_keras, exponential_staircase)
BOTH_BACKENDS(exponential_decay_variables_match_keras, exponential_variables)
BOTH_BACKENDS(piecewise_constant_decay_values_match_keras, piecewise_values)
BOTH_BACKENDS(piecewise_constant_decay_boundary_values_match_keras, piecewise_boundary_values)
BOTH_BACKENDS(linear_decay_halfway_matches_keras, linear_halfway)
BOTH_BACKENDS(linear_decay_end_matches_keras, linear_end)
BOTH_BACKENDS(linear_decay_halfway_with_end_matches_keras, linear_halfway_with_end)
BOTH_BACKENDS(linear_decay_beyond_end_matches_keras, linear_beyond_end)
BOTH_BACKENDS(linear_decay_beyond_end_with_cycle_matches_keras, linear_beyond_end_with_cycle)
BOTH_BACKENDS(sqrt_decay_halfway_matches_keras, sqrt_halfway)
BOTH_BACKENDS(sqrt_decay_end_matches_keras, sqrt_end)
BOTH_BACKENDS(sqrt_decay_halfway_with_end_matches_keras, sqrt_halfway_with_end)
BOTH_BACKENDS(sqrt_decay_beyond_end_matches_keras, sqrt_beyond_end)
BOTH_BACKENDS(sqrt_decay_beyond_end_with_cycle_matches_keras, sqrt_beyond_end_with_cycle)
BOTH_BACKENDS(sqrt_decay_begin_with_cycle_matches_keras, sqrt_begin_with_cycle)
BOTH_BACKENDS(inverse_time_decay_matches_keras, inverse_time_decay)
BOTH_BACKENDS(inverse_time_decay_staircase_matches_keras, inverse_time_staircase)
BOTH_BACKENDS(cosine_decay_matches_keras, cosine_decay)
BOTH_BACKENDS(cosine_decay_warmup_matches_keras, cosine_warmup)
BOTH_BACKENDS(cosine_decay_alpha_matches_keras, cosine_alpha)
BOTH_BACKENDS(cosine_decay_warmup_decay_matches_keras, cosine_warmup_decay)
BOTH_BACKENDS(cosine_decay_restarts_decay_matches_keras, restarts_decay)
BOTH_BACKENDS(cosine_decay_restarts_alpha_matches_keras, restarts_alpha)
BOTH_BACKENDS(cosine_decay_restarts_mmul_matches_keras, restarts_mmul)
BOTH_BACKENDS(cosine_decay_restarts_tmul_matches_keras, restarts_tmul)

/* Not ported: the test_config tests (serialization, covered by the JSON tests) and test_float64
 * (cuoptim evaluates every schedule in float32, as Keras does for a Python-float initial rate). */

/* ---- 3. TestFitLRSchedulesFlow.test_fit_lr_correctness -------------------------------------------- */

/* Sequential([Dense(2, kernel_initializer="ones", bias_initializer="ones")]), Adam with
 * ExponentialDecay(initial_learning_rate=0.05, decay_steps=1, decay_rate=0.9), loss "mse",
 * x = y = arange(32).reshape((16, 2)), epochs=3, batch_size=4, shuffle=False. The callback of
 * cuoptimMinimize is the Dense layer's forward and backward pass on the next batch. */
typedef struct {
  cuoptimBackend_t backend;
  float *kernel, *bias; /* backend memory, 2x2 and 2 */
  float *grad_kernel, *grad_bias;
  cuoptimGradient_t grads[2];
  int batch; /* batches done */
  double epoch_loss[3];
} fit_t;

static cuoptimStatus_t dense_batch_gradient(void *user, cuoptimOptimizer_t opt, cuoptimStream_t stream, int *n,
                                            const cuoptimGradient_t **grads) {
  fit_t *fit = user;
  OK(cuoptimSynchronize(opt));
  float k[4], bias[2];
  test_mem_download(fit->backend, k, fit->kernel, sizeof k);
  test_mem_download(fit->backend, bias, fit->bias, sizeof bias);
  int first = (fit->batch % 4) * 4; /* 4 samples per batch, 4 batches per epoch */
  float gk[4] = {0, 0, 0, 0}, gb[2] = {0, 0};
  float loss = 0.0f;
  for (int s = first; s < first + 4; s++) {
    float x[2] = {(float)(2 * s), (float)(2 * s + 1)}; /* y == x */
    for (int j = 0; j < 2; j++) {
      float pred = x[0] * k[0 * 2 + j] + x[1] * k[1 * 2 + j] + bias[j];
      float err = pred - x[j];
      loss += err * err;
      float d = 2.0f * err / 8.0f; /* mean over 4 samples x 2 outputs */
      gk[0 * 2 + j] += x[0] * d;
      gk[1 * 2 + j] += x[1] * d;
      gb[j] += d;
    }
  }
  fit->epoch_loss[fit->batch / 4] += (loss / 8.0f) / 4.0; /* the epoch's mean of 4 batch losses */
  fit->batch++;
  test_mem_upload(fit->backend, fit->grad_kernel, gk, sizeof gk);
  test_mem_upload(fit->backend, fit->grad_bias, gb, sizeof gb);
  fit->grads[0] = (cuoptimGradient_t){.variable = 0, .grad = fit->grad_kernel, .dtype = CUOPTIM_FLOAT32};
  fit->grads[1] = (cuoptimGradient_t){.variable = 1, .grad = fit->grad_bias, .dtype = CUOPTIM_FLOAT32};
  *n = 2;
  *grads = fit->grads;
  return CUOPTIM_STATUS_SUCCESS;
}

static void fit_lr_correctness(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimSchedule_t s = exponential(0.05, 1, 0.9, 0);
  cuoptimConfig_t c = config_with(CUOPTIM_ADAM, &s);

  /* Before build: optimizer.variables == [iteration], and it is 0. */
  cuoptimOptimizer_t empty = NULL;
  OK(cuoptimCreate(&empty, &c, b, 0));
  int count = -1;
  OK(cuoptimGetWeightCount(empty, &count));
  cr_assert_eq(count, 1, "len(optimizer.variables) == 1 with a schedule, cuoptim lists %d", count);
  double value = -1;
  OK(cuoptimGetWeights(empty, 0, &value, 1));
  cr_assert_eq(value, 0.0);
  OK(cuoptimDestroy(empty));

  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, b, 0));
  static const float ones[4] = {1, 1, 1, 1};
  fit_t fit = {.backend = b};
  fit.kernel = test_mem_alloc(b, 4 * sizeof(float));
  fit.bias = test_mem_alloc(b, 2 * sizeof(float));
  fit.grad_kernel = test_mem_alloc(b, 4 * sizeof(float));
  fit.grad_bias = test_mem_alloc(b, 2 * sizeof(float));
  test_mem_upload(b, fit.kernel, ones, 4 * sizeof(float));
  test_mem_upload(b, fit.bias, ones, 2 * sizeof(float));
  cuoptimVariable_t var;
  OK(cuoptimAddVariable(opt, "kernel", fit.kernel, CUOPTIM_FLOAT32, 4, &var));
  OK(cuoptimAddVariable(opt, "bias", fit.bias, CUOPTIM_FLOAT32, 2, &var));
  for (int step = 0; step < 12; step++) OK(cuoptimMinimize(opt, dense_batch_gradient, &fit, NULL));
  OK(cuoptimGetWeights(opt, 0, &value, 1));
  cr_assert_eq(value, 12.0, "optimizer.variables[0] == 4 * 3 after fit, cuoptim: %g", value);
  static const double want[3] = {230.79457092285156, 128.30319213867188, 79.33648681640625};
  for (int e = 0; e < 3; e++)
    cr_assert(close_to(fit.epoch_loss[e], want[e], 5e-5, 1e-6), "epoch %d loss %.9g, Keras history: %.9g", e,
              fit.epoch_loss[e], want[e]);
  OK(cuoptimDestroy(opt));
  test_mem_free(b, fit.kernel);
  test_mem_free(b, fit.bias);
  test_mem_free(b, fit.grad_kernel);
  test_mem_free(b, fit.grad_bias);
}

BOTH_BACKENDS(fit_lr_correctness_matches_keras, fit_lr_correctness)

/* ---- 4. PiecewiseConstantDecay's boundaries ------------------------------------------------------ */

/* Keras's PiecewiseConstantDecay.__call__: the sum over the ranges of (step in range) x value, with
 * the boundaries cast to the step's integer type. */
static double keras_piecewise(int64_t step, int n, const double *boundaries, const double *values) {
  int64_t b[CUOPTIM_MAX_BOUNDARIES];
  for (int i = 0; i < n; i++) b[i] = (int64_t)(float)boundaries[i];
  float sum = 0.0f;
  sum += (float)(step <= b[0]) * (float)values[0];
  sum += (float)(step > b[n - 1]) * (float)values[n];
  for (int i = 1; i < n; i++) sum += (float)(step > b[i - 1] && step <= b[i]) * (float)values[i];
  return sum;
}

/* Boundaries that do not increase give Keras's sum other values than any one range's: Keras
 * documents them as strictly increasing, and cuoptim refuses the rest. */
Test(schedules, piecewise_constant_decay_refuses_boundaries_that_do_not_increase) {
  static const double values[3] = {1.0, 2.0, 3.0};
  static const struct {
    double boundaries[2];
    const char *message;
  } cases[] = {
      {{10, 5}, "config->learning_rate.boundaries[1] = 5: not greater than boundaries[0] = 10"},
      {{5, 5}, "config->learning_rate.boundaries[1] = 5: not greater than boundaries[0] = 5"},
      {{-0.0, 0.0}, "config->learning_rate.boundaries[1] = 0: not greater than boundaries[0] = -0"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cuoptimSchedule_t s = piecewise(2, cases[i].boundaries, values);
    /* What Keras would compute at step 6 for {10, 5}: 1 + 2 + 3 would be summed partly. */
    cuoptimConfig_t c = config_with(CUOPTIM_SGD, &s);
    cr_assert_eq(cuoptimConfigValidate(&c), CUOPTIM_STATUS_INVALID_VALUE, "boundaries {%g, %g} accepted",
                 cases[i].boundaries[0], cases[i].boundaries[1]);
    const char *m = cuoptimGetLastErrorMessage();
    cr_expect(strstr(m, cases[i].message) != NULL, "message \"%s\" lacks \"%s\"", m, cases[i].message);
    cr_expect(strstr(m, "strictly increasing") != NULL, "%s", m);
    cuoptimOptimizer_t opt = (cuoptimOptimizer_t)(uintptr_t)0x5a5a5a5a;
    cr_expect_eq(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_INVALID_VALUE);
    cr_expect(strstr(cuoptimGetLastErrorMessage(), "cuoptimCreate: config->learning_rate.boundaries[1]") != NULL,
              "%s", cuoptimGetLastErrorMessage());
    cr_expect_eq(opt, (cuoptimOptimizer_t)(uintptr_t)0x5a5a5a5a);
  }
  /* Keras's sum at step 6 for {10, 5}: 1 (6 <= 10) + 3 (6 > 5) = 4, which no range holds. */
  static const double decreasing[2] = {10, 5};
  cr_expect_eq(keras_piecewise(6, 2, decreasing, values), 4.0);

  /* The JSON parser refuses them too. */
  cuoptimConfig_t parsed;
  const char *json =
      "{\"class_name\": \"SGD\", \"config\": {\"learning_rate\": {\"class_name\": \"PiecewiseConstantDecay\", "
      "\"config\": {\"boundaries\": [10, 5], \"values\": [1.0, 2.0, 3.0]}}}}";
  cr_expect_eq(cuoptimConfigFromKerasJSON(&parsed, json), CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect(strstr(cuoptimGetLastErrorMessage(), "learning_rate.boundaries[1]") != NULL, "%s",
            cuoptimGetLastErrorMessage());
}

/* Strictly increasing boundaries, fractional ones included (equal once cast to the step's type),
 * give Keras's sum at every step. */
Test(schedules, piecewise_constant_decay_increasing_boundaries_match_keras_sum) {
  static const struct {
    int n;
    double boundaries[4];
  } cases[] = {{3, {2, 5, 9}}, {2, {1.2, 1.7}}, {4, {0.5, 1.5, 2.5, 7}}, {1, {-3}}};
  static const double values[5] = {0.5, 0.25, 0.125, 0.0625, 0.03125};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cuoptimSchedule_t s = piecewise(cases[i].n, cases[i].boundaries, values);
    for (int64_t step = 0; step <= 12; step++) {
      double want = keras_piecewise(step, cases[i].n, cases[i].boundaries, values);
      double got = lr_at(CUOPTIM_BACKEND_HOST, &s, step);
      cr_expect_eq(got, want, "case %zu step %lld: %g, Keras %g", i, (long long)step, got, want);
    }
  }
}
