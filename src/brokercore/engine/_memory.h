/* The order book's large blocks (event buffers, the order-id map): which pages they
   get and when those are faulted in. Included from _engine.pyx's extern block.

   Measured with benchmarks/bench_engine.py's cold row (the first process() of a
   1,000,000-command batch on a fresh book in a fresh process; README):

   - No transparent huge pages. With THP defrag = madvise, a MADV_HUGEPAGE region
     faulted in while commands run can stall for milliseconds per 2 MiB: the kernel
     compacts memory synchronously when free memory is fragmented, and in a VM that
     hands free memory back to its host a fresh huge page is a host fault as well.
     The blocks gained nothing measurable from huge TLB entries: events are written
     in order, and sequential order ids land in neighbouring id-map entries.
   - A block sized up front (the id map from session_orders) is faulted in where it is
     allocated, before commands run (bc_prefault).
   - A large event buffer with no page in yet (a process's first large batch) is
     faulted in on a thread of its own, a little ahead of the batch writing it
     (bc_prefault_start).
   - Large blocks already faulted in are kept for the next one instead of going back to
     the kernel: an event buffer lent to a numpy array when the array dies (one per
     process, for the next large batch) and an id-map table when its book dies or the
     map outgrows it (one per power-of-two size). A process that runs batch after batch,
     or makes book after book, then faults nothing in again. */
#ifndef BROKERCORE_MEMORY_H
#define BROKERCORE_MEMORY_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifdef __APPLE__
#include <malloc/malloc.h>
#define malloc_usable_size malloc_size
#else
#include <malloc.h>
#endif

#define BC_PAGE ((uintptr_t)4096)
/* Blocks from 8 MiB (above the KEEP_EVENTS buffer a book keeps for itself) up to
   512 MiB (about 6 M events, an id map for 16 M orders) are kept. */
#define BC_SPARE_MIN ((size_t)8 << 20)
#define BC_SPARE_MAX ((size_t)512 << 20)

/* Fault in the whole pages of [p, p + n) for writing: one MADV_POPULATE_WRITE call
   (Linux 5.14+), else a write to each page that leaves its bytes as they are. */
static void bc_prefault(void *p, size_t n) {
    uintptr_t start = ((uintptr_t)p + BC_PAGE - 1) & ~(BC_PAGE - 1);
    uintptr_t end = ((uintptr_t)p + n) & ~(BC_PAGE - 1);
    if (end <= start)
        return;
#ifdef MADV_POPULATE_WRITE
    if (madvise((void *)start, end - start, MADV_POPULATE_WRITE) == 0)
        return;
#endif
    for (uintptr_t page = start; page < end; page += BC_PAGE)
        __atomic_fetch_add((char *)page, 0, __ATOMIC_RELAXED);
}

/* Faulting a large event buffer in on a thread of its own while a batch writes to it
   (bc_prefault_start, _progress, _stop): a page costs its first writer about as much
   through MADV_POPULATE_WRITE as through a fault (1.3 vs 1.5 us on the machine this was
   measured on, a VM whose host backs each fresh page as well), so only another thread
   can take that cost off the batch. The thread keeps at most BC_PREFAULT_AHEAD ahead of
   the events written so far: a batch writes fewer events than process() reserves for
   it (1.4 per command of the 2 on the mixed profile), and pages faulted in for nothing
   cost their fault and their release. Without MADV_POPULATE_WRITE (before Linux 5.14,
   or not Linux) no thread is started: the fallback, a write to each page, would race
   with the batch's writes. */
#ifdef MADV_POPULATE_WRITE
#define BC_PREFAULT_STEP ((size_t)64 << 10)    /* per madvise call; a stop waits for one */
#define BC_PREFAULT_AHEAD ((size_t)4 << 20)    /* how far ahead of the writer; it waits
                                                  for half of that to be written */
#define BC_PREFAULT_LEAD ((size_t)1 << 20)     /* the least it keeps ahead of the writer */
#define BC_PREFAULT_MIN BC_SPARE_MIN           /* a thread for less is not worth its start */
#define BC_PREFAULT_BYTES_PER_NS 2             /* faster than any batch writes its events */

typedef struct {
    pthread_t thread;
    pthread_mutex_t lock;                      /* with wake: a stop ends a wait at once */
    pthread_cond_t wake;
    char *base, *start, *end;
    size_t written;                            /* bytes from base the writer has written */
    int stop;                                  /* both read and written atomically */
} bc_prefaulter;

/* Wait about until the writer may have written `bytes` more, or a stop. */
static void bc_prefault_wait(bc_prefaulter *f, size_t bytes) {
    struct timespec until;
    long long ns = (long long)(bytes / BC_PREFAULT_BYTES_PER_NS);
    clock_gettime(CLOCK_MONOTONIC, &until);
    ns += until.tv_nsec;
    until.tv_sec += ns / 1000000000;
    until.tv_nsec = ns % 1000000000;
    pthread_mutex_lock(&f->lock);
    if (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE))
        pthread_cond_timedwait(&f->wake, &f->lock, &until);
    pthread_mutex_unlock(&f->lock);
}

static int bc_prefault_unsupported = 0;       /* madvise said EINVAL: start no thread */

static void *bc_prefault_run(void *arg) {
    bc_prefaulter *f = (bc_prefaulter *)arg;
    char *p = f->start;
    size_t n, written, limit;
    while (p < f->end && !__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE)) {
        written = __atomic_load_n(&f->written, __ATOMIC_RELAXED);
        limit = written + BC_PREFAULT_AHEAD;
        if ((size_t)(p - f->base) < written + BC_PREFAULT_LEAD) {
            /* A writer as fast as the thread has caught up: go on where the writer will
               be, not where it is now (both faulting the same pages doubles the work). */
            p = (char *)(((uintptr_t)f->base + written + BC_PREFAULT_AHEAD / 2) & ~(BC_PAGE - 1));
            continue;
        }
        if ((size_t)(p - f->base) >= limit) {
            bc_prefault_wait(f, (size_t)(p - f->base) - limit + BC_PREFAULT_AHEAD / 2);
            continue;
        }
        n = (size_t)(f->end - p) < BC_PREFAULT_STEP ? (size_t)(f->end - p) : BC_PREFAULT_STEP;
        if (madvise(p, n, MADV_POPULATE_WRITE) != 0) {
            if (errno == EINVAL)                /* a kernel before 5.14: never again */
                __atomic_store_n(&bc_prefault_unsupported, 1, __ATOMIC_RELAXED);
            break;
        }
        p += n;
    }
    return NULL;
}

/* The lock and the condition (on the monotonic clock) of a new bc_prefaulter. */
static int bc_prefault_sync_init(bc_prefaulter *f) {
    pthread_condattr_t attr;
    int failed = pthread_condattr_init(&attr) != 0;
    if (failed)
        return -1;
    failed = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0
             || pthread_cond_init(&f->wake, &attr) != 0;
    pthread_condattr_destroy(&attr);
    if (failed)
        return -1;
    if (pthread_mutex_init(&f->lock, NULL) != 0) {
        pthread_cond_destroy(&f->wake);
        return -1;
    }
    return 0;
}

/* Start faulting in the whole pages of [base, base + n) on a new thread, ahead of the
   writer (bc_prefault_progress); NULL when none was started (less than
   BC_PREFAULT_MIN, no MADV_POPULATE_WRITE in the headers or the kernel, no memory or
   thread to be had): the pages then fault in as they are written. The memory must stay
   mapped until bc_prefault_stop. */
static void *bc_prefault_start(void *base, size_t n) {
    uintptr_t start = ((uintptr_t)base + BC_PAGE - 1) & ~(BC_PAGE - 1);
    uintptr_t end = ((uintptr_t)base + n) & ~(BC_PAGE - 1);
    bc_prefaulter *f;
    if (end < start + BC_PREFAULT_MIN || __atomic_load_n(&bc_prefault_unsupported, __ATOMIC_RELAXED)
        || (f = (bc_prefaulter *)malloc(sizeof(bc_prefaulter))) == NULL)
        return NULL;
    f->base = (char *)base;
    f->start = (char *)start;
    f->end = (char *)end;
    f->written = 0;
    f->stop = 0;
    if (bc_prefault_sync_init(f) == 0) {
        if (pthread_create(&f->thread, NULL, bc_prefault_run, f) == 0)
            return f;
        pthread_cond_destroy(&f->wake);
        pthread_mutex_destroy(&f->lock);
    }
    free(f);
    return NULL;
}

/* Tell a bc_prefault_start thread (NULL: none) how many bytes have been written. */
static void bc_prefault_progress(void *handle, size_t written) {
    if (handle != NULL)
        __atomic_store_n(&((bc_prefaulter *)handle)->written, written, __ATOMIC_RELAXED);
}

/* Stop a bc_prefault_start thread (NULL: none) and wait for it: after this the memory
   may move or be freed. */
static void bc_prefault_stop(void *handle) {
    bc_prefaulter *f = (bc_prefaulter *)handle;
    if (f == NULL)
        return;
    pthread_mutex_lock(&f->lock);
    __atomic_store_n(&f->stop, 1, __ATOMIC_RELEASE);
    pthread_cond_signal(&f->wake);
    pthread_mutex_unlock(&f->lock);
    pthread_join(f->thread, NULL);
    pthread_cond_destroy(&f->wake);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

#else
static void *bc_prefault_start(void *base, size_t n) {
    (void)base;
    (void)n;
    return NULL;
}

static void bc_prefault_progress(void *handle, size_t written) {
    (void)handle;
    (void)written;
}

static void bc_prefault_stop(void *handle) {
    (void)handle;
}
#endif

/* The spare event buffer, exchanged atomically: books on other threads share it. */
static void *bc_spare_events = NULL;

/* free() for a buffer a numpy array was lent: a large one becomes the spare (the one
   it displaces is freed). */
static void bc_events_free(void *p) {
    size_t size = p != NULL ? malloc_usable_size(p) : 0;
    if (size >= BC_SPARE_MIN && size <= BC_SPARE_MAX)
        p = __atomic_exchange_n(&bc_spare_events, p, __ATOMIC_ACQ_REL);
    free(p);
}

/* realloc() for an event buffer holding `used` bytes: a large request starts from the
   spare when that is bigger than the buffer (its pages are already in). As realloc(),
   NULL leaves the buffer as it was. *faulted: how many bytes at the start of the new
   buffer are known to be faulted in (the `used` ones, or the whole spare: a former
   result, written through). */
static void *bc_events_realloc(void *p, size_t used, size_t bytes, size_t *faulted) {
    void *spare, *grown;
    size_t old = p != NULL ? malloc_usable_size(p) : 0;
    *faulted = used;
    if (bytes < BC_SPARE_MIN)
        return realloc(p, bytes);
    spare = __atomic_exchange_n(&bc_spare_events, NULL, __ATOMIC_ACQ_REL);
    if (spare == NULL || malloc_usable_size(spare) <= old) {
        bc_events_free(spare);
        return realloc(p, bytes);
    }
    *faulted = malloc_usable_size(spare) < bytes ? malloc_usable_size(spare) : bytes;
    grown = realloc(spare, bytes);
    if (grown == NULL) {
        bc_events_free(spare);
        return NULL;
    }
    if (used)
        memcpy(grown, p, used);
    free(p);
    return grown;
}

/* The spare id-map tables, one per power-of-two size (index: log2 of the size). */
static void *bc_spare_tables[64];

/* The spare slot for a table of `bytes`, or -1 when a table of that size is not kept. */
static int bc_table_class(size_t bytes) {
    if (bytes < BC_SPARE_MIN || bytes > BC_SPARE_MAX || (bytes & (bytes - 1)) != 0)
        return -1;
    return __builtin_ctzll(bytes);
}

/* calloc() for an id-map table: the spare of its size, zeroed, when there is one. */
static void *bc_table_calloc(size_t count, size_t size) {
    int k = bc_table_class(count * size);
    void *p = k >= 0 ? __atomic_exchange_n(&bc_spare_tables[k], NULL, __ATOMIC_ACQ_REL) : NULL;
    if (p == NULL)
        return calloc(count, size);
    memset(p, 0, count * size);
    return p;
}

/* free() for an id-map table of `bytes`: it becomes the spare of its size. */
static void bc_table_free(void *p, size_t bytes) {
    int k = bc_table_class(bytes);
    if (p != NULL && k >= 0)
        p = __atomic_exchange_n(&bc_spare_tables[k], p, __ATOMIC_ACQ_REL);
    free(p);
}

#endif
