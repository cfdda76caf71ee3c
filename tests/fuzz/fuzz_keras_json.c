/*
 * fuzz_keras_json — cuoptimConfigFromKerasJSON on arbitrary text.
 *
 * Properties: the status is one the contract lists, with a message naming the call; *config is
 * written only on success; a config read successfully validates, creates a host optimizer, and
 * survives the round trip (fuzz_check_json_round_trip): its JSON reads back to the same config
 * and writes the same text again.
 */
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "fuzz_util.h"

static const unsigned FROM_JSON_STATUSES =
    FUZZ_ST(CUOPTIM_STATUS_SUCCESS) | FUZZ_ST(CUOPTIM_STATUS_PARSE_ERROR) | FUZZ_ST(CUOPTIM_STATUS_INVALID_VALUE) |
    FUZZ_ST(CUOPTIM_STATUS_NOT_SUPPORTED) | FUZZ_ST(CUOPTIM_STATUS_ALLOC_FAILED);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (text == NULL) return 0;
  memcpy(text, data, size);
  text[size] = '\0';

  cuoptimConfig_t config, untouched;
  memset(&config, 0xa5, sizeof config);
  memcpy(&untouched, &config, sizeof config);
  cuoptimStatus_t st = cuoptimConfigFromKerasJSON(&config, text);
  free(text);
  fuzz_check_status("cuoptimConfigFromKerasJSON", st, FROM_JSON_STATUSES);
  if (st != CUOPTIM_STATUS_SUCCESS) {
    if (memcmp(&config, &untouched, sizeof config) != 0)
      fuzz_fail("cuoptimConfigFromKerasJSON failed (%s) but wrote *config", cuoptimGetStatusString(st));
    return 0;
  }

  st = cuoptimConfigValidate(&config);
  if (st != CUOPTIM_STATUS_SUCCESS)
    fuzz_fail("a config read from JSON does not validate: %s", cuoptimGetLastErrorMessage());
  cuoptimOptimizer_t opt = NULL;
  st = cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_HOST, 0);
  if (st != CUOPTIM_STATUS_SUCCESS)
    fuzz_fail("cuoptimCreate refuses a config read from JSON: %s", cuoptimGetLastErrorMessage());
  cuoptimDestroy(opt);

  fuzz_check_json_round_trip(&config, 1);
  return 0;
}
