import Dispatch
import Testing
import VhostUserSCSI
import VirtioSCSI
import VirtioTestSupport

/// DESIGN "Handover" 2: after GET_VRING_BASE has replied for a ring, that ring makes no more
/// guest memory accesses, even when the drain timed out with requests still outstanding.
@Suite struct DrainTimeoutTests {
    @Test func noUsedRingWriteAfterGetVringBaseTimedOut() throws {
        let h = try ServerHarness(drainTimeout: .milliseconds(200))
        defer { h.stop() }
        let g = try h.connectGuest()
        h.backend.hold()
        let r = g.post(cdb: CDBs.read10(lba: 0, blocks: 1), dataIn: 512)
        #expect(h.backend.waitForCommands(1))
        let start = monotonicSeconds()
        let base = try g.frontend.getVringBase(2)
        #expect(monotonicSeconds() - start >= 0.15, "GET_VRING_BASE waited for the drain timeout")
        #expect(base == 1)
        let responseBefore = g.memory.read(r.responseAddress, count: VirtioSCSICommandResponse.byteCount)
        // The stuck command was aborted through task management when the drain timed out.
        #expect(waitUntil(timeout: 5) { h.backend.heldCount == 0 })
        #expect(h.backend.taskManagementCalls.contains { if case .abortTask = $0.function { true } else { false } })
        h.backend.releaseAll()
        for session in h.backend.sessions { session.queue.sync {} }   // any completion has run
        #expect(g.rings[2].usedIndex == 0, "the stopped ring's used index must not move")
        #expect(g.memory.read(r.responseAddress, count: VirtioSCSICommandResponse.byteCount) == responseBefore,
                "no response written into guest memory after the ring was reported stopped")
    }
}
