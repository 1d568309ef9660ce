/*
 * ceiling: the benchmark's upper bound. A trivial UDP DNS responder that
 * answers every query with one canned record, whatever was asked: the query's
 * header and question are echoed with QR/RA set and one answer appended
 * (owner = a pointer to the question name, type A, class IN, TTL 5,
 * 10.97.0.1). Any EDNS or other records after the question are dropped.
 * Nothing is looked up, parsed beyond the question name, or allocated.
 *
 * What a real cache cannot beat on this machine: one SO_REUSEPORT socket and
 * one thread per CPU (default: the online CPUs), recvmmsg/sendmmsg in
 * batches of up to 64 datagrams, as localdns's own hit path does.
 *
 *   ceiling 127.0.0.1 25409 [threads]
 *
 * Runs until SIGTERM/SIGINT. Loopback benchmarks only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { BATCH = 64, PKT = 512, HEADER = 12 };

static struct sockaddr_in listen_addr;

/* The canned answer after the question: name pointer to offset 12, A, IN,
 * TTL 5, RDLENGTH 4, 10.97.0.1. */
static const uint8_t canned[] = {0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00,
                                 0x00, 0x05, 0x00, 0x04, 10,   97,   0,    1};

/* answer turns the query in buf (len bytes) into the reply, in place.
 * Returns the reply's length, or 0 to drop a datagram that is no query. */
static size_t answer(uint8_t *buf, size_t len) {
	if (len < HEADER + 5 || (buf[2] & 0x80) || buf[4] != 0 || buf[5] != 1)
		return 0; /* short, a response, or not exactly one question */
	size_t off = HEADER;
	while (off < len && buf[off] != 0) {
		if (buf[off] & 0xc0)
			return 0; /* compression in a question: not from dnsperf */
		off += 1 + buf[off];
	}
	off += 1 + 4; /* root label, QTYPE, QCLASS */
	if (off > len || off + sizeof canned > PKT)
		return 0;
	buf[2] = (buf[2] & 0x79) | 0x80; /* QR, keep opcode and RD, clear AA/TC */
	buf[3] = 0x80;                   /* RA, RCODE NOERROR */
	buf[6] = 0, buf[7] = 1;          /* ANCOUNT 1 */
	buf[8] = buf[9] = buf[10] = buf[11] = 0;
	memcpy(buf + off, canned, sizeof canned);
	return off + sizeof canned;
}

static void *serve(void *arg) {
	(void)arg;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
	    bind(fd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0) {
		perror("ceiling: socket/bind");
		exit(1);
	}
	static __thread uint8_t bufs[BATCH][PKT];
	struct sockaddr_in peers[BATCH];
	struct iovec iov[BATCH];
	struct mmsghdr in[BATCH], out[BATCH];
	for (;;) {
		for (int i = 0; i < BATCH; i++) {
			iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = PKT};
			in[i] = (struct mmsghdr){.msg_hdr = {.msg_name = &peers[i], .msg_namelen = sizeof peers[i],
			                                     .msg_iov = &iov[i], .msg_iovlen = 1}};
		}
		int n = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("ceiling: recvmmsg");
			exit(1);
		}
		int m = 0;
		for (int i = 0; i < n; i++) {
			size_t rlen = answer(bufs[i], in[i].msg_len);
			if (rlen == 0)
				continue;
			iov[i].iov_len = rlen;
			out[m++] = (struct mmsghdr){.msg_hdr = {.msg_name = &peers[i],
			                                        .msg_namelen = in[i].msg_hdr.msg_namelen,
			                                        .msg_iov = &iov[i], .msg_iovlen = 1}};
		}
		for (int sent = 0; sent < m;) {
			int k = sendmmsg(fd, out + sent, m - sent, 0);
			if (k < 0) {
				if (errno == EINTR)
					continue;
				break; /* a full socket buffer drops the rest, like UDP does */
			}
			sent += k;
		}
	}
	return NULL;
}

int main(int argc, char **argv) {
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: %s ipv4-address port [threads]\n", argv[0]);
		return 2;
	}
	listen_addr.sin_family = AF_INET;
	listen_addr.sin_port = htons((uint16_t)atoi(argv[2]));
	if (inet_pton(AF_INET, argv[1], &listen_addr.sin_addr) != 1) {
		fprintf(stderr, "ceiling: %s is not an IPv4 address\n", argv[1]);
		return 2;
	}
	long threads = argc == 4 ? atol(argv[3]) : sysconf(_SC_NPROCESSORS_ONLN);
	if (threads < 1 || threads > 256) {
		fprintf(stderr, "ceiling: threads must be 1..256\n");
		return 2;
	}
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	pthread_sigmask(SIG_BLOCK, &stop, NULL); /* the threads inherit the mask */
	for (long i = 0; i < threads; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, serve, NULL) != 0) {
			fprintf(stderr, "ceiling: pthread_create failed\n");
			return 1;
		}
	}
	fprintf(stderr, "ceiling: answering on %s:%s with %ld threads\n", argv[1], argv[2], threads);
	int sig;
	sigwait(&stop, &sig);
	return 0;
}
