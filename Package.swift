// swift-tools-version:6.0
// The vhost-user-scsi backend: a VMM connects over a Unix socket, the server maps the guest's
// RAM, services the virtio-scsi rings on Dispatch queues and forwards SCSI commands to iSCSI LUNs.
// Dependencies point one way only; see Docs/ARCHITECTURE.md.
import PackageDescription

let package = Package(
    name: "vhost-user-scsi",
    products: [
        .executable(name: "vhost-user-scsi", targets: ["vhost-user-scsi"]),
        .executable(name: "vhost-user-scsi-ctl", targets: ["vhost-user-scsi-ctl"]),
        .executable(name: "vhost-user-scsi-bench", targets: ["vhost-user-scsi-bench"]),
        .executable(name: "vhost-user-scsi-microbench", targets: ["vhost-user-scsi-microbench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // C: CMSG_* wrappers, eventfd, memfd and memory fences that Swift's Glibc module lacks.
        .target(name: "CVhostShims"),
        // The system libiscsi (Debian: libiscsi-dev); only ISCSIInitiator imports it.
        .systemLibrary(name: "CLibISCSI", pkgConfig: "libiscsi", providers: [.apt(["libiscsi-dev"])]),

        // Pure Swift layers: no Dispatch, no syscalls; unit-tested and fuzzed in memory.
        // Logging: the `Log` façade over swift-log, one line per event (text or JSON).
        .target(name: "ServerLog", dependencies: [.product(name: "Logging", package: "swift-log")]),
        // Per-queue counters, the latency histogram, statistics snapshots and the Prometheus
        // text rendering (Docs/OBSERVABILITY.md).
        .target(name: "ServerMetrics"),
        // sd_notify(3) without libsystemd: READY=1 / STOPPING=1 to $NOTIFY_SOCKET (Examples/systemd).
        .target(name: "ServiceNotify", dependencies: ["ServerLog"]),
        .target(name: "SCSICore"),
        .target(name: "VirtioCore", dependencies: ["CVhostShims"]),
        .target(name: "VhostUserProtocol"),
        .target(name: "VirtioSCSI", dependencies: ["SCSICore"]),

        // I/O layers.
        // One epoll thread per serial queue running fd handlers on the queue (FDPoller).
        .target(name: "CEventPoller"),
        .target(name: "EventPoller", dependencies: ["CEventPoller"]),
        // Unix stream sockets at a path (listen, connect) and the errno error type: shared by
        // the server and the small control client, which must not pull in the backend.
        .target(name: "UnixSockets"),
        .target(name: "VhostUserBackend",
                dependencies: ["VirtioCore", "VhostUserProtocol", "CVhostShims", "ServerLog", "EventPoller", "UnixSockets"]),
        .target(name: "ISCSIInitiator", dependencies: ["SCSICore", "CLibISCSI", "ServerLog", "EventPoller", "CEventPoller"]),
        .target(name: "VhostUserSCSI",
                dependencies: ["VirtioCore", "VirtioSCSI", "SCSICore", "VhostUserBackend", "ServerLog", "ServerMetrics",
                               "EventPoller"]),
        // The HTTP listener serving GET /metrics in the Prometheus text format.
        .target(name: "MetricsExporter", dependencies: ["ServerMetrics", "ServerLog"]),
        // The JSON of the configuration file and the control socket, shared with the client.
        .target(name: "ControlProtocol"),
        .executableTarget(name: "vhost-user-scsi",
                          dependencies: ["VhostUserSCSI", "ISCSIInitiator", "VhostUserBackend", "ServerLog", "ServerMetrics",
                                         "MetricsExporter", "ControlProtocol", "ServiceNotify", "EventPoller"]),
        // The control socket's client (Docs/CONTROL.md).
        .executableTarget(name: "vhost-user-scsi-ctl", dependencies: ["ControlProtocol", "UnixSockets"]),

        // The driver side of vhost-user and virtio (a frontend and a guest driver in one
        // process): used by the load generator and by the tests.
        .target(name: "VhostUserDriver",
                dependencies: ["VirtioCore", "VhostUserProtocol", "VhostUserBackend", "CVhostShims"]),
        // Load generator for any vhost-user-scsi backend (Docs/BENCHMARKS.md).
        .executableTarget(name: "vhost-user-scsi-bench",
                          dependencies: ["VhostUserDriver", "VirtioSCSI", "SCSICore", "ServerLog"]),

        // Micro-benchmarks of the ring and request path (ns and allocations per request);
        // CMallocCounter interposes malloc in that executable only, to count allocations.
        .target(name: "CMallocCounter"),
        .executableTarget(name: "vhost-user-scsi-microbench",
                          dependencies: ["CMallocCounter", "VhostUserDriver", "VirtioCore", "VirtioSCSI", "ServerMetrics",
                                         "VhostUserSCSI", "VhostUserBackend", "SCSICore"]),

        // Fuzz entry points (pure functions over bytes); libFuzzer drivers in Fuzz/, corpus
        // replayed by FuzzCorpusTests.
        .target(name: "FuzzTargets",
                dependencies: ["VhostUserProtocol", "VirtioCore", "VirtioSCSI", "SCSICore", "VhostUserSCSI",
                               "VhostUserBackend", "CVhostShims"]),

        // Test-only helpers shared by every test target.
        .target(name: "VirtioTestSupport",
                dependencies: ["VirtioCore", "VhostUserProtocol", "VhostUserBackend", "SCSICore", "CVhostShims",
                               "VhostUserDriver"]),

        .testTarget(name: "VirtioCoreTests", dependencies: ["VirtioCore", "VirtioTestSupport"]),
        .testTarget(name: "VhostUserProtocolTests", dependencies: ["VhostUserProtocol"]),
        .testTarget(name: "EventPollerTests", dependencies: ["EventPoller"]),
        .testTarget(name: "VirtioSCSITests", dependencies: ["VirtioSCSI", "SCSICore"]),
        .testTarget(name: "VhostUserSCSITests",
                    dependencies: ["VhostUserSCSI", "VhostUserBackend", "VirtioTestSupport", "SCSICore", "VirtioSCSI",
                                   "ServerMetrics", "MetricsExporter"]),
        .testTarget(name: "ISCSIInitiatorTests", dependencies: ["ISCSIInitiator", "SCSICore", "EventPoller"]),
        .testTarget(name: "FuzzCorpusTests", dependencies: ["FuzzTargets"]),
        .testTarget(name: "ServerTests", dependencies: ["vhost-user-scsi", "ControlProtocol", "ISCSIInitiator", "MetricsExporter", "ServerLog"]),
        .testTarget(name: "ServerLogTests", dependencies: ["ServerLog", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "ServiceNotifyTests", dependencies: ["ServiceNotify"]),
        .testTarget(name: "UnixSocketsTests", dependencies: ["UnixSockets"]),
        .testTarget(name: "ServerMetricsTests", dependencies: ["ServerMetrics", "MetricsExporter", "VirtioTestSupport"]),
    ]
)
