// Small C helpers that Swift's Glibc module does not import: the CMSG_* macros, eventfd,
// memfd_create, and acquire/release accesses and fences on guest memory.
#ifndef CVHOSTSHIMS_H
#define CVHOSTSHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

// CMSG_* are macros, which Swift cannot call.
struct cmsghdr *CVhostShims_CMSG_FIRSTHDR(struct msghdr *msg);
struct cmsghdr *CVhostShims_CMSG_NXTHDR(struct msghdr *msg, struct cmsghdr *cmsg);
unsigned char *CVhostShims_CMSG_DATA(struct cmsghdr *cmsg);
size_t CVhostShims_CMSG_SPACE(size_t length);
size_t CVhostShims_CMSG_LEN(size_t length);

int CVhostShims_eventfd(unsigned int initval, int flags);
int CVhostShims_EFD_NONBLOCK(void);
int CVhostShims_EFD_CLOEXEC(void);
int CVhostShims_memfd_create(const char *name, unsigned int flags);

// Guest memory is shared with another party (the guest's vCPUs): ring indices are read with
// acquire and written with release semantics, and the device issues full fences where the
// virtio spec requires ordering between a store and a later load (event index checks).
static inline uint16_t CVhostShims_load_acquire_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}
static inline void CVhostShims_store_release_u16(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
}
static inline void CVhostShims_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void CVhostShims_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void CVhostShims_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
// Dirty-log bitmap bytes are shared with QEMU, which clears them concurrently: set bits atomically.
static inline void CVhostShims_atomic_or_u8(void *p, uint8_t bits) {
    __atomic_fetch_or((uint8_t *)p, bits, __ATOMIC_RELAXED);
}

#endif
