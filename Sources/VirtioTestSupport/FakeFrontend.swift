import VhostUserDriver

/// A vhost-user frontend (the QEMU side) driving the real server (see `VhostUserFrontend`).
public typealias FakeFrontend = VhostUserFrontend
