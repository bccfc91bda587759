/* The C reference load client: closed loop, every echoed byte verified, as cheap as it gets.
 *
 * C connections each send SIZE bytes, wait for exactly those bytes back (memcmp against what
 * was sent; the payload rotates through offsets of a random block, so a stale echo differs),
 * and repeat until DURATION seconds have passed. One thread, epoll, non-blocking sockets,
 * TCP_NODELAY. A connection that fails or echoes wrong bytes is counted and closed.
 *
 * usage: echo_client PORT CONNECTIONS SIZE DURATION_S
 * prints one JSON object: round_trips, elapsed_s, errors, max_latency_us, mean_latency_us, and
 * cpu_s: its own CPU time (user + system) from the first request on, the yardstick for what
 * a load generator costs per round trip (sockecho bench reports the same figure).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define VARIANTS 251 /* payload offsets: a prime, so consecutive requests differ */

struct conn {
    int fd;
    size_t sent, received; /* bytes of the current request */
    unsigned variant;
    double started;
    char *echo;
    int watching_out;
};

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
           (double)(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *block;
static size_t size;
static int epfd;
static long long round_trips, errors;
static double max_latency, sum_latency;

static const char *payload(struct conn *c) { return block + c->variant; }

static void watch(struct conn *c, int out) {
    if (out == c->watching_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->watching_out = out;
}

static void fail(struct conn *c) {
    errors++;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

/* Send what remains of the current request. */
static int pump(struct conn *c) {
    while (c->sent < size) {
        ssize_t n = send(c->fd, payload(c) + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) { watch(c, 1); return 0; }
            return -1;
        }
        c->sent += (size_t)n;
    }
    watch(c, 0);
    return 0;
}

static void start_request(struct conn *c) {
    c->variant = (c->variant + 1) % VARIANTS;
    c->sent = c->received = 0;
    c->started = now();
    if (pump(c) < 0) fail(c);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: echo_client PORT CONNECTIONS SIZE DURATION_S\n");
        return 2;
    }
    int port = atoi(argv[1]);
    int count = atoi(argv[2]);
    size = (size_t)atol(argv[3]);
    double duration = atof(argv[4]);
    signal(SIGPIPE, SIG_IGN);
    block = malloc(size + VARIANTS);
    srand(12345);
    for (size_t i = 0; i < size + VARIANTS; i++) block[i] = (char)(rand() & 0xff);
    epfd = epoll_create1(0);
    struct conn *conns = calloc((size_t)count, sizeof *conns);
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < count; i++) {
        struct conn *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&addr, sizeof addr)) {
            perror("echo_client: connect");
            return 1;
        }
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK); /* connected: now async */
        c->echo = malloc(size);
        c->variant = (unsigned)i % VARIANTS;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    }
    double cpu_begin = cpu_seconds();
    double begin = now(), deadline = begin + duration;
    for (int i = 0; i < count; i++) start_request(&conns[i]);
    int active = count;
    struct epoll_event events[256];
    while (active > 0) {
        int ready = epoll_wait(epfd, events, 256, 100);
        if (ready < 0 && errno != EINTR) return 1;
        double t = now();
        for (int i = 0; i < ready; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            if (events[i].events & EPOLLOUT && pump(c) < 0) { fail(c); active--; continue; }
            if (!(events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            ssize_t n = recv(c->fd, c->echo + c->received, size - c->received, 0);
            if (n <= 0) {
                if (n < 0 && errno == EAGAIN) continue;
                fail(c); active--; continue;
            }
            if (memcmp(c->echo + c->received, payload(c) + c->received, (size_t)n) != 0) {
                fail(c); active--; continue; /* a mismatch: never counted as a round trip */
            }
            c->received += (size_t)n;
            if (c->received < size) continue;
            double latency = t - c->started;
            round_trips++;
            sum_latency += latency;
            if (latency > max_latency) max_latency = latency;
            if (t >= deadline) {
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                active--;
            } else {
                start_request(c);
                if (c->fd < 0) active--;
            }
        }
        if (t > deadline + 10.0) break; /* a server that stopped answering: give up */
    }
    double elapsed = now() - begin, cpu = cpu_seconds() - cpu_begin;
    errors += active; /* connections still waiting after the grace period */
    printf("{\"round_trips\": %lld, \"elapsed_s\": %.6f, \"errors\": %lld, "
           "\"max_latency_us\": %.1f, \"mean_latency_us\": %.1f, \"cpu_s\": %.6f}\n",
           round_trips, elapsed, errors, max_latency * 1e6,
           round_trips ? sum_latency / (double)round_trips * 1e6 : 0.0, cpu);
    return 0;
}
