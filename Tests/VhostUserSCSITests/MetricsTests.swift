import Glibc
import MetricsExporter
import SCSICore
import ServerMetrics
import Testing
import VhostUserSCSI
import VirtioSCSI
import VirtioTestSupport

/// Statistics counted on the request queues of a real device, read through
/// `VirtioSCSIDevice.statistics()` and through the Prometheus exporter over a real socket.
@Suite struct MetricsTests {
    /// Requests on two request queues move the counters, the exporter shows them with the
    /// controller and queue labels, and the histogram stays consistent.
    @Test func requestsMoveTheCountersSeenThroughTheExporter() throws {
        let h = try ServerHarness(requestQueues: 2)
        defer { h.stop() }
        let exporter = try PrometheusExporter.start(host: "127.0.0.1", port: 0,
                                                    sources: [MetricsSource(controller: "vm1", device: h.device)])
        defer { exporter.stop() }
        let g = try h.connectGuest()
        let q0 = ["controller": "vm1", "queue": "0"]
        let q1 = ["controller": "vm1", "queue": "1"]
        func scrape() throws -> PrometheusExposition {
            _ = h.device.refreshStatistics()
            let response = try HTTPFetch.get(port: exporter.address.port, path: "/metrics")
            #expect(response.status == 200)
            return try PrometheusExposition(parsing: response.body)
        }
        let before = try scrape()
        #expect(before.value("vhost_user_scsi_requests_total", q0.merging(["kind": "write"]) { $1 }) == 0)
        #expect(before.value("vhost_user_scsi_requests_total", q1.merging(["kind": "read"]) { $1 }) == 0)

        let data = pattern(8 * 512, seed: 5)
        _ = try g.execute(cdb: CDBs.write16(lba: 0, blocks: 8), dataOut: data)
        _ = try g.execute(cdb: CDBs.read16(lba: 0, blocks: 8), dataIn: data.count)
        _ = try g.execute(cdb: CDBs.testUnitReady)
        let (_, _, unsupported) = try g.execute(lun: 5, cdb: CDBs.testUnitReady)
        #expect(unsupported.status == SCSIStatus.checkCondition.rawValue)
        let (_, _, badTarget) = try g.execute(target: 1, cdb: CDBs.testUnitReady)
        #expect(badTarget.response == VirtioSCSIResponse.badTarget.rawValue)
        _ = try g.execute(queue: 3, lun: 300, cdb: CDBs.read16(lba: 8, blocks: 2), dataIn: 1024)

        let after = try scrape()
        func value(_ name: String, _ labels: [String: String], _ extra: [String: String] = [:]) -> Double? {
            after.value("vhost_user_scsi_" + name, labels.merging(extra) { $1 })
        }
        #expect(value("requests_total", q0, ["kind": "read"]) == 1)
        #expect(value("requests_total", q0, ["kind": "write"]) == 1)
        #expect(value("requests_total", q0, ["kind": "other"]) == 3)
        #expect(value("read_bytes_total", q0) == 4096)
        #expect(value("written_bytes_total", q0) == 4096)
        #expect(value("request_errors_total", q0) == 0, "a bus scan's answers for absent addresses are not errors")
        #expect(value("requests_in_flight", q0) == 0)
        #expect(value("request_duration_seconds_count", q0) == 3, "the three commands that went to the target")
        #expect(value("requests_total", q1, ["kind": "read"]) == 1)
        #expect(value("read_bytes_total", q1) == 1024)
        #expect(value("request_errors_total", q1) == 0)
        #expect(value("request_duration_seconds_count", q1) == 1)
        #expect(try after.checkHistogram("vhost_user_scsi_request_duration_seconds") == 2)
        #expect(value("iscsi_reconnects_total", q0, ["lun": "0:0"]) == 0)
        #expect(value("iscsi_reconnects_total", q1, ["lun": "0:300"]) == 0)

        let statistics = h.device.statistics()
        #expect(statistics.queues.map(\.queue) == [0, 1])
        #expect(statistics.totals.totalRequests == 6)
        #expect(statistics.luns.map(\.label) == ["0:0", "0:300"])
    }

    /// Without being asked, every request queue publishes its counters once a second.
    @Test func theTimerPublishesWithoutARefresh() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        _ = try g.execute(cdb: CDBs.write16(lba: 0, blocks: 1), dataOut: pattern(512, seed: 1))
        let published = waitUntil(timeout: 3) { h.device.statistics().queues[0].counters.requests(.write) == 1 }
        #expect(published, "published by the timer within about a second")
    }

    /// In-flight counts commands at the target; latency is measured from submission to
    /// completion.
    @Test func inFlightAndLatencyFollowTheTarget() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        h.backend.hold()
        for i in 0..<3 { g.post(cdb: CDBs.read16(lba: UInt64(i), blocks: 1), dataIn: 512) }
        #expect(h.backend.waitForCommands(3))
        #expect(h.device.refreshStatistics().queues[0].inFlight == 3)
        h.backend.releaseAll()
        _ = try g.waitForUsed(count: 3)
        let released = h.device.refreshStatistics().queues[0]
        #expect(released.inFlight == 0)
        #expect(released.counters.latency.count == 3)

        h.backend.setDelay(.milliseconds(20))
        _ = try g.execute(cdb: CDBs.read16(lba: 0, blocks: 1), dataIn: 512)
        let delayed = h.device.refreshStatistics().queues[0].counters.latency
        #expect(delayed.count == 4)
        let slow = (0..<LatencyHistogram.bucketCount).filter { i in
            (LatencyHistogram.upperBoundNanoseconds(i) ?? .max) > 20_000_000 && delayed.counts[i] > 0
        }
        #expect(slow.count == 1, "the delayed command lands in a bucket above 20 ms")
        #expect(delayed.sumNanoseconds >= 20_000_000)
    }

    /// Per-LUN transport counters come from each queue's sessions and outlive the sessions:
    /// a session closed when the frontend goes away keeps its share in the totals.
    @Test func lunCountersComeFromTheSessionsAndSurviveTheirClose() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        // Held to the end: a guest let go disconnects, and the sessions would close early.
        let guest = try h.connectGuest()
        defer { withExtendedLifetime(guest) {} }
        #expect(waitUntil(timeout: 5) { h.backend.sessions.count == 2 })
        let session = try #require(h.backend.sessions.first { $0.backend == 0 })
        session.queue.sync {
            session.simulatedCounters = SCSISessionCounters(reconnects: 2, connectionLosses: 3, commandFailures: 4)
        }
        let expected = [LUNStatistics(target: 0, lun: 0, reconnects: 2, connectionLosses: 3, commandFailures: 4, sessionsUp: 1),
                        LUNStatistics(target: 0, lun: 300, sessionsUp: 1)]
        // Polled: under a loaded test run a queue may miss refreshStatistics' deadline once.
        #expect(waitUntil(timeout: 5) { h.device.refreshStatistics().luns == expected })
        #expect(h.device.statistics().luns.map(\.state) == ["up", "up"])
        h.device.closeSessions()
        let closed = expected.map { var unit = $0; unit.sessionsUp = 0; return unit }
        #expect(waitUntil(timeout: 5) { h.device.refreshStatistics().luns == closed }, "kept after the session closed")
        #expect(h.device.statistics().luns.map(\.state) == ["idle", "idle"])
        let text = PrometheusText.render([("c", h.device.statistics())])
        let parsed = try PrometheusExposition(parsing: text)
        #expect(parsed.value("vhost_user_scsi_iscsi_command_failures_total", ["controller": "c", "queue": "0", "lun": "0:0"]) == 4)
    }

    /// A unit that cannot be logged in to counts login failures, and its requests count as
    /// errors (VIRTIO_SCSI_S_TRANSPORT_FAILURE).
    @Test func failedLoginsAreCountedPerUnit() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        h.backend.refuseSessions(true)
        let g = try h.connectGuest()
        let (_, _, response) = try g.execute(cdb: CDBs.testUnitReady)
        #expect(response.response == VirtioSCSIResponse.transportFailure.rawValue)
        let statistics = h.device.refreshStatistics()
        // One attempt per unit when the ring started; unit 0:0 again if the request came
        // more than a second later (a slow machine).
        #expect(statistics.luns.map(\.label) == ["0:0", "0:300"])
        #expect(statistics.luns[0].loginFailures >= 1 && statistics.luns[1].loginFailures == 1)
        #expect(statistics.totals.errors == 1)
        #expect(statistics.queues[0].counters.latency.count == 0, "nothing went to the target")
    }
}
