/* The host backend's threads: one small pool per process, shared by every optimizer, that runs a
 * stage's function on N threads at once (the calling thread being one of them).
 *
 * Why a pool of our own and not OpenMP: its threads sleep on a condition variable between stages
 * (no spinning that would steal the cores from MPI ranks or from the caller's own threads), the
 * child of a fork() gets a fresh pool, and consumers of the static library need nothing but
 * -pthread. What a thread computes never depends on how many there are (backend_host.c gives out
 * fixed blocks), so the pool may always run fewer threads than asked: when another thread's
 * optimizer is using it, the caller runs the stage alone. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static struct {
  pthread_mutex_t lock;
  pthread_cond_t wake; /* a new generation of work */
  pthread_cond_t done; /* the last participant finished */
  int started;         /* worker threads alive (they never exit) */
  int busy;            /* a caller is running a stage on the pool */
  unsigned long generation;
  int workers;         /* threads of this generation, the caller included */
  int remaining;       /* pool threads of this generation not yet finished */
  cuoptimHostTask task;
  void *context;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, NULL, NULL};

static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;

/* fork(): the child has none of the parent's threads. The parent holds the lock across the fork,
 * so the child's copy of the pool is consistent, and starts again from an empty pool. */
static void before_fork(void) { pthread_mutex_lock(&pool.lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&pool.lock); }
static void after_fork_child(void) {
  pthread_mutex_init(&pool.lock, NULL);
  pthread_cond_init(&pool.wake, NULL);
  pthread_cond_init(&pool.done, NULL);
  pool.started = pool.busy = pool.workers = pool.remaining = 0;
  pool.task = NULL;
  pool.context = NULL;
}
static void install_fork_handlers(void) { pthread_atfork(before_fork, after_fork_parent, after_fork_child); }

/* What a pool thread starts from: its index (1, 2, ...: the caller is worker 0) and the generation
 * current when it was created, so that it takes part in the very next one, which may begin before
 * the new thread first holds the lock. */
typedef struct {
  int index;
  unsigned long generation;
} PoolThreadStart;

static void *pool_thread(void *arg) {
  PoolThreadStart start = *(PoolThreadStart *)arg;
  free(arg);
  int index = start.index;
  unsigned long seen = start.generation;
  pthread_mutex_lock(&pool.lock);
  for (;;) {
    while (pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
    seen = pool.generation;
    if (index >= pool.workers) continue; /* not needed this time */
    cuoptimHostTask task = pool.task;
    void *context = pool.context;
    int workers = pool.workers;
    pthread_mutex_unlock(&pool.lock);
    task(context, index, workers);
    pthread_mutex_lock(&pool.lock);
    if (--pool.remaining == 0) pthread_cond_signal(&pool.done);
  }
  return NULL;
}

/* Starts pool threads until there are `wanted` (lock held). Returns how many there are: fewer
 * when the system refuses a thread, which only means the work is shared by fewer. */
static int grow(int wanted) {
  if (pool.started >= wanted) return pool.started;
  pthread_once(&fork_handlers_once, install_fork_handlers);
  /* Pool threads take no signals: they belong to the caller's threads. */
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pthread_attr_t attributes;
  pthread_attr_init(&attributes);
  pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
  while (pool.started < wanted) {
    pthread_t id;
    PoolThreadStart *start = malloc(sizeof *start);
    int error = ENOMEM;
    if (start) {
      start->index = pool.started + 1;
      start->generation = pool.generation;
      error = pthread_create(&id, &attributes, pool_thread, start);
      if (error) free(start);
    }
    if (error) {
      cuoptim_log(CUOPTIM_LOG_WARN, "host backend: cannot start thread %d (%s): running on %d", pool.started + 2,
                  strerror(error), pool.started + 1);
      break;
    }
    pool.started++;
  }
  pthread_attr_destroy(&attributes);
  pthread_sigmask(SIG_SETMASK, &previous, NULL);
  return pool.started;
}

void cuoptim_host_run(int threads, cuoptimHostTask task, void *context) {
  if (threads <= 1) {
    task(context, 0, 1);
    return;
  }
  pthread_mutex_lock(&pool.lock);
  if (pool.busy) { /* another thread's optimizer has the pool */
    pthread_mutex_unlock(&pool.lock);
    task(context, 0, 1);
    return;
  }
  int helpers = grow(threads - 1);
  if (helpers > threads - 1) helpers = threads - 1;
  if (helpers == 0) {
    pthread_mutex_unlock(&pool.lock);
    task(context, 0, 1);
    return;
  }
  pool.busy = 1;
  pool.task = task;
  pool.context = context;
  pool.workers = helpers + 1;
  pool.remaining = helpers;
  pool.generation++;
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);
  task(context, 0, helpers + 1);
  pthread_mutex_lock(&pool.lock);
  while (pool.remaining > 0) pthread_cond_wait(&pool.done, &pool.lock);
  pool.busy = 0;
  pool.task = NULL;
  pool.context = NULL;
  pthread_mutex_unlock(&pool.lock);
}

int cuoptim_host_default_threads(void) {
  cpu_set_t set;
  int n = 1;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
  if (n < 1) n = 1;
  return n > CUOPTIM_HOST_MAX_THREADS ? CUOPTIM_HOST_MAX_THREADS : n;
}

cuoptimStatus_t cuoptim_host_threads_from_environment(const char *caller, int *threads) {
  const char *text = getenv("CUOPTIM_HOST_THREADS");
  if (!text || !*text) {
    *threads = cuoptim_host_default_threads();
    return CUOPTIM_STATUS_SUCCESS;
  }
  char *end = NULL;
  errno = 0;
  long n = strtol(text, &end, 10);
  if (*text < '0' || *text > '9' || errno || *end || n < 1 || n > CUOPTIM_HOST_MAX_THREADS)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: environment variable CUOPTIM_HOST_THREADS = \"%.40s\": must be a whole number from 1 "
                         "to %d (the host backend's threads; unset or empty: one per CPU the process may run on)",
                         caller, text, CUOPTIM_HOST_MAX_THREADS);
  *threads = (int)n;
  return CUOPTIM_STATUS_SUCCESS;
}
