import Dispatch

/// Tunables of the vhost-user backend.
public struct BackendOptions: Sendable {
    /// How long stopping a ring (GET_VRING_BASE, disconnect) waits for in-flight requests.
    public var drainTimeout: DispatchTimeInterval

    public init(drainTimeout: DispatchTimeInterval = .seconds(30)) {
        self.drainTimeout = drainTimeout
    }
}
