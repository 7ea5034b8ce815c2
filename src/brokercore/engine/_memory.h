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
   - Large blocks already faulted in are kept for the next one instead of going back to
     the kernel: an event buffer lent to a numpy array when the array dies (one per
     process, for the next large batch) and an id-map table when its book dies or the
     map outgrows it (one per power-of-two size). A process that runs batch after batch,
     or makes book after book, then faults nothing in again. */
#ifndef BROKERCORE_MEMORY_H
#define BROKERCORE_MEMORY_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
   NULL leaves the buffer as it was. */
static void *bc_events_realloc(void *p, size_t used, size_t bytes) {
    void *spare, *grown;
    if (bytes < BC_SPARE_MIN)
        return realloc(p, bytes);
    spare = __atomic_exchange_n(&bc_spare_events, NULL, __ATOMIC_ACQ_REL);
    if (spare == NULL || malloc_usable_size(spare) <= (p != NULL ? malloc_usable_size(p) : 0)) {
        bc_events_free(spare);
        return realloc(p, bytes);
    }
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
