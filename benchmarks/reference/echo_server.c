/* The C reference: a minimal epoll echo server, the floor the Python servers are measured against.
 *
 * One thread, level-triggered epoll, non-blocking sockets, TCP_NODELAY. Each read is written
 * back at once; only what the kernel does not take is kept, and only then is EPOLLOUT watched
 * (reading pauses until it is flushed, so a client that does not read costs bounded memory).
 *
 * usage: echo_server [PORT]   (0 or nothing: a free port)
 * prints "listening on tcp://127.0.0.1:PORT" to stderr when ready, like sockecho serve.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE 65536 /* bytes per read(): as sockecho's DEFAULT_READ_SIZE */
#define MAX_EVENTS 256

struct conn {
    int fd;
    char *pending; /* echo bytes the kernel did not take yet */
    size_t pending_len;
};

static char buffer[READ_SIZE];

static void close_conn(int epfd, struct conn *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

/* Send pending bytes; returns 0 when all sent, 1 when some remain, -1 on error. */
static int flush(struct conn *c) {
    while (c->pending_len) {
        ssize_t n = send(c->fd, c->pending, c->pending_len, MSG_NOSIGNAL);
        if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 1 : -1;
        memmove(c->pending, c->pending + n, c->pending_len - (size_t)n);
        c->pending_len -= (size_t)n;
    }
    return 0;
}

static int on_readable(int epfd, struct conn *c) {
    ssize_t n = recv(c->fd, buffer, sizeof buffer, 0);
    if (n == 0) return -1;
    if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    ssize_t sent = send(c->fd, buffer, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        sent = 0;
    }
    if (sent < n) {
        size_t rest = (size_t)(n - sent);
        c->pending = malloc(rest);
        if (!c->pending) return -1;
        memcpy(c->pending, buffer + sent, rest);
        c->pending_len = rest;
        struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
    return 0;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    signal(SIGPIPE, SIG_IGN);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 4096)) {
        perror("echo_server: bind/listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(listener, (struct sockaddr *)&addr, &len);
    int epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev);
    fprintf(stderr, "listening on tcp://127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stderr);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int ready = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) return 1;
        for (int i = 0; i < ready; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) { /* the listener */
                int fd;
                while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) { close(fd); continue; }
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            int status = 0;
            if (events[i].events & EPOLLOUT) {
                status = flush(c);
                if (status == 0) { /* flushed: read again */
                    free(c->pending);
                    c->pending = NULL;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &cev);
                }
            } else if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                status = on_readable(epfd, c);
            }
            if (status < 0) close_conn(epfd, c);
        }
    }
}
