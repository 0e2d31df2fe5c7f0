import Dispatch
import SCSICore

/// Makes the session that request queue `queue` uses for configured logical unit
/// `backend` (an index into the server's LUN list). Called on `queue`.
public typealias SCSISessionFactory = @Sendable (_ backend: Int, _ queue: DispatchQueue, _ maxOutstanding: Int) throws -> SCSITargetSession
