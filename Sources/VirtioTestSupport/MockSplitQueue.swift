import VhostUserDriver

/// One buffer of a descriptor chain as the driver describes it (see `DriverBuffer`).
public typealias MockBuffer = DriverBuffer

/// A raw descriptor, for building well-formed and hostile tables (see `RawDescriptor`).
public typealias MockDescriptor = RawDescriptor

/// The driver side of a split virtqueue in test guest memory (see `DriverSplitQueue`).
public typealias MockSplitQueue = DriverSplitQueue
