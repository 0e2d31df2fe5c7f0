// iscsi-load: the host-side ceiling for Scripts/bench.sh. libiscsi straight to a LUN, the
// way the server drives it (asynchronous READ16/WRITE16 with iovecs into a preallocated
// buffer, one poll loop per session), for the jobs iscsi-perf cannot run (random or write)
// and with the latency percentiles iscsi-perf does not print.
//
//   cc -O2 -o iscsi-load Benchmarks/iscsi-load.c -liscsi -lpthread
//   iscsi-load [-m DEPTH] [-b BYTES] [-t SECONDS] [-R RAMP] [-w MODE] [-c SESSIONS] URL
//
// MODE: randread (default), randwrite, read, write. -c runs SESSIONS sessions (one thread
// each, DEPTH requests in flight on each). Prints one line of key=value pairs:
//   iops= bw_mib= p50_us= p99_us= p999_us= mean_us= cpu_us_per_io= ios= errors=
// CPU is this process's user+system time over the measured window (getrusage).
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define SUB_BITS 6
#define SUB_COUNT (1 << SUB_BITS)
#define BUCKETS ((64 - SUB_BITS) * SUB_COUNT)

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int bucket(uint64_t v) {
    if (v < SUB_COUNT) return (int)v;
    int e = 63 - __builtin_clzll(v);
    return (e - SUB_BITS + 1) * SUB_COUNT + (int)((v >> (e - SUB_BITS)) & (SUB_COUNT - 1));
}

static uint64_t bucket_mid(int i) {
    if (i < SUB_COUNT) return (uint64_t)i;
    int e = i / SUB_COUNT + SUB_BITS - 1;
    uint64_t width = 1ull << (e - SUB_BITS);
    return (1ull << e) + (uint64_t)(i % SUB_COUNT) * width + width / 2;
}

struct session;
struct request {
    struct session *s;
    int index;
    uint64_t submitted;
    struct scsi_iovec iov;
};

struct session {
    struct iscsi_context *iscsi;
    int lun;
    const char *url;
    int depth, write_pct, random;
    uint32_t bs, block;
    uint64_t units, next_seq, seq_start, seq_end, rng;
    unsigned char *buffers;
    struct request *requests;
    uint64_t start, end;
    uint64_t ios, errors, sum;
    uint64_t *hist;
    int inflight;
    pthread_t thread;
    const char *failure;
};

static uint64_t rnd(struct session *s) {
    s->rng ^= s->rng >> 12; s->rng ^= s->rng << 25; s->rng ^= s->rng >> 27;
    return s->rng * 0x2545F4914F6CDD1Dull;
}

static void submit(struct session *s, struct request *r);

static void done(struct iscsi_context *iscsi, int status, void *command_data, void *private_data) {
    (void)iscsi;
    struct request *r = private_data;
    struct session *s = r->s;
    struct scsi_task *task = command_data;
    uint64_t t = now_ns();
    s->inflight--;
    if (status != SCSI_STATUS_GOOD) {
        s->errors++;
        if (!s->failure) s->failure = iscsi_get_error(s->iscsi);
    }
    if (t >= s->start && t < s->end) {
        uint64_t lat = t - r->submitted;
        s->hist[bucket(lat)]++;
        s->sum += lat;
        s->ios++;
    }
    if (task) scsi_free_scsi_task(task);
    if (t < s->end && status != SCSI_STATUS_CANCELLED) submit(s, r);
}

static void submit(struct session *s, struct request *r) {
    uint64_t unit;
    if (s->random) {
        unit = (uint64_t)(((unsigned __int128)rnd(s) * s->units) >> 64);
    } else {
        unit = s->next_seq;
        s->next_seq = unit + 1 >= s->seq_end ? s->seq_start : unit + 1;
    }
    int write = s->write_pct == 100 || (s->write_pct > 0 && (int)(((unsigned __int128)rnd(s) * 100) >> 64) < s->write_pct);
    uint64_t lba = unit * (s->bs / s->block);
    r->iov.iov_base = s->buffers + (size_t)r->index * s->bs;
    r->iov.iov_len = s->bs;
    r->submitted = now_ns();
    struct scsi_task *task = write
        ? iscsi_write16_iov_task(s->iscsi, s->lun, lba, NULL, s->bs, (int)s->block, 0, 0, 0, 0, 0, done, r, &r->iov, 1)
        : iscsi_read16_iov_task(s->iscsi, s->lun, lba, s->bs, (int)s->block, 0, 0, 0, 0, 0, done, r, &r->iov, 1);
    if (!task) {
        s->errors++;
        if (!s->failure) s->failure = iscsi_get_error(s->iscsi);
        return;
    }
    s->inflight++;
}

static void *run(void *arg) {
    struct session *s = arg;
    for (int i = 0; i < s->depth; i++) submit(s, &s->requests[i]);
    while (s->inflight > 0) {
        struct pollfd p = { .fd = iscsi_get_fd(s->iscsi), .events = (short)iscsi_which_events(s->iscsi) };
        if (poll(&p, 1, 1000) < 0 && errno != EINTR) { s->failure = "poll failed"; break; }
        if (iscsi_service(s->iscsi, p.revents) < 0) { s->failure = iscsi_get_error(s->iscsi); break; }
        if (now_ns() > s->end + 10ull * 1000000000ull) { s->failure = "requests did not complete"; break; }
    }
    return NULL;
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static void usage(void) {
    fprintf(stderr, "usage: iscsi-load [-m DEPTH] [-b BYTES] [-t SECONDS] [-R RAMP] [-w randread|randwrite|read|write] "
                    "[-c SESSIONS] [-i INITIATOR] iscsi://HOST[:PORT]/IQN/LUN\n");
    exit(2);
}

int main(int argc, char **argv) {
    int depth = 32, sessions = 1, opt;
    uint32_t bs = 4096;
    double runtime = 10, ramp = 1;
    const char *mode = "randread", *initiator = "iqn.2026-01.org.vhost-user-scsi:iscsi-load";
    while ((opt = getopt(argc, argv, "m:b:t:R:w:c:i:h")) != -1) {
        switch (opt) {
        case 'm': depth = atoi(optarg); break;
        case 'b': bs = (uint32_t)atoi(optarg); break;
        case 't': runtime = atof(optarg); break;
        case 'R': ramp = atof(optarg); break;
        case 'w': mode = optarg; break;
        case 'c': sessions = atoi(optarg); break;
        case 'i': initiator = optarg; break;
        default: usage();
        }
    }
    if (optind != argc - 1 || depth < 1 || sessions < 1 || bs < 512 || runtime <= 0) usage();
    int random = strncmp(mode, "rand", 4) == 0;
    const char *op = random ? mode + 4 : mode;
    int write_pct;
    if (strcmp(op, "read") == 0) write_pct = 0;
    else if (strcmp(op, "write") == 0) write_pct = 100;
    else usage();

    struct session *all = calloc((size_t)sessions, sizeof *all);
    for (int k = 0; k < sessions; k++) {
        struct session *s = &all[k];
        char name[256];
        snprintf(name, sizeof name, "%s:%d", initiator, k);
        s->iscsi = iscsi_create_context(name);
        struct iscsi_url *url = s->iscsi ? iscsi_parse_full_url(s->iscsi, argv[optind]) : NULL;
        if (!url) { fprintf(stderr, "iscsi-load: bad URL %s\n", argv[optind]); return 2; }
        iscsi_set_targetname(s->iscsi, url->target);
        iscsi_set_session_type(s->iscsi, ISCSI_SESSION_NORMAL);
        iscsi_set_header_digest(s->iscsi, ISCSI_HEADER_DIGEST_NONE);
        if (iscsi_full_connect_sync(s->iscsi, url->portal, url->lun) != 0) {
            fprintf(stderr, "iscsi-load: login to %s failed: %s\n", argv[optind], iscsi_get_error(s->iscsi));
            return 1;
        }
        s->lun = url->lun;
        iscsi_destroy_url(url);
        struct scsi_task *task = iscsi_readcapacity16_sync(s->iscsi, s->lun);
        struct scsi_readcapacity16 *rc = task && task->status == SCSI_STATUS_GOOD ? scsi_datain_unmarshall(task) : NULL;
        if (!rc) { fprintf(stderr, "iscsi-load: READ CAPACITY(16) failed: %s\n", iscsi_get_error(s->iscsi)); return 1; }
        s->block = rc->block_length;
        uint64_t bytes = (rc->returned_lba + 1) * rc->block_length;
        scsi_free_scsi_task(task);
        if (bs % s->block) { fprintf(stderr, "iscsi-load: -b %u is not a multiple of the block size %u\n", bs, s->block); return 2; }
        s->bs = bs;
        s->depth = depth;
        s->random = random;
        s->write_pct = write_pct;
        s->units = bytes / bs;
        uint64_t slice = s->units / (uint64_t)sessions;
        s->seq_start = slice * (uint64_t)k;
        s->seq_end = k == sessions - 1 ? s->units : s->seq_start + slice;
        s->next_seq = s->seq_start;
        s->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(k + 1) | 1;
        if (posix_memalign((void **)&s->buffers, 4096, (size_t)depth * bs)) return 1;
        memset(s->buffers, 0xA5, (size_t)depth * bs);
        s->requests = calloc((size_t)depth, sizeof *s->requests);
        for (int i = 0; i < depth; i++) { s->requests[i].s = s; s->requests[i].index = i; }
        s->hist = calloc(BUCKETS, sizeof *s->hist);
    }
    uint64_t start = now_ns() + (uint64_t)(ramp * 1e9), end = start + (uint64_t)(runtime * 1e9);
    for (int k = 0; k < sessions; k++) { all[k].start = start; all[k].end = end; }
    for (int k = 0; k < sessions; k++) pthread_create(&all[k].thread, NULL, run, &all[k]);
    // Sample CPU time at the edges of the measured window.
    while (now_ns() < start) usleep(1000);
    double cpu0 = cpu_seconds();
    while (now_ns() < end) usleep(1000);
    double cpu1 = cpu_seconds();
    uint64_t ios = 0, errors = 0, sum = 0, *hist = calloc(BUCKETS, sizeof *hist);
    const char *failure = NULL;
    for (int k = 0; k < sessions; k++) {
        pthread_join(all[k].thread, NULL);
        ios += all[k].ios; errors += all[k].errors; sum += all[k].sum;
        for (int i = 0; i < BUCKETS; i++) hist[i] += all[k].hist[i];
        if (!failure) failure = all[k].failure;
    }
    double pct[3] = { 50, 99, 99.9 }, val[3] = { 0, 0, 0 };
    for (int p = 0; p < 3; p++) {
        uint64_t rank = (uint64_t)(pct[p] / 100 * (double)ios + 0.999999), seen = 0;
        if (rank == 0) rank = 1;
        for (int i = 0; i < BUCKETS && ios; i++) {
            seen += hist[i];
            if (seen >= rank) { val[p] = (double)bucket_mid(i) / 1000; break; }
        }
    }
    printf("iops=%.1f bw_mib=%.1f p50_us=%.1f p99_us=%.1f p999_us=%.1f mean_us=%.1f cpu_us_per_io=%.3f ios=%" PRIu64
           " errors=%" PRIu64 "\n",
           (double)ios / runtime, (double)ios * bs / runtime / 1048576, val[0], val[1], val[2],
           ios ? (double)sum / (double)ios / 1000 : 0, ios ? (cpu1 - cpu0) / (double)ios * 1e6 : 0, ios, errors);
    if (failure) fprintf(stderr, "iscsi-load: %s\n", failure);
    for (int k = 0; k < sessions; k++) { iscsi_logout_sync(all[k].iscsi); iscsi_destroy_context(all[k].iscsi); }
    return failure || errors ? 1 : 0;
}
