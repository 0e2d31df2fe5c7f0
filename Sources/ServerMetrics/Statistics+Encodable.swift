// JSON shapes of the statistics, for the control socket (`vhost-user-scsi-ctl stats`, which
// turns the keys into snake_case like the rest of its protocol):
//
//   DeviceStatistics  {"queues": [QueueStatistics], "totals": QueueCounters, "luns": [LUNStatistics]}
//   QueueStatistics   {"queue": 0, "inFlight": 0, "luns": [...], then the QueueCounters members}
//   QueueCounters     {"requests": {"read": 0, "write": 0, "other": 0}, "bytesRead": 0,
//                      "bytesWritten": 0, "errors": 0, "latency": LatencyHistogram}
//   LatencyHistogram  {"count": 0, "sumSeconds": 0.0,
//                      "buckets": [{"maxSeconds": 1.6e-05, "count": 0}, ..., {"maxSeconds": null, "count": 0}]}
//                     (per-bucket counts, not cumulative; the last bucket has no bound)
//   LUNStatistics     {"target": 0, "lun": 1, "reconnects": 0, "connectionLosses": 0,
//                      "commandFailures": 0, "loginFailures": 0, "sessionsUp": 1,
//                      "sessionsReconnecting": 0, "sessionsFailing": 0}

extension LatencyHistogram: Encodable {
    private enum Keys: String, CodingKey { case count, sumSeconds, buckets }
    private enum BucketKeys: String, CodingKey { case maxSeconds, count }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(count, forKey: .count)
        try container.encode(Double(sumNanoseconds) / 1e9, forKey: .sumSeconds)
        var buckets = container.nestedUnkeyedContainer(forKey: .buckets)
        for index in 0..<Self.bucketCount {
            var bucket = buckets.nestedContainer(keyedBy: BucketKeys.self)
            let bound = Self.upperBoundNanoseconds(index).map { Double($0) / 1e9 }
            try bucket.encode(bound, forKey: .maxSeconds)
            try bucket.encode(counts[index], forKey: .count)
        }
    }
}

extension QueueCounters: Encodable {
    private enum Keys: String, CodingKey { case requests, bytesRead, bytesWritten, errors, latency }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        var requests: [String: UInt64] = [:]
        for kind in SCSICommandKind.allCases { requests[kind.name] = self.requests(kind) }
        try container.encode(requests, forKey: .requests)
        try container.encode(bytesRead, forKey: .bytesRead)
        try container.encode(bytesWritten, forKey: .bytesWritten)
        try container.encode(errors, forKey: .errors)
        try container.encode(latency, forKey: .latency)
    }
}


extension QueueStatistics: Encodable {
    private enum Keys: String, CodingKey { case queue, inFlight, luns }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(queue, forKey: .queue)
        try container.encode(inFlight, forKey: .inFlight)
        try container.encode(luns, forKey: .luns)
        try counters.encode(to: encoder)
    }
}

extension DeviceStatistics: Encodable {
    private enum Keys: String, CodingKey { case queues, totals, luns }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(queues, forKey: .queues)
        try container.encode(totals, forKey: .totals)
        try container.encode(luns, forKey: .luns)
    }
}
