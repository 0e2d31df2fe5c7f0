// epoll and thread naming for EventPoller: Swift's Glibc module does not import
// <sys/epoll.h>, and struct epoll_event is packed on x86-64, so the C side converts it.
#ifndef CEVENTPOLLER_H
#define CEVENTPOLLER_H

#include <stdint.h>

enum { CEventPoller_ADD = 1, CEventPoller_DEL = 2, CEventPoller_MOD = 3 };

int CEventPoller_create(void);
int CEventPoller_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token);
// Waits like epoll_wait (at most 64 events) and returns each event's token and flags.
int CEventPoller_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeout);
int CEventPoller_eventfd(void);
void CEventPoller_set_thread_name(const char *name);

#endif
