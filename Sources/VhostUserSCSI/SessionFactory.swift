import Dispatch
import SCSICore

/// Makes the session that request queue `queue` uses for logical unit `backend`: its
/// `LogicalUnit.id`, stable and never reused (the units given at startup are 0, 1, ... in
/// order; see `VirtioSCSIDevice.addLUN` for units added later). Called on `queue`.
public typealias SCSISessionFactory = @Sendable (_ backend: Int, _ queue: DispatchQueue, _ maxOutstanding: Int) throws -> SCSITargetSession
