// Micro-benchmarks of the ring and request path, in one process, with no I/O: nanoseconds
// and heap allocations per request. See Docs/BENCHMARKS.md.
MicroBench.main()
