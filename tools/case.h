/*
 * case.h — case files (format "cuoptim-case-1", DESIGN.md "Case files and cuoptim-replay"):
 * load and validate one, run it on a backend, compare the result with what Keras produced.
 * Used by cuoptim-replay and by the test suites.
 *
 * Numbers are float32 values; non-finite ones are written as the strings "nan", "inf", "-inf".
 */
#ifndef CUOPTIM_CASE_H
#define CUOPTIM_CASE_H

#include <stddef.h>
#include <stdint.h>

#include "cuoptim.h"

#define CUOPTIM_CASE_FORMAT "cuoptim-case-1"
#define CUOPTIM_CASE_MAX_DIMS 16

/* A variable of the case: its name, shape and initial value (float32, `count` elements). */
typedef struct {
  char name[CUOPTIM_MAX_NAME];
  int ndim;
  int64_t shape[CUOPTIM_CASE_MAX_DIMS];
  size_t count; /* product of the shape (1 for a scalar) */
  float *value;
} cuoptimCaseVariable;

/* One entry of Keras's `optimizer.variables` as the case expects it. */
typedef struct {
  char name[CUOPTIM_MAX_WEIGHT_NAME]; /* "<variable name>_<slot>" can be longer than a variable name */
  size_t count;
  int is_integer; /* a counter (results only; compared exactly) */
  double *value;
} cuoptimCaseState;

typedef struct {
  char *path;
  char *source;          /* "" when absent */
  char *description;     /* "" when absent */
  char *optimizer_json;  /* the "optimizer" object, byte for byte as the file writes it */
  cuoptimConfig_t config; /* cuoptimConfigFromKerasJSON(optimizer_json); for a MultiOptimizer only
                             use_ema (whether any sub-optimizer uses EMA) and
                             gradient_accumulation_steps (the largest of its sub-optimizers') */
  int multi;              /* optimizer_json is a MultiOptimizer (cuoptimCreateFromKerasJSON) */
  unsigned kinds;         /* bit k set: the optimizer, or one of a MultiOptimizer's, is of kind k */

  int num_exclude;
  char **exclude; /* exclude_from_weight_decay regexes */

  int num_variables;
  cuoptimCaseVariable *variables;

  int has_steps; /* "steps" is present (a multi-rank case may have only rank_steps) */
  int num_steps;
  float ***steps; /* steps[s][v]: variables[v].count gradients, or NULL (no gradient) */

  /* "rank_steps" (the file's rank_steps[s][r][v]): the gradients of each rank of a data-parallel
   * run, stored per rank so that rank_steps[r] has the shape of `steps`: rank_steps[r][s][v]. */
  int has_rank_steps;
  int num_ranks;      /* ranks of every step, at least 1 */
  int num_rank_steps;
  float ****rank_steps;

  int has_expected;
  int64_t expected_iterations;
  float **expected_variables; /* [num_variables][count] */
  int has_expected_state;
  int num_expected_state;
  cuoptimCaseState *expected_state; /* expected.optimizer_variables */
  int has_expected_finalized;
  float **expected_finalized; /* [num_variables][count] */
} cuoptimCase;

/* What a run produced. */
typedef struct {
  int64_t iterations;
  int num_variables;
  float **variables; /* [num_variables][count] after the last step */
  int num_state;
  cuoptimCaseState *state; /* cuoptimGetWeights, every entry in order */
  int has_finalized;       /* use_ema: variables after cuoptimFinalizeVariableValues */
  float **finalized;
} cuoptimCaseResult;

/* Loads and validates the case at `path`. Returns 0, or non-zero with a one-line message in
 * `error` that names the JSON path of the problem ("steps[3][1]: expected 12 numbers, got 11");
 * text of the file in it is quoted as cuoptim_case_quote does, and the message holds no control
 * byte. *c is zeroed first and holds nothing to free on failure. */
int cuoptim_case_load(const char *path, cuoptimCase *c, char *error, size_t error_size);

/* Releases everything cuoptim_case_load allocated; NULL or a zeroed case is a no-op. */
void cuoptim_case_free(cuoptimCase *c);

/* Creates the optimizer on `backend` (device 0 for CUDA), registers the variables in order,
 * applies the exclusions and every step, then reads back the variables, the iterations, every
 * optimizer state entry and, with use_ema, the finalized variables. Returns 0 (CUOPTIM_STATUS_SUCCESS),
 * or the cuoptimStatus_t of the failure with a message in `error` (the library's
 * cuoptimGetLastErrorMessage text when the library failed). *r is zeroed first and holds nothing
 * to free on failure. */
int cuoptim_case_run(const cuoptimCase *c, cuoptimBackend_t backend, cuoptimCaseResult *r, char *error,
                     size_t error_size);

void cuoptim_case_result_free(cuoptimCaseResult *r);

/* What cuoptim_case_run_with does differently from cuoptim_case_run. */
typedef struct {
  /* The gradients to apply, steps[s][v] as cuoptimCase.steps (e.g. rank_steps[r] of the case;
   * not modified); NULL: the case's own steps. `label` names them in messages ("<label>[s]"). */
  float ***steps;
  int num_steps;
  const char *label;
  /* Non-NULL: cuoptimSetCommunicator(optimizer, communicator, &comm_options) after the variables
   * are registered (an MPI_Comm * on the host backend, an ncclComm_t * on the CUDA backend). The
   * call is collective: every rank of the communicator runs the case together. */
  const void *communicator;
  cuoptimCommOptions_t comm_options;
  /* The CUDA device of the run (the backend's and the buffers'; the caller makes it current). */
  int device;
} cuoptimCaseRunOptions;

/* cuoptim_case_run with `options` (NULL: as cuoptim_case_run). The gradients of each step are
 * copied into buffers of the run before the step, so the case is never modified (with a
 * communicator the step overwrites them with the sums). A case without "steps" fails with
 * CUOPTIM_STATUS_INVALID_VALUE unless options->steps is given. */
int cuoptim_case_run_with(const cuoptimCase *c, cuoptimBackend_t backend, const cuoptimCaseRunOptions *options,
                          cuoptimCaseResult *r, char *error, size_t error_size);

/* FNV-1a (64 bits) of every bit of a result: iterations, variables, state entries (names,
 * counts, values), finalized variables. Equal hashes: the same result bit for bit (up to a hash
 * collision); used to check that every rank of a data-parallel run ends with the same bytes. */
uint64_t cuoptim_case_result_hash(const cuoptimCase *c, const cuoptimCaseResult *r);

/* The comparison of one group of values (variables, optimizer_variables, ...). */
typedef struct {
  const char *group;       /* "iterations", "variables", "optimizer_variables", "finalized_variables" */
  int compared;            /* 0: the case expects nothing for this group */
  int pass;
  size_t count;            /* values compared */
  size_t failures;         /* values beyond the tolerance */
  double max_abs;          /* largest |got - want| (inf for a NaN against a number) */
  char max_abs_where[CUOPTIM_MAX_WEIGHT_NAME + 32];
  double max_rel;          /* largest |got - want| / |want| over want != 0 */
  char max_rel_where[CUOPTIM_MAX_WEIGHT_NAME + 32];
  char first_failure[CUOPTIM_MAX_WEIGHT_NAME + 128]; /* "dense_kernel[17]: got .., want .." or "" */
  char message[512];       /* a structural mismatch (names, counts), or "" */
  int64_t got_iterations;  /* the "iterations" group only */
  int64_t want_iterations;
} cuoptimCaseGroupComparison;

enum {
  CUOPTIM_CASE_GROUP_ITERATIONS = 0,
  CUOPTIM_CASE_GROUP_VARIABLES,
  CUOPTIM_CASE_GROUP_STATE,
  CUOPTIM_CASE_GROUP_FINALIZED,
  CUOPTIM_CASE_GROUP_COUNT
};

typedef struct {
  cuoptimCaseGroupComparison groups[CUOPTIM_CASE_GROUP_COUNT];
  int pass;
  double max_abs; /* over all value groups */
  double max_rel;
} cuoptimCaseComparison;

/* Compares a result with the case's `expected`: |got - want| <= atol + rtol * |want| per value
 * (NaN equals NaN, an infinity equals the same infinity), iterations and integer counters
 * exactly, optimizer_variables by position with equal names and counts. Returns 0 when everything
 * is within tolerance, 1 otherwise (also when the case has no expected). */
int cuoptim_case_compare(const cuoptimCase *c, const cuoptimCaseResult *r, double rtol, double atol,
                         cuoptimCaseComparison *cmp);

/* Compares two results of the same case (e.g. host against CUDA) the same way; `a` plays "got"
 * and `b` "want". Returns 0 within tolerance, 1 otherwise. */
int cuoptim_case_compare_results(const cuoptimCase *c, const cuoptimCaseResult *a, const cuoptimCaseResult *b,
                                 double rtol, double atol, cuoptimCaseComparison *cmp);

/* At most this many bytes of a text go into a message (cuoptim_case_quote). */
#define CUOPTIM_CASE_QUOTE_BYTES 60
/* Room for any cuoptim_case_quote result: each byte may take 6 ("\u001b"), plus the quotes,
 * "..." and the NUL. */
#define CUOPTIM_CASE_QUOTED_SIZE (CUOPTIM_CASE_QUOTE_BYTES * 6 + 8)

/* `text` (input: a name, a key, a string of the file) as it goes into a one-line message: in
 * double quotes, its first CUOPTIM_CASE_QUOTE_BYTES bytes at most (cut at a character boundary,
 * "..." after the closing quote when cut), with " and \ escaped and every byte a terminal would
 * not print as itself written the way JSON writes it (\n, \t, \u001b, \u0085, \u2028), or as
 * \xHH when it is not part of valid UTF-8. `out` gets as much as fits, always NUL-terminated. */
void cuoptim_case_quote(const char *text, char *out, size_t out_size);

/* `text` (a whole message) made printable on one line: control bytes, C1 controls, line
 * separators and bytes outside valid UTF-8 escaped as cuoptim_case_quote does; " and \ are kept,
 * as they are the message's own. `out` (not `text`) gets as much as fits, NUL-terminated. */
void cuoptim_case_printable(const char *text, char *out, size_t out_size);

/* One line describing a group: "variables: 1234 values, max abs 1.2e-08 (dense_kernel[17]), ...". */
void cuoptim_case_format_group(const cuoptimCaseGroupComparison *g, char *out, size_t out_size);

#endif
