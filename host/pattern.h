/*
 * pattern.h — Python `re` patterns, as Keras's exclude_from_weight_decay compiles them
 * (re.compile("|".join(names))) and searches them (re.search), translated into PCRE2 patterns
 * with the same meaning and compiled and matched within fixed time and memory limits
 * (host/pattern.c). Not installed.
 */
#ifndef CUOPTIM_PATTERN_H
#define CUOPTIM_PATTERN_H

#include <stddef.h>

#include "cuoptim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The longest pattern accepted, in bytes of UTF-8 (the patterns joined with "|"). */
#define CUOPTIM_PATTERN_MAX_BYTES 16384

typedef struct cuoptimPattern cuoptimPattern;

/* Compiles `python`, a Python 3.11 `re` pattern in UTF-8, into *pattern.
 * INVALID_VALUE: Python refuses the pattern, or it uses a construct cuoptim refuses (see
 * cuoptimExcludeFromWeightDecay in cuoptim.h), or it exceeds a limit; `why` receives the reason
 * and *position the code-point offset in `python` it concerns (-1 when none). ALLOC_FAILED: out of
 * host memory. *pattern is written only on success. */
cuoptimStatus_t cuoptim_pattern_compile(const char *python, cuoptimPattern **pattern, char *why, size_t why_size,
                                        long *position);

/* Whether re.search(pattern, subject) finds a match: *found = 1 or 0. INVALID_VALUE (reason in
 * `why`) when the search exceeds a limit or `subject` is not UTF-8: then it has no answer, never
 * "no match". */
cuoptimStatus_t cuoptim_pattern_search(cuoptimPattern *pattern, const char *subject, int *found, char *why,
                                       size_t why_size);

void cuoptim_pattern_free(cuoptimPattern *pattern);

#ifdef __cplusplus
}
#endif

#endif /* CUOPTIM_PATTERN_H */
