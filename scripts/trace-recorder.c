/*
 * memvisor allocation-trace recorder: an LD_PRELOAD interposer of malloc, calloc, realloc,
 * free, posix_memalign, aligned_alloc, memalign, valloc and pvalloc that writes the trace
 * format of tests/data/traces/README.md ("a ID SIZE", "f ID", "r ID NEWSIZE").
 *
 * Build and use through scripts/trace-recorder.sh. Environment:
 *   MEMVISOR_TRACE_OUT         output file (required; no trace without it)
 *   MEMVISOR_TRACE_MAX_EVENTS  event cap (default 200000); later events are not recorded
 *   MEMVISOR_TRACE_MAX_BYTES   output byte cap (default 8 MiB - 64 KiB)
 *   MEMVISOR_TRACE_SKIP        events to skip at the start (default 0) before recording
 *   MEMVISOR_TRACE_EXE         record only in a process whose executable has this base name
 *                              (e.g. behind a wrapper script); default: the first process
 *
 * Pointers are renumbered into dense ids (0, 1, 2, ... in order of first allocation) with an
 * open-addressing hash table from pointer to id, allocated with mmap (never with malloc).
 * Frees of pointers the recorder never saw (allocated before it started, during the skipped
 * prefix, or after the cap) are not recorded, so the trace stays valid: every "f" and "r"
 * names a live id. A realloc of an unknown pointer is recorded as "a" of a new id.
 *
 * The real functions come from dlsym(RTLD_NEXT, ...). dlsym itself may call calloc/malloc
 * (glibc's dlerror buffer), so while resolving, allocations are served from a small static
 * bump arena, and frees of arena pointers are ignored. One process-wide mutex orders events
 * of all threads; a thread-local flag keeps the recorder's own work (stdio is not used:
 * writes go through a private buffer and write(2)) from recursing. Children of a fork stop
 * recording (pthread_atfork; the output belongs to the parent), and exec'd programs that inherit
 * LD_PRELOAD do not record either (MEMVISOR_TRACE_OUT is cleared in the environment once
 * read).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*aligned_alloc_fn)(size_t, size_t);
typedef void *(*memalign_fn)(size_t, size_t);
typedef void *(*valloc_fn)(size_t);

static malloc_fn real_malloc;
static calloc_fn real_calloc;
static realloc_fn real_realloc;
static free_fn real_free;
static posix_memalign_fn real_posix_memalign;
static aligned_alloc_fn real_aligned_alloc;
static memalign_fn real_memalign;
static valloc_fn real_valloc;
static valloc_fn real_pvalloc;

/* Bump arena for allocations made while dlsym runs. */
static char arena[64 * 1024] __attribute__((aligned(64)));
static size_t arena_used;
static int resolving;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* initial-exec: a global-dynamic TLS access may call malloc through __tls_get_addr. */
static __thread int in_recorder __attribute__((tls_model("initial-exec")));

static int out_fd = -1;
static int active;        /* recording (output open, cap not reached, right process) */
static uint64_t events;   /* events written */
static uint64_t skipped;  /* events skipped at the start */
static uint64_t max_events = 200000;
static uint64_t max_bytes = 8 * 1024 * 1024 - 64 * 1024;
static uint64_t skip = 0;
static uint64_t bytes_out;
static uint64_t next_id;

static char buf[1 << 16];
static size_t buf_len;

/* Pointer -> id table (open addressing, linear probing, tombstones). */
struct slot {
    uintptr_t key; /* 0 empty, 1 tombstone */
    uint64_t id;
    uint64_t size;
};
static struct slot *table;
static size_t table_cap; /* power of two */
static size_t table_used; /* live + tombstones */

static int in_arena(const void *p) {
    return (const char *)p >= arena && (const char *)p < arena + sizeof arena;
}

static void *arena_alloc(size_t size, size_t align) {
    if (align < 16)
        align = 16;
    size_t start = (arena_used + align - 1) & ~(align - 1);
    if (start + size > sizeof arena || start + size < start)
        return NULL;
    arena_used = start + size;
    return arena + start;
}

static void resolve(void) {
    if (real_malloc || resolving)
        return;
    resolving = 1;
    real_malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
    real_calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
    real_realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
    real_free = (free_fn)dlsym(RTLD_NEXT, "free");
    real_posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (aligned_alloc_fn)dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (memalign_fn)dlsym(RTLD_NEXT, "memalign");
    real_valloc = (valloc_fn)dlsym(RTLD_NEXT, "valloc");
    real_pvalloc = (valloc_fn)dlsym(RTLD_NEXT, "pvalloc");
    resolving = 0;
}

static void flush_buf(void) {
    size_t off = 0;
    while (off < buf_len) {
        ssize_t n = write(out_fd, buf + off, buf_len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            active = 0;
            break;
        }
        off += (size_t)n;
    }
    buf_len = 0;
}

static void put_str(const char *s) {
    size_t n = strlen(s);
    if (buf_len + n > sizeof buf)
        flush_buf();
    memcpy(buf + buf_len, s, n);
    buf_len += n;
}

static char *fmt_u64(char *end, uint64_t v) {
    *--end = 0;
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}

/* One event line; returns 0 when the cap stops recording. Called with the lock held. */
static int emit(char kind, uint64_t id, int has_size, uint64_t size) {
    char line[64], num[24];
    size_t n = 0;
    line[n++] = kind;
    line[n++] = ' ';
    char *s = fmt_u64(num + sizeof num, id);
    size_t l = strlen(s);
    memcpy(line + n, s, l);
    n += l;
    if (has_size) {
        line[n++] = ' ';
        s = fmt_u64(num + sizeof num, size);
        l = strlen(s);
        memcpy(line + n, s, l);
        n += l;
    }
    line[n++] = '\n';
    line[n] = 0;
    if (events >= max_events || bytes_out + n > max_bytes) {
        active = 0;
        flush_buf();
        return 0;
    }
    put_str(line);
    bytes_out += n;
    events++;
    return 1;
}

static size_t hash(uintptr_t p) {
    uint64_t x = (uint64_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static int table_grow(void) {
    size_t cap = table_cap ? table_cap * 2 : (1 << 16);
    struct slot *t = mmap(NULL, cap * sizeof *t, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t == MAP_FAILED)
        return 0;
    for (size_t i = 0; i < table_cap; i++) {
        if (table[i].key > 1) {
            size_t j = hash(table[i].key) & (cap - 1);
            while (t[j].key)
                j = (j + 1) & (cap - 1);
            t[j] = table[i];
        }
    }
    size_t live = 0;
    for (size_t i = 0; i < cap; i++)
        live += t[i].key > 1;
    if (table)
        munmap(table, table_cap * sizeof *table);
    table = t;
    table_cap = cap;
    table_used = live;
    return 1;
}

static struct slot *table_find(uintptr_t p) {
    if (!table_cap)
        return NULL;
    size_t j = hash(p) & (table_cap - 1);
    while (table[j].key) {
        if (table[j].key == p)
            return &table[j];
        j = (j + 1) & (table_cap - 1);
    }
    return NULL;
}

static int table_insert(uintptr_t p, uint64_t id, uint64_t size) {
    if ((table_used + 1) * 2 > table_cap && !table_grow())
        return 0;
    size_t j = hash(p) & (table_cap - 1);
    while (table[j].key > 1 && table[j].key != p)
        j = (j + 1) & (table_cap - 1);
    if (!table[j].key)
        table_used++;
    table[j].key = p;
    table[j].id = id;
    table[j].size = size;
    return 1;
}

/* A forked child stops recording: the trace is the parent's. */
static void atfork_child(void) {
    pthread_mutex_init(&lock, NULL);
    active = 0;
    out_fd = -1;
    in_recorder = 0;
}

static void setup(void) {
    static int done;
    if (done)
        return;
    done = 1;
    const char *out = getenv("MEMVISOR_TRACE_OUT");
    if (!out || !*out)
        return;
    const char *exe = getenv("MEMVISOR_TRACE_EXE");
    if (exe && *exe) {
        /* Only a process running an executable of that base name records (a wrapper
         * script's shell or a launcher that execs the real program does not). */
        char path[4096];
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
        if (n <= 0)
            return;
        path[n] = 0;
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        if (strcmp(base, exe) != 0) {
            return;
        }
    }
    const char *v;
    if ((v = getenv("MEMVISOR_TRACE_MAX_EVENTS")) && *v)
        max_events = strtoull(v, NULL, 10);
    if ((v = getenv("MEMVISOR_TRACE_MAX_BYTES")) && *v)
        max_bytes = strtoull(v, NULL, 10);
    if ((v = getenv("MEMVISOR_TRACE_SKIP")) && *v)
        skip = strtoull(v, NULL, 10);
    out_fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0)
        return;
    /* Programs this one execs must not overwrite the trace. */
    unsetenv("MEMVISOR_TRACE_OUT");
    pthread_atfork(NULL, NULL, atfork_child);
    active = 1;
    put_str("# memvisor allocation trace v1: recorded by scripts/trace-recorder.c\n");
}

/* Enter: returns 1 when this call is to be recorded (lock held), 0 otherwise. */
static int enter(void) {
    if (in_recorder)
        return 0;
    in_recorder = 1;
    pthread_mutex_lock(&lock);
    setup();
    if (!active) {
        pthread_mutex_unlock(&lock);
        in_recorder = 0;
        return 0;
    }
    return 1;
}

static void leave(void) {
    pthread_mutex_unlock(&lock);
    in_recorder = 0;
}

/* Counts the skipped prefix; returns 1 when this event is to be written. */
static int count_event(void) {
    if (skipped < skip) {
        skipped++;
        return 0;
    }
    return 1;
}

static void record_alloc(void *p, size_t size) {
    if (!p || !enter())
        return;
    if (count_event()) {
        uint64_t id = next_id;
        if (table_insert((uintptr_t)p, id, size) && emit('a', id, 1, size))
            next_id++;
    }
    leave();
}

/* Before the real free: the pointer's id is forgotten, then the event is written. */
static void record_free(void *p) {
    if (!p || !enter())
        return;
    struct slot *s = table_find((uintptr_t)p);
    if (s) {
        uint64_t id = s->id;
        s->key = 1;
        if (count_event())
            emit('f', id, 0, 0);
    }
    leave();
}

/* Record a realloc; called with the lock held around the real call, so that no other thread
 * can be handed the old address (and record it) between the call and this record. */
static void record_realloc(void *old, void *p, size_t size) {
    struct slot *s = old ? table_find((uintptr_t)old) : NULL;
    if (count_event()) {
        if (s) {
            uint64_t id = s->id;
            s->key = 1;
            if (p && table_insert((uintptr_t)p, id, size))
                emit('r', id, 1, size);
            else if (!p && size == 0)
                emit('f', id, 0, 0); /* realloc(p, 0) freed p (glibc) */
        } else if (p) {
            uint64_t id = next_id;
            if (table_insert((uintptr_t)p, id, size) && emit('a', id, 1, size))
                next_id++;
        }
    } else if (s) {
        s->key = 1; /* a skipped event: forget the old id so later frees are not written */
    }
}

void *malloc(size_t size) {
    resolve();
    if (!real_malloc)
        return arena_alloc(size, 16);
    void *p = real_malloc(size);
    record_alloc(p, size);
    return p;
}

void *calloc(size_t n, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    resolve();
    if (!real_calloc)
        return arena_alloc(total, 16); /* static arena: already zero */
    void *p = real_calloc(n, size);
    record_alloc(p, total);
    return p;
}

void free(void *p) {
    if (!p || in_arena(p))
        return;
    resolve();
    record_free(p);
    real_free(p);
}

void *realloc(void *old, size_t size) {
    resolve();
    if (old && in_arena(old)) {
        /* Move the block out of the arena; its old size is unknown, so copy what fits. */
        void *p = malloc(size);
        if (p) {
            size_t room = (size_t)(arena + sizeof arena - (char *)old);
            memcpy(p, old, size < room ? size : room);
        }
        return p;
    }
    if (!real_realloc)
        return arena_alloc(size, 16);
    if (!enter())
        return real_realloc(old, size);
    void *p = real_realloc(old, size);
    if (!(old && !p && size != 0)) /* on failure the old block is unchanged */
        record_realloc(old, p, size);
    leave();
    return p;
}

int posix_memalign(void **out, size_t align, size_t size) {
    resolve();
    if (!real_posix_memalign) {
        void *p = arena_alloc(size, align);
        if (!p)
            return ENOMEM;
        *out = p;
        return 0;
    }
    int r = real_posix_memalign(out, align, size);
    if (r == 0)
        record_alloc(*out, size);
    return r;
}

void *aligned_alloc(size_t align, size_t size) {
    resolve();
    if (!real_aligned_alloc)
        return arena_alloc(size, align);
    void *p = real_aligned_alloc(align, size);
    record_alloc(p, size);
    return p;
}

void *memalign(size_t align, size_t size) {
    resolve();
    if (!real_memalign)
        return arena_alloc(size, align);
    void *p = real_memalign(align, size);
    record_alloc(p, size);
    return p;
}

void *valloc(size_t size) {
    resolve();
    if (!real_valloc)
        return arena_alloc(size, 4096);
    void *p = real_valloc(size);
    record_alloc(p, size);
    return p;
}

void *pvalloc(size_t size) {
    resolve();
    if (!real_pvalloc)
        return arena_alloc(size, 4096);
    void *p = real_pvalloc(size);
    record_alloc(p, size);
    return p;
}

__attribute__((destructor)) static void finish(void) {
    if (in_recorder)
        return;
    in_recorder = 1;
    pthread_mutex_lock(&lock);
    if (out_fd >= 0) {
        flush_buf();
        active = 0;
    }
    pthread_mutex_unlock(&lock);
    in_recorder = 0;
}

/* Resolve the real functions early, while the process is still single-threaded. */
__attribute__((constructor)) static void start(void) {
    resolve();
}
