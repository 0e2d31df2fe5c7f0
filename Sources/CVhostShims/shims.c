#define _GNU_SOURCE
#include "CVhostShims.h"
#include <sys/eventfd.h>
#include <sys/mman.h>

struct cmsghdr *CVhostShims_CMSG_FIRSTHDR(struct msghdr *msg) { return CMSG_FIRSTHDR(msg); }
struct cmsghdr *CVhostShims_CMSG_NXTHDR(struct msghdr *msg, struct cmsghdr *cmsg) { return CMSG_NXTHDR(msg, cmsg); }
unsigned char *CVhostShims_CMSG_DATA(struct cmsghdr *cmsg) { return CMSG_DATA(cmsg); }
size_t CVhostShims_CMSG_SPACE(size_t length) { return CMSG_SPACE(length); }
size_t CVhostShims_CMSG_LEN(size_t length) { return CMSG_LEN(length); }

int CVhostShims_eventfd(unsigned int initval, int flags) { return eventfd(initval, flags); }
int CVhostShims_EFD_NONBLOCK(void) { return EFD_NONBLOCK; }
int CVhostShims_EFD_CLOEXEC(void) { return EFD_CLOEXEC; }
int CVhostShims_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
