/*
 * fuzz_util.h — what the fuzz targets of tests/fuzz/ share: reporting a broken property, comparing
 * configs field by field, and the Keras JSON round trip (write, read back, write again).
 */
#ifndef CUOPTIM_FUZZ_UTIL_H
#define CUOPTIM_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "cuoptim.h"

/* Prints "property failed: ..." and aborts, so that libFuzzer records the input as a crash. */
void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Bit `status` of a mask of allowed statuses. */
#define FUZZ_ST(status) (1u << (unsigned)(status))

/* Aborts unless `status` is in `allowed`, and unless a failure left a message that names `call`. */
void fuzz_check_status(const char *call, cuoptimStatus_t status, unsigned allowed);

/* 1 when a and b hold the same config, else 0 with the first differing field in `why`. Doubles
 * compare as numbers with NaN (None) equal to NaN; strings up to their NUL; the boundaries and
 * values of a PiecewiseConstantDecay up to its count. With `as_written`, a's names are first
 * mapped the way cuoptimConfigToKerasJSON writes them and cuoptimConfigFromKerasJSON reads them
 * back ("" becomes the Keras default name; a byte that is not UTF-8 becomes its code point). */
int fuzz_configs_equal(const cuoptimConfig_t *a, const cuoptimConfig_t *b, int as_written, char *why,
                       size_t why_size);

/* Checks cuoptimConfigToKerasJSON's contract on a valid config (size query, a buffer one byte
 * short is left alone, printable ASCII), reads the text back with cuoptimConfigFromKerasJSON and
 * writes it again: the two texts must be equal, and with `compare_fields` the config read back
 * must equal `config` as written (fuzz_configs_equal). */
void fuzz_check_json_round_trip(const cuoptimConfig_t *config, int compare_fields);


#endif
