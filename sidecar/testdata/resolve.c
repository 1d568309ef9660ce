/*
 * resolve: getaddrinfo(NAME) for each argument, through the C library's own
 * stub resolver (built statically against musl, it resolves the way an
 * Alpine pod does: every nameserver of resolv.conf asked at once, A and AAAA
 * in parallel). Prints "NAME ADDRESS" per address; exits 1 if a lookup fails.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	int status = 0;
	for (int i = 1; i < argc; i++) {
		struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
		struct addrinfo *res;
		int rc = getaddrinfo(argv[i], NULL, &hints, &res);
		if (rc != 0) {
			fprintf(stderr, "resolve %s: %s\n", argv[i], gai_strerror(rc));
			status = 1;
			continue;
		}
		for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
			char buf[INET6_ADDRSTRLEN];
			const void *addr = ai->ai_family == AF_INET
				? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
				: (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
			if (inet_ntop(ai->ai_family, addr, buf, sizeof(buf)))
				printf("%s %s\n", argv[i], buf);
		}
		freeaddrinfo(res);
	}
	return status;
}
