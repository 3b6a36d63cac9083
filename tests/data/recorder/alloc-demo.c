/* A small program of known allocations for tests/trace_recorder.rs: a fixed single-threaded
 * sequence over every interposed function, then 4 threads x 1000 malloc/realloc/free of
 * 777 / 778 bytes. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < 1000; i++) {
        char *p = malloc(777);
        if (!p)
            abort();
        memset(p, i, 777);
        p = realloc(p, 778);
        if (!p)
            abort();
        free(p);
    }
    return NULL;
}

int main(void) {
    char *a = malloc(10);
    char *b = calloc(3, 100);
    char *c = realloc(a, 5000);
    free(b);
    void *d = NULL;
    if (posix_memalign(&d, 64, 200) != 0)
        return 1;
    void *e = aligned_alloc(64, 128);
    void *f = memalign(32, 100);
    char *g = realloc(NULL, 40);
    free(d);
    free(e);
    free(f);
    free(c);
    free(g);
    free(NULL);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        if (pthread_create(&t[i], NULL, worker, NULL) != 0)
            return 1;
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    return 0;
}
