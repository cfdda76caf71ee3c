/* Status strings, the thread-local last-error message, the debug log, the version. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

static _Thread_local char last_error[1024];

const char *cuoptimGetStatusString(cuoptimStatus_t status) {
  switch (status) {
#define CUOPTIM_STATUS_CASE_(name, value, text) \
  case name: return text;
    CUOPTIM_STATUS_LIST(CUOPTIM_STATUS_CASE_)
#undef CUOPTIM_STATUS_CASE_
  }
  return "unknown status";
}

const char *cuoptimGetLastErrorMessage(void) { return last_error; }

int cuoptimGetVersion(void) { return CUOPTIM_VERSION; }

static int debug_level(void) {
  static int level = -1;
  if (level < 0) {
    const char *env = getenv("CUOPTIM_DEBUG");
    level = CUOPTIM_LOG_NONE;
    if (env && strcasecmp(env, "WARN") == 0) level = CUOPTIM_LOG_WARN;
    if (env && strcasecmp(env, "INFO") == 0) level = CUOPTIM_LOG_INFO;
    if (env && strcasecmp(env, "TRACE") == 0) level = CUOPTIM_LOG_TRACE;
  }
  return level;
}

void cuoptim_log(int level, const char *fmt, ...) {
  if (level > debug_level()) return;
  static const char *names[] = {"", "WARN", "INFO", "TRACE"};
  va_list args;
  va_start(args, fmt);
  fprintf(stderr, "cuoptim %s: ", names[level]);
  vfprintf(stderr, fmt, args);
  fputc('\n', stderr);
  va_end(args);
}

cuoptimStatus_t cuoptim_error(cuoptimStatus_t status, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, args);
  va_end(args);
  cuoptim_log(CUOPTIM_LOG_WARN, "%s (%s)", last_error, cuoptimGetStatusString(status));
  return status;
}
