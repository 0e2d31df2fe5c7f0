@_exported import VhostUserDriver

// The driver side of vhost-user and virtio lives in VhostUserDriver (shared with the load
// generator); the tests keep their historical names for it.

/// Errors raised by the test helpers (never by the product code).
public typealias TestSupportError = DriverError

/// Guest RAM for tests: memfd regions shared with the server (see `SharedGuestMemory`).
public typealias TestGuestMemory = SharedGuestMemory
