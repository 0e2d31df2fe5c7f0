#define _GNU_SOURCE
#include "CEventPoller.h"
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

_Static_assert(CEventPoller_ADD == EPOLL_CTL_ADD && CEventPoller_DEL == EPOLL_CTL_DEL
               && CEventPoller_MOD == EPOLL_CTL_MOD, "epoll_ctl operations");

int CEventPoller_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int CEventPoller_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event = { .events = events, .data.u64 = token };
    return epoll_ctl(epfd, op, fd, &event);
}

int CEventPoller_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeout) {
    struct epoll_event ready[64];
    if (max > 64) max = 64;
    int count = epoll_wait(epfd, ready, max, timeout);
    for (int i = 0; i < count; i++) {
        tokens[i] = ready[i].data.u64;
        events[i] = ready[i].events;
    }
    return count;
}

int CEventPoller_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

void CEventPoller_set_thread_name(const char *name) {
    char truncated[16];
    int i = 0;
    for (; name[i] && i < 15; i++) truncated[i] = name[i];
    truncated[i] = 0;
    pthread_setname_np(pthread_self(), truncated);
}
