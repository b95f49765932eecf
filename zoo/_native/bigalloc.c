/* A cache of large allocations, preloaded into the process (LD_PRELOAD) by zoo.bigalloc.

Why: XLA:CPU allocates every execution's temporaries (hundreds of MB for a convolutional training step)
and Eigen its convolutions' packing buffers (tens of MB per call) with malloc. glibc serves any block over
32 MiB from a fresh mmap in a thread's arena whatever its tunables, and unmaps it on free, so each step
pays the kernel to zero every page it writes again: on the 2-core CPU of issue 7, 11% of all CPU time of
the PixelCNN step at batch 256 is the kernel's clear_page_erms. Blocks under 32 MiB fault too: a jitted
layer whose 12-25 MiB output glibc returned to the kernel on free took 1-84 page faults per call (the
7x7 mask A's forward pass 80-84, 4 KiB pages): a 1-channel 4x7 convolution into 64 channels ran at 78-107
GFLOP/s against 205-228 with its block kept, into 128 at 117-212 against 179-232 (alternating processes).
Here a block of at least ZOO_BIGALLOC_MIN_MB (2: one huge page) MiB is carved from one reserved address
range, and freed blocks stay mapped and
resident for the next request of a fitting size (up to ZOO_BIGALLOC_CACHE_MB of them; beyond that the
oldest give their pages back with MADV_DONTNEED, and keep their addresses). Everything smaller, and all
that glibc allocated, goes to glibc as before.

The functions are the set glibc documents for replacing malloc (malloc, free, calloc, realloc,
aligned_alloc, malloc_usable_size, memalign, posix_memalign, pvalloc, valloc) plus reallocarray; each
forwards to glibc's __libc_* entry points for what it does not keep, so no dlsym is needed while the
loader itself allocates. The arithmetic of anything that uses the memory is unchanged: only where large
blocks come from.
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

#define HUGE_PAGE ((size_t)2 << 20)
#define RESERVE ((size_t)1 << 40)   /* address space only (PROT_NONE, MAP_NORESERVE) */
#define MAX_BLOCKS 4096

typedef struct {
  char *addr;
  size_t size;      /* a multiple of HUGE_PAGE */
  int live;         /* handed out */
  int resident;     /* pages kept (a free block: counted in cached_bytes) */
  uint64_t freed;   /* when it was freed, as a counter, for oldest-first release */
} block_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *base, *bump, *end;     /* the reserved range and its unused part */
static int state;                   /* 0: not set up, 1: on, -1: off (setup failed or disabled) */
static volatile int enabled = 1;    /* new large blocks from here (zoo_bigalloc_set_enabled) */
static size_t min_bytes = HUGE_PAGE;
static size_t cache_limit;
static size_t cached_bytes;
static uint64_t clock_;
static block_t blocks[MAX_BLOCKS];
static int nblocks;
static uint64_t n_fresh, n_reused, n_released;

static size_t env_mb(const char *name, size_t fallback) {
  const char *v = getenv(name);
  if (!v || !*v) return fallback;
  char *e;
  unsigned long long mb = strtoull(v, &e, 10);
  return *e ? fallback : (size_t)mb << 20;
}

static void at_fork_prepare(void) { pthread_mutex_lock(&lock); }
static void at_fork_parent(void) { pthread_mutex_unlock(&lock); }
static void at_fork_child(void) { pthread_mutex_init(&lock, NULL); }

/* Called with the lock held. */
static int setup(void) {
  if (state) return state;
  state = -1;
  const char *off = getenv("ZOO_BIGALLOC");
  if (off && strcmp(off, "0") == 0) return state;
  min_bytes = env_mb("ZOO_BIGALLOC_MIN_MB", min_bytes);
  if (min_bytes < HUGE_PAGE) min_bytes = HUGE_PAGE;   /* each block takes whole 2 MB pages */
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  size_t quarter = pages > 0 && page > 0 ? (size_t)pages * (size_t)page / 4 : (size_t)4 << 30;
  cache_limit = env_mb("ZOO_BIGALLOC_CACHE_MB", quarter);
  void *r = mmap(NULL, RESERVE + HUGE_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return state;
  base = (char *)(((uintptr_t)r + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
  bump = base;
  end = base + RESERVE;
  pthread_atfork(at_fork_prepare, at_fork_parent, at_fork_child);
  state = 1;
  return state;
}

static int ours(const void *p) { return base && (const char *)p >= base && (const char *)p < end; }

static block_t *find_live(const void *p) {
  for (int i = 0; i < nblocks; i++)
    if (blocks[i].addr == p && blocks[i].live) return &blocks[i];
  return NULL;
}

/* Gives back the pages of the oldest free blocks until the cache is within its limit (lock held). */
static void trim(void) {
  while (cached_bytes > cache_limit) {
    block_t *old = NULL;
    for (int i = 0; i < nblocks; i++)
      if (!blocks[i].live && blocks[i].resident && (!old || blocks[i].freed < old->freed)) old = &blocks[i];
    if (!old) return;
    madvise(old->addr, old->size, MADV_DONTNEED);
    old->resident = 0;
    cached_bytes -= old->size;
    n_released++;
  }
}

/* A large block of at least n bytes, its usable size in *size and whether it may hold old data in
   *dirty; NULL where the caller should ask glibc instead. */
static void *take(size_t n, size_t *size, int *dirty) {
  if (!enabled || n > RESERVE) return NULL;
  if (!state) {   /* the environment's settings are read once, before the first block of any size */
    pthread_mutex_lock(&lock);
    setup();
    pthread_mutex_unlock(&lock);
  }
  if (state != 1 || n < min_bytes) return NULL;
  size_t want = (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
  void *p = NULL;
  pthread_mutex_lock(&lock);
  {
    block_t *best = NULL;   /* the smallest free block that fits without wasting half of it, resident first */
    for (int i = 0; i < nblocks; i++) {
      block_t *b = &blocks[i];
      if (b->live || b->size < want || b->size / 2 > want) continue;
      if (!best || b->resident > best->resident || (b->resident == best->resident && b->size < best->size))
        best = b;
    }
    if (best) {
      best->live = 1;
      if (best->resident) cached_bytes -= best->size;
      *dirty = best->resident;
      best->resident = 1;
      *size = best->size;
      p = best->addr;
      n_reused++;
    } else if (nblocks < MAX_BLOCKS && (size_t)(end - bump) >= want &&
               mprotect(bump, want, PROT_READ | PROT_WRITE) == 0) {
      madvise(bump, want, MADV_HUGEPAGE);
      blocks[nblocks++] = (block_t){bump, want, 1, 1, 0};
      p = bump;
      bump += want;
      *size = want;
      *dirty = 0;
      n_fresh++;
    }
  }
  pthread_mutex_unlock(&lock);
  return p;
}

static void give(void *p) {
  pthread_mutex_lock(&lock);
  block_t *b = find_live(p);
  if (b) {
    b->live = 0;
    b->freed = ++clock_;
    cached_bytes += b->size;
    trim();
  }
  pthread_mutex_unlock(&lock);
  if (!b) abort();   /* a pointer into our range that we did not hand out: the heap is corrupt */
}

static size_t usable(void *p) {
  pthread_mutex_lock(&lock);
  block_t *b = find_live(p);
  size_t n = b ? b->size : 0;
  pthread_mutex_unlock(&lock);
  return n;
}

void *malloc(size_t n) {
  size_t size;
  int dirty;
  void *p = take(n, &size, &dirty);
  return p ? p : __libc_malloc(n);
}

void free(void *p) {
  if (ours(p)) give(p);
  else __libc_free(p);
}

void *calloc(size_t count, size_t each) {
  size_t n, size;
  int dirty;
  if (__builtin_mul_overflow(count, each, &n)) {
    errno = ENOMEM;
    return NULL;
  }
  void *p = take(n, &size, &dirty);
  if (!p) return __libc_calloc(count, each);
  if (dirty) memset(p, 0, n);
  return p;
}

void *realloc(void *p, size_t n) {
  if (!ours(p)) return __libc_realloc(p, n);
  size_t old = usable(p);
  if (n <= old && n >= min_bytes) return p;
  void *q = malloc(n);
  if (!q) return NULL;
  memcpy(q, p, old < n ? old : n);
  free(p);
  return q;
}

void *reallocarray(void *p, size_t count, size_t each) {
  size_t n;
  if (__builtin_mul_overflow(count, each, &n)) {
    errno = ENOMEM;
    return NULL;
  }
  return realloc(p, n);
}

void *memalign(size_t alignment, size_t n) {
  size_t size;
  int dirty;
  void *p = alignment <= HUGE_PAGE ? take(n, &size, &dirty) : NULL;
  return p ? p : __libc_memalign(alignment, n);
}

void *aligned_alloc(size_t alignment, size_t n) { return memalign(alignment, n); }

int posix_memalign(void **out, size_t alignment, size_t n) {
  if (alignment < sizeof(void *) || (alignment & (alignment - 1))) return EINVAL;
  void *p = memalign(alignment, n);
  if (!p && n) return ENOMEM;
  *out = p;
  return 0;
}

void *valloc(size_t n) { return memalign((size_t)sysconf(_SC_PAGESIZE), n); }

void *pvalloc(size_t n) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return memalign(page, (n + page - 1) & ~(page - 1));
}

size_t malloc_usable_size(void *p) {
  if (!p) return 0;
  if (ours(p)) return usable(p);
  static size_t (*next)(void *);   /* glibc's, found on first use (dlsym's own allocations come back here) */
  if (!next) next = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
  return next ? next(p) : 0;
}

/* For zoo.bigalloc: turn the cache on or off for new blocks (an in-process A/B), and read its counters:
   fresh blocks, reuses, releases, bytes cached (free and resident), bytes handed out, the threshold;
   returns 1 where it is set up, 0 before the first allocation, -1 where it is off. */
void zoo_bigalloc_set_enabled(int on) { enabled = on; }

int zoo_bigalloc_stats(uint64_t out[6]) {
  pthread_mutex_lock(&lock);
  size_t live = 0;
  for (int i = 0; i < nblocks; i++) live += blocks[i].live ? blocks[i].size : 0;
  out[0] = n_fresh;
  out[1] = n_reused;
  out[2] = n_released;
  out[3] = cached_bytes;
  out[4] = live;
  out[5] = min_bytes;
  int s = state;
  pthread_mutex_unlock(&lock);
  return s;
}
