/*
 * gaiload: the seeds' DNS load test with the C library's own resolver.
 * N threads call getaddrinfo(host) in a loop for D seconds; built against
 * glibc and against musl, it shows how each libc's stub resolver behaves
 * (parallel A/AAAA from one socket, timeouts, retries) through the same
 * network path as real workloads.
 *
 *   gaiload -h HOST [-c THREADS] [-d SECONDS] [-l SLOW_MS] [-m MAX_LOOKUPS] [-r RATE]
 *
 * RATE caps the lookups started per second over all threads (none by
 * default), as the Go client's -rate does: a steady load rather than one
 * that keeps the machine's cores busy.
 *
 * A "%d" in HOST (once, and no other '%') stands for the lookup's number in
 * the run, so every lookup asks a name no cache has seen.
 *
 * Each thread reads its own run-queue wait (/proc/thread-self/schedstat)
 * around every lookup: a lookup of 1 s or more during which the thread
 * itself waited for a CPU long enough that less than 1 s is left is
 * counted apart ("self_starved"). On a 2-core node shared with the whole
 * cluster, 50 threads can be kept off the CPU for a second, and would
 * otherwise count that as DNS time. So is a failed lookup during which the
 * thread waited 1 s or more ("starved_errors"): glibc gives up on a server
 * whose deadline passed while the thread waited, without reading a reply
 * that may be there.
 *
 * Prints one JSON object with the keys of e2e/dnsload's Result, so the
 * harness reads both clients the same way (errors counted by
 * gai_strerror's text). Exit status 0 unless the arguments are bad or the
 * run could not start.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct config {
	const char *host;
	/* host split at its "%d": prefix, then the lookup's number, then suffix */
	char *prefix;
	const char *suffix;
	long threads;
	long seconds;
	long slow_ms;
	long max_lookups;
	long rate; /* lookups started per second over all threads; 0: no cap */
};

/* error_kind counts one getaddrinfo error code. */
struct error_kind {
	int code;
	long count;
};

/* More distinct codes than getaddrinfo has. */
#define MAX_ERROR_KINDS 32

/* The slow lookups whose start times are kept (e2e/dnsload's MaxSlowAt). */
#define MAX_SLOW_AT 100

struct worker {
	const struct config *cfg;
	int64_t *latencies; /* ns, one per lookup */
	long count;
	long cap;
	long errors;
	int first_error;    /* getaddrinfo's code, 0 if none */
	int64_t first_end;  /* ns from the run's start to the end of its first lookup */
	int64_t slow_at[MAX_SLOW_AT]; /* ns from the run's start to each slow lookup's start */
	long slow_at_count;
	long self_starved; /* lookups >= 1 s that are under 1 s less the thread's own run-queue wait */
	long starved_errors; /* failed lookups during which the thread waited >= 1 s for a CPU */
	struct error_kind kinds[MAX_ERROR_KINDS];
};

/* count_error adds n errors of code to kinds; false when kinds is full. */
static int count_error(struct error_kind *kinds, int code, long n)
{
	for (int i = 0; i < MAX_ERROR_KINDS; i++) {
		if (kinds[i].count == 0)
			kinds[i].code = code;
		if (kinds[i].code == code) {
			kinds[i].count += n;
			return 1;
		}
	}
	return 0;
}

static struct config cfg = {.threads = 50, .seconds = 15, .slow_ms = 1000, .max_lookups = 10000000};
static atomic_long started;
static int64_t begin_ns, deadline_ns;

/* The rate cap: each lookup takes the next start slot, 1/rate after the
 * previous one (never one in the past: a stalled run does not burst). */
static pthread_mutex_t pace_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t next_slot_ns;

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* pace waits for the next start slot, if the run has a rate. */
static void pace(const struct config *c)
{
	if (!c->rate)
		return;
	pthread_mutex_lock(&pace_mu);
	int64_t now = now_ns();
	if (next_slot_ns < now)
		next_slot_ns = now;
	int64_t at = next_slot_ns;
	next_slot_ns += 1000000000 / c->rate;
	pthread_mutex_unlock(&pace_mu);
	struct timespec ts = {.tv_sec = at / 1000000000, .tv_nsec = at % 1000000000};
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* run_queue_wait is how long this thread has waited for a CPU while
 * runnable (ns, schedstat's second field; the kernel books a wait as it
 * ends), or -1 when it cannot be read. */
static int64_t run_queue_wait(int fd)
{
	char buf[128];
	if (fd < 0)
		return -1;
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	long long on_cpu, waited;
	if (sscanf(buf, "%lld %lld", &on_cpu, &waited) != 2)
		return -1;
	return waited;
}

static void *run_worker(void *arg)
{
	struct worker *w = arg;
	int sched_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
	const struct config *c = w->cfg;
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	char name[1024];
	long n;
	for (;;) {
		pace(c);
		if (now_ns() >= deadline_ns || (n = atomic_fetch_add(&started, 1)) >= c->max_lookups)
			break;
		const char *host = c->host;
		if (c->prefix) {
			snprintf(name, sizeof(name), "%s%ld%s", c->prefix, n + 1, c->suffix);
			host = name;
		}
		struct addrinfo *res = NULL;
		int64_t waited0 = run_queue_wait(sched_fd);
		int64_t t0 = now_ns();
		int rc = getaddrinfo(host, NULL, &hints, &res);
		int64_t end = now_ns(), took = end - t0;
		int64_t waited = -1; /* this lookup's run-queue wait, when it matters */
		if ((took >= 1000000000LL || rc != 0) && waited0 >= 0) {
			int64_t waited1 = run_queue_wait(sched_fd);
			if (waited1 >= waited0)
				waited = waited1 - waited0;
		}
		if (took >= 1000000000LL && waited >= 0 && took - waited < 1000000000LL)
			w->self_starved++;
		if (w->count == 0)
			w->first_end = end - begin_ns;
		if (took >= (int64_t)c->slow_ms * 1000000 && w->slow_at_count < MAX_SLOW_AT)
			w->slow_at[w->slow_at_count++] = t0 - begin_ns;
		if (rc == 0)
			freeaddrinfo(res);
		else {
			w->errors++;
			if (waited >= 1000000000LL)
				w->starved_errors++;
			if (!w->first_error)
				w->first_error = rc;
			if (!count_error(w->kinds, rc, 1)) {
				fprintf(stderr, "gaiload: more than %d kinds of error\n", MAX_ERROR_KINDS);
				exit(1);
			}
		}
		if (w->count == w->cap) {
			long cap = w->cap ? w->cap * 2 : 4096;
			int64_t *grown = realloc(w->latencies, cap * sizeof(*grown));
			if (!grown) {
				fprintf(stderr, "gaiload: out of memory\n");
				exit(1);
			}
			w->latencies = grown;
			w->cap = cap;
		}
		w->latencies[w->count++] = took;
	}
	if (sched_fd >= 0)
		close(sched_fd);
	return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static long parse_positive(const char *s, char flag)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < 1) {
		fprintf(stderr, "gaiload: -%c %s: want a positive integer\n", flag, s);
		exit(2);
	}
	return v;
}

/* print_json_string writes s as a JSON string (the error texts are ASCII). */
static void print_json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			putchar('\\');
		if ((unsigned char)*s >= 0x20)
			putchar(*s);
	}
	putchar('"');
}

int main(int argc, char **argv)
{
	int opt;
	while ((opt = getopt(argc, argv, "h:c:d:l:m:r:")) != -1) {
		switch (opt) {
		case 'h': cfg.host = optarg; break;
		case 'c': cfg.threads = parse_positive(optarg, 'c'); break;
		case 'd': cfg.seconds = parse_positive(optarg, 'd'); break;
		case 'l': cfg.slow_ms = parse_positive(optarg, 'l'); break;
		case 'm': cfg.max_lookups = parse_positive(optarg, 'm'); break;
		case 'r': cfg.rate = parse_positive(optarg, 'r'); break;
		default:
			fprintf(stderr, "usage: gaiload -h HOST [-c THREADS] [-d SECONDS] [-l SLOW_MS] [-m MAX_LOOKUPS] [-r RATE]\n");
			return 2;
		}
	}
	if (!cfg.host || optind != argc) {
		fprintf(stderr, "usage: gaiload -h HOST [-c THREADS] [-d SECONDS] [-l SLOW_MS] [-m MAX_LOOKUPS] [-r RATE]\n");
		return 2;
	}
	const char *mark = strstr(cfg.host, "%d");
	const char *percent = strchr(cfg.host, '%');
	if (percent && (percent != mark || strchr(mark + 1, '%') || strlen(cfg.host) > 900)) {
		fprintf(stderr, "gaiload: -h %s: the only %% it may hold is one %%d (and at most 900 bytes)\n", cfg.host);
		return 2;
	}
	if (mark) {
		cfg.prefix = strndup(cfg.host, mark - cfg.host);
		cfg.suffix = mark + 2;
		if (!cfg.prefix) {
			fprintf(stderr, "gaiload: out of memory\n");
			return 1;
		}
	}

	struct worker *workers = calloc(cfg.threads, sizeof(*workers));
	pthread_t *tids = calloc(cfg.threads, sizeof(*tids));
	if (!workers || !tids) {
		fprintf(stderr, "gaiload: out of memory\n");
		return 1;
	}
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	int64_t begin = now_ns();
	begin_ns = begin;
	deadline_ns = begin + (int64_t)cfg.seconds * 1000000000;
	long running = 0;
	for (long i = 0; i < cfg.threads; i++) {
		workers[i].cfg = &cfg;
		int rc = pthread_create(&tids[i], NULL, run_worker, &workers[i]);
		if (rc) {
			fprintf(stderr, "gaiload: start thread %ld: %s\n", i, strerror(rc));
			deadline_ns = 0; /* stop the ones already running */
			break;
		}
		running++;
	}
	for (long i = 0; i < running; i++)
		pthread_join(tids[i], NULL);
	int64_t elapsed = now_ns() - begin;
	if (running < cfg.threads)
		return 1;

	long total = 0, errors = 0, self_starved = 0, starved_errors = 0;
	int64_t first = 0;
	int first_error = 0;
	struct error_kind kinds[MAX_ERROR_KINDS] = {0};
	for (long i = 0; i < cfg.threads; i++) {
		total += workers[i].count;
		errors += workers[i].errors;
		self_starved += workers[i].self_starved;
		starved_errors += workers[i].starved_errors;
		if (workers[i].first_end > first)
			first = workers[i].first_end;
		if (!first_error)
			first_error = workers[i].first_error;
		for (int k = 0; k < MAX_ERROR_KINDS && workers[i].kinds[k].count; k++) {
			if (!count_error(kinds, workers[i].kinds[k].code, workers[i].kinds[k].count)) {
				fprintf(stderr, "gaiload: more than %d kinds of error\n", MAX_ERROR_KINDS);
				return 1;
			}
		}
	}
	int64_t *all = malloc((total ? total : 1) * sizeof(*all));
	if (!all) {
		fprintf(stderr, "gaiload: out of memory\n");
		return 1;
	}
	long n = 0;
	for (long i = 0; i < cfg.threads; i++) {
		memcpy(all + n, workers[i].latencies, workers[i].count * sizeof(*all));
		n += workers[i].count;
	}
	qsort(all, total, sizeof(*all), cmp_i64);

	int64_t slow_ns = (int64_t)cfg.slow_ms * 1000000, sum = 0;
	long slow = 0, over1 = 0, over5 = 0;
	for (long i = 0; i < total; i++) {
		sum += all[i];
		slow += all[i] >= slow_ns;
		over1 += all[i] >= 1000000000LL;
		over5 += all[i] >= 5000000000LL;
	}
	/* Nearest-rank p99, as e2e/dnsload computes it. */
	long rank = (total * 99 + 99) / 100;
	printf("{\"host\":");
	print_json_string(cfg.host);
	printf(",\"concurrency\":%ld,\"elapsed_ns\":%lld,\"lookups\":%ld,\"errors\":%ld", cfg.threads,
	       (long long)elapsed, total, errors);
	if (first_error) {
		printf(",\"first_error\":");
		print_json_string(gai_strerror(first_error));
		printf(",\"error_kinds\":{");
		for (int k = 0; k < MAX_ERROR_KINDS && kinds[k].count; k++) {
			if (k)
				putchar(',');
			print_json_string(gai_strerror(kinds[k].code));
			printf(":%ld", kinds[k].count);
		}
		putchar('}');
	}
	printf(",\"min_ns\":%lld,\"mean_ns\":%lld,\"p99_ns\":%lld,\"max_ns\":%lld",
	       (long long)(total ? all[0] : 0), (long long)(total ? sum / total : 0),
	       (long long)(total ? all[rank - 1] : 0), (long long)(total ? all[total - 1] : 0));
	printf(",\"slow_threshold_ns\":%lld,\"slow\":%ld,\"over_1s\":%ld,\"over_5s\":%ld,\"self_starved\":%ld,\"starved_errors\":%ld,\"first_ns\":%lld",
	       (long long)slow_ns, slow, over1, over5, self_starved, starved_errors, (long long)first);
	printf(",\"start_unix_ns\":%lld", (long long)wall.tv_sec * 1000000000 + wall.tv_nsec);
	/* The earliest MAX_SLOW_AT slow lookups' start times, as e2e/dnsload keeps them. */
	int64_t slow_at[MAX_SLOW_AT * 2];
	long slow_at_n = 0;
	for (long i = 0; i < cfg.threads; i++) {
		for (long k = 0; k < workers[i].slow_at_count; k++) {
			slow_at[slow_at_n++] = workers[i].slow_at[k];
			if (slow_at_n == MAX_SLOW_AT * 2) {
				qsort(slow_at, slow_at_n, sizeof(*slow_at), cmp_i64);
				slow_at_n = MAX_SLOW_AT;
			}
		}
	}
	qsort(slow_at, slow_at_n, sizeof(*slow_at), cmp_i64);
	if (slow_at_n > MAX_SLOW_AT)
		slow_at_n = MAX_SLOW_AT;
	if (slow_at_n) {
		printf(",\"slow_at_ns\":[");
		for (long i = 0; i < slow_at_n; i++)
			printf("%s%lld", i ? "," : "", (long long)slow_at[i]);
		putchar(']');
	}
	printf("}\n");
	return 0;
}
