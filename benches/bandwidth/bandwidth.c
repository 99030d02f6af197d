/*
 * Streaming read bandwidth of this machine with N threads, in GB/s (1 GB = 1e9 bytes).
 *
 * Each thread allocates its own slice of a buffer much larger than the last-level cache, writes
 * it once (so the pages are resident, on the thread's NUMA node), then all threads start together
 * at a barrier and sum their slice as 64-bit words; the time of a pass is from the barrier to the
 * last thread's end. This is the access pattern of decoding with a model whose weights do not fit
 * in cache: every weight byte read once per token. The best pass is the machine's limit, the
 * median what a run typically gets.
 *
 * Usage: bandwidth [--threads N] [--mib M] [--passes P]
 *   --threads N  reading threads (default: online CPUs)
 *   --mib M      total buffer in MiB, split across the threads (default 1024)
 *   --passes P   timed passes (default 10; one untimed warm-up pass first)
 * Prints one JSON object on stdout: threads, bytes, passes, best_gbps, median_gbps, worst_gbps,
 * checksum (keeps the reads from being optimised away). Exit 1 on bad arguments or no memory.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    uint64_t *data;
    size_t words;
    uint64_t sum;
} slice_t;

static pthread_barrier_t start_barrier, end_barrier;
static int passes_total;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t sum_words(const uint64_t *restrict p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a += p[i];
        b += p[i + 1];
        c += p[i + 2];
        d += p[i + 3];
    }
    for (; i < n; i++) a += p[i];
    return a + b + c + d;
}

static void *worker(void *arg) {
    slice_t *s = (slice_t *)arg;
    size_t bytes = s->words * sizeof(uint64_t);
    if (posix_memalign((void **)&s->data, 4096, bytes) != 0) {
        s->data = NULL;
    } else {
        for (size_t i = 0; i < s->words; i++) s->data[i] = i * 2654435761u;
    }
    for (int p = 0; p < passes_total; p++) {
        pthread_barrier_wait(&start_barrier);
        if (s->data) s->sum += sum_words(s->data, s->words);
        pthread_barrier_wait(&end_barrier);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static long parse_arg(const char *name, const char *v) {
    char *end = NULL;
    long x = strtol(v, &end, 10);
    if (!end || *end != '\0' || x <= 0) {
        fprintf(stderr, "bandwidth: %s needs a positive integer, got '%s'\n", name, v);
        exit(1);
    }
    return x;
}

int main(int argc, char **argv) {
    long threads = sysconf(_SC_NPROCESSORS_ONLN);
    long mib = 1024, passes = 10;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--threads") == 0) {
            threads = parse_arg(argv[i], argv[i + 1]);
            i++;
        } else if (i + 1 < argc && strcmp(argv[i], "--mib") == 0) {
            mib = parse_arg(argv[i], argv[i + 1]);
            i++;
        } else if (i + 1 < argc && strcmp(argv[i], "--passes") == 0) {
            passes = parse_arg(argv[i], argv[i + 1]);
            i++;
        } else {
            fprintf(stderr, "usage: bandwidth [--threads N] [--mib M] [--passes P]\n");
            return 1;
        }
    }
    if (threads < 1) threads = 1;
    size_t total_words = (size_t)mib * 1024 * 1024 / sizeof(uint64_t);
    size_t per = total_words / (size_t)threads;
    passes_total = (int)passes + 1; /* one warm-up */

    slice_t *slices = calloc((size_t)threads, sizeof(slice_t));
    pthread_t *tids = calloc((size_t)threads, sizeof(pthread_t));
    double *secs = calloc((size_t)passes, sizeof(double));
    if (!slices || !tids || !secs) {
        fprintf(stderr, "bandwidth: out of memory\n");
        return 1;
    }
    pthread_barrier_init(&start_barrier, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&end_barrier, NULL, (unsigned)threads + 1);
    for (long t = 0; t < threads; t++) {
        slices[t].words = per;
        if (pthread_create(&tids[t], NULL, worker, &slices[t]) != 0) {
            fprintf(stderr, "bandwidth: cannot start thread %ld\n", t);
            return 1;
        }
    }
    for (int p = 0; p < passes_total; p++) {
        pthread_barrier_wait(&start_barrier);
        double t0 = now_s();
        pthread_barrier_wait(&end_barrier);
        double dt = now_s() - t0;
        if (p > 0) secs[p - 1] = dt;
    }
    uint64_t checksum = 0;
    int ok = 1;
    for (long t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        if (!slices[t].data) ok = 0;
        checksum += slices[t].sum;
        free(slices[t].data);
    }
    if (!ok) {
        fprintf(stderr, "bandwidth: could not allocate %ld MiB\n", mib);
        return 1;
    }
    qsort(secs, (size_t)passes, sizeof(double), cmp_double);
    double bytes = (double)per * (double)threads * sizeof(uint64_t);
    printf("{\"threads\": %ld, \"bytes\": %.0f, \"passes\": %ld, \"best_gbps\": %.3f, "
           "\"median_gbps\": %.3f, \"worst_gbps\": %.3f, \"checksum\": %llu}\n",
           threads, bytes, passes, bytes / secs[0] / 1e9, bytes / secs[passes / 2] / 1e9,
           bytes / secs[passes - 1] / 1e9, (unsigned long long)checksum);
    return 0;
}
