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
  int64_t iterations;
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
