// Counts heap allocations of the process it is linked into, for micro-benchmarks that report
// allocations per request. Linked only into vhost-user-scsi-microbench.
#ifndef CMALLOCCOUNTER_H
#define CMALLOCCOUNTER_H
unsigned long CMallocCounter_allocations(void);
#endif
