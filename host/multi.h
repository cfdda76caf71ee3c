/*
 * multi.h — the MultiOptimizer's object, shared by host/multi.c and host/multi_json.c. Not
 * installed.
 */
#ifndef CUOPTIM_MULTI_H
#define CUOPTIM_MULTI_H

#include "internal.h"

typedef struct {
  int optimizer;           /* sub-optimizer index */
  cuoptimVariable_t index; /* the variable's index in that sub-optimizer */
} multi_route;

struct cuoptimMulti {
  int num_optimizers;
  cuoptimOptimizer_t *optimizers;
  int num_patterns;
  char **patterns;
  int *pattern_optimizer;
  cuoptimPattern **fullmatch; /* each pattern as \A(?:p)\Z */
  int default_optimizer;
  double loss_scale_factor;
  int built;     /* a step or a state call happened: no more variables */
  int adding;    /* registering a variable on a sub-optimizer */
  /* Keras's `iterations` of the MultiOptimizer, one per step. Every sub-optimizer with variables
   * steps in every step (check_step), so the first of them (the witness) counts the steps, those
   * a CUDA graph replays too: the count is iterations + (the witness's raw counter now -
   * witness_base) (cuoptim_multi_count). */
  int64_t iterations;
  int64_t witness_base;
  int stepping; /* in cuoptim_multi_apply: a sub-optimizer's step is the MultiOptimizer's */
  float learning_rate; /* Keras's MultiOptimizer learning_rate variable (0.0, unused) */
  int num_variables, capacity;
  multi_route *routes;
  uint32_t round;   /* counts steps, for duplicate detection */
  uint32_t *listed; /* per variable: the round it was last listed in */
  int *given;       /* per sub-optimizer: gradients of this step, and non-NULL ones */
  int *non_null;
  cuoptimGradient_t *scratch; /* the step's gradients grouped by sub-optimizer */
  int scratch_capacity;
};

#endif /* CUOPTIM_MULTI_H */
