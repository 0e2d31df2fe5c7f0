import ServerMetrics
import Testing

@Suite struct CountersTests {
    /// Bucket i holds (16 µs · 2^(i-1), 16 µs · 2^i]; the bounds themselves fall in the lower
    /// bucket (Prometheus's `le` is "less than or equal").
    @Test func latencyBucketsAreLogSpacedAndInclusive() {
        #expect(LatencyHistogram.bucket(nanoseconds: 0) == 0)
        #expect(LatencyHistogram.bucket(nanoseconds: 1) == 0)
        #expect(LatencyHistogram.bucket(nanoseconds: 16_000) == 0)
        #expect(LatencyHistogram.bucket(nanoseconds: 16_001) == 1)
        #expect(LatencyHistogram.bucket(nanoseconds: 32_000) == 1)
        #expect(LatencyHistogram.bucket(nanoseconds: 32_001) == 2)
        #expect(LatencyHistogram.bucket(nanoseconds: 1_000_000) == 6, "1 ms is in (512 µs, 1.024 ms]")
        #expect(LatencyHistogram.bucket(nanoseconds: 8_388_608_000) == 19)
        #expect(LatencyHistogram.bucket(nanoseconds: 8_388_608_001) == 20, "above the last bound: +Inf")
        #expect(LatencyHistogram.bucket(nanoseconds: .max) == 20)
        for i in 0..<LatencyHistogram.finiteBucketCount {
            let bound = LatencyHistogram.upperBoundNanoseconds(i)!
            #expect(LatencyHistogram.bucket(nanoseconds: bound) == i)
            #expect(LatencyHistogram.bucket(nanoseconds: bound + 1) == i + 1)
        }
        #expect(LatencyHistogram.upperBoundNanoseconds(20) == nil)
    }

    @Test func histogramCountsSumsAndAccumulates() {
        var h = LatencyHistogram()
        for ns: UInt64 in [10_000, 20_000, 20_000, 2_000_000_000, 20_000_000_000] { h.record(nanoseconds: ns) }
        #expect(h.count == 5)
        #expect(h.sumNanoseconds == 22_000_050_000)
        #expect(h.counts[0] == 1 && h.counts[1] == 2 && h.counts[20] == 1)
        #expect(h.cumulativeCount(throughBucket: 1) == 3)
        #expect(h.cumulativeCount(throughBucket: 20) == 5)
        var sum = h
        sum.add(h)
        #expect(sum.count == 10 && sum.counts[1] == 4 && sum.sumNanoseconds == 44_000_100_000)
    }

    @Test func commandKindsFollowTheOpcode() {
        for opcode: UInt8 in [0x08, 0x28, 0xA8, 0x88] { #expect(SCSICommandKind(opcode: opcode) == .read) }
        for opcode: UInt8 in [0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E] { #expect(SCSICommandKind(opcode: opcode) == .write) }
        for opcode: UInt8 in [0x00, 0x12, 0x25, 0x35, 0x42, 0xA0, 0x9E, 0x93] { #expect(SCSICommandKind(opcode: opcode) == .other) }
    }

    @Test func answersCountKindsBytesAndErrors() {
        var c = QueueCounters()
        c.recordAnswer(opcode: 0x28, responseOK: true, status: 0, bytesRead: 4096, bytesWritten: 0)
        c.recordAnswer(opcode: 0x2A, responseOK: true, status: 0, bytesRead: 0, bytesWritten: 8192)
        c.recordAnswer(opcode: 0x2A, responseOK: true, status: 0x02, bytesRead: 0, bytesWritten: 0)  // CHECK CONDITION
        c.recordAnswer(opcode: 0x00, responseOK: false, status: 0, bytesRead: 0, bytesWritten: 0)  // e.g. BAD_TARGET
        c.recordAnswer(opcode: 0x34, responseOK: true, status: 0x04, bytesRead: 0, bytesWritten: 0)  // CONDITION MET
        c.recordAnswer(opcode: 0x28, responseOK: true, status: 0x18, bytesRead: 0, bytesWritten: 0)  // RESERVATION CONFLICT
        c.recordRefused()
        #expect(c.requests(.read) == 2 && c.requests(.write) == 2 && c.requests(.other) == 3)
        #expect(c.totalRequests == 7)
        #expect(c.bytesRead == 4096 && c.bytesWritten == 8192)
        #expect(c.errors == 4)
        var total = c
        total.add(c)
        #expect(total.totalRequests == 14 && total.errors == 8 && total.bytesWritten == 16384)
    }

    @Test func deviceStatisticsSumLUNsOverQueues() {
        let q0 = QueueStatistics(queue: 0, inFlight: 2, luns: [LUNStatistics(target: 0, lun: 1, reconnects: 1),
                                                              LUNStatistics(target: 0, lun: 2, commandFailures: 3)])
        let q1 = QueueStatistics(queue: 1, inFlight: 1, luns: [LUNStatistics(target: 0, lun: 2, reconnects: 2, loginFailures: 1),
                                                              LUNStatistics(target: 0, lun: 1, connectionLosses: 4)])
        let device = DeviceStatistics(queues: [q0, q1])
        #expect(device.inFlight == 3)
        #expect(device.luns == [LUNStatistics(target: 0, lun: 1, reconnects: 1, connectionLosses: 4),
                                LUNStatistics(target: 0, lun: 2, reconnects: 2, commandFailures: 3, loginFailures: 1)])
    }

    @Test func cellHandsReadersTheLastPublishedValue() {
        let cell = StatisticsCell(QueueStatistics(queue: 0))
        var counters = QueueCounters()
        counters.recordRefused()
        cell.publish(QueueStatistics(queue: 0, counters: counters, inFlight: 5))
        #expect(cell.read().inFlight == 5 && cell.read().counters.errors == 1)
    }
}

import Foundation

/// The JSON the control socket can send (Statistics+Encodable.swift).
@Suite struct StatisticsJSONTests {
    @Test func deviceStatisticsEncodeToTheDocumentedShape() throws {
        let data = try JSONEncoder().encode(PrometheusTextTests.sampleStatistics())
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let queues = try #require(object["queues"] as? [[String: Any]])
        #expect(queues.count == 2)
        #expect(queues[0]["queue"] as? Int == 0 && queues[0]["inFlight"] as? Int == 7)
        #expect((queues[0]["requests"] as? [String: Int]) == ["read": 3, "write": 1, "other": 0])
        #expect(queues[0]["bytesRead"] as? Int == 12288 && queues[0]["errors"] as? Int == 1)
        let latency = try #require(queues[0]["latency"] as? [String: Any])
        #expect(latency["count"] as? Int == 5)
        let buckets = try #require(latency["buckets"] as? [[String: Any]])
        #expect(buckets.count == LatencyHistogram.bucketCount)
        #expect(buckets.first?["maxSeconds"] as? Double == 0.000016 && buckets.first?["count"] as? Int == 1)
        #expect(buckets.last?["maxSeconds"] is NSNull && buckets.last?["count"] as? Int == 1)
        let luns = try #require(object["luns"] as? [[String: Any]])
        #expect(luns.count == 1 && luns[0]["reconnects"] as? Int == 2 && luns[0]["lun"] as? Int == 1)
        let totals = try #require(object["totals"] as? [String: Any])
        #expect((totals["requests"] as? [String: Int])?["read"] == 3)
    }
}
