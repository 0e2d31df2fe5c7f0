import ServerMetrics
import Testing
import VirtioTestSupport

@Suite struct PrometheusTextTests {
    static func sampleStatistics() -> DeviceStatistics {
        var busy = QueueCounters()
        for _ in 0..<3 { busy.recordAnswer(opcode: 0x28, responseOK: true, status: 0, bytesRead: 4096, bytesWritten: 0) }
        busy.recordAnswer(opcode: 0x2A, responseOK: true, status: 2, bytesRead: 0, bytesWritten: 512)
        for ns: UInt64 in [15_000, 70_000, 70_000, 3_000_000, 30_000_000_000] { busy.recordLatency(nanoseconds: ns) }
        return DeviceStatistics(queues: [
            QueueStatistics(queue: 0, counters: busy, inFlight: 7,
                            luns: [LUNStatistics(target: 0, lun: 1, reconnects: 2, connectionLosses: 3, commandFailures: 4, loginFailures: 5,
                                                  sessionsReconnecting: 1)]),
            QueueStatistics(queue: 1, luns: [LUNStatistics(target: 0, lun: 1)]),
        ])
    }

    /// Every line parses strictly; every family has HELP and TYPE; values are where they belong.
    @Test func renderingParsesBackWithTheValues() throws {
        let text = PrometheusText.render([("ctrl0", Self.sampleStatistics())])
        let parsed = try PrometheusExposition(parsing: text)
        let families = ["requests_total", "read_bytes_total", "written_bytes_total", "request_errors_total",
                        "requests_in_flight", "request_duration_seconds", "iscsi_reconnects_total",
                        "iscsi_connection_losses_total", "iscsi_command_failures_total", "iscsi_login_failures_total",
                        "iscsi_sessions"]
            .map { "vhost_user_scsi_" + $0 }
        #expect(Set(parsed.types.keys) == Set(families))
        #expect(Set(parsed.helps.keys) == Set(families))
        #expect(parsed.types["vhost_user_scsi_requests_in_flight"] == "gauge")
        #expect(parsed.types["vhost_user_scsi_iscsi_sessions"] == "gauge")
        let unit0 = ["controller": "ctrl0", "queue": "0", "lun": "0:1"]
        #expect(parsed.value("vhost_user_scsi_iscsi_sessions", unit0.merging(["state": "reconnecting"]) { $1 }) == 1)
        #expect(parsed.value("vhost_user_scsi_iscsi_sessions", unit0.merging(["state": "up"]) { $1 }) == 0)
        #expect(parsed.types["vhost_user_scsi_request_duration_seconds"] == "histogram")
        #expect(families.filter { $0.hasSuffix("_total") }.allSatisfy { parsed.types[$0] == "counter" })

        let q0 = ["controller": "ctrl0", "queue": "0"]
        #expect(parsed.value("vhost_user_scsi_requests_total", q0.merging(["kind": "read"]) { $1 }) == 3)
        #expect(parsed.value("vhost_user_scsi_requests_total", q0.merging(["kind": "write"]) { $1 }) == 1)
        #expect(parsed.value("vhost_user_scsi_requests_total", q0.merging(["kind": "other"]) { $1 }) == 0)
        #expect(parsed.value("vhost_user_scsi_read_bytes_total", q0) == 12288)
        #expect(parsed.value("vhost_user_scsi_written_bytes_total", q0) == 512)
        #expect(parsed.value("vhost_user_scsi_request_errors_total", q0) == 1)
        #expect(parsed.value("vhost_user_scsi_requests_in_flight", q0) == 7)
        let lun = q0.merging(["lun": "0:1"]) { $1 }
        #expect(parsed.value("vhost_user_scsi_iscsi_reconnects_total", lun) == 2)
        #expect(parsed.value("vhost_user_scsi_iscsi_connection_losses_total", lun) == 3)
        #expect(parsed.value("vhost_user_scsi_iscsi_command_failures_total", lun) == 4)
        #expect(parsed.value("vhost_user_scsi_iscsi_login_failures_total", lun) == 5)
        #expect(parsed.value("vhost_user_scsi_iscsi_reconnects_total", ["controller": "ctrl0", "queue": "1", "lun": "0:1"]) == 0)
    }

    @Test func histogramBucketsAreCumulativeAndEndInInfEqualToCount() throws {
        let parsed = try PrometheusExposition(parsing: PrometheusText.render([("ctrl0", Self.sampleStatistics())]))
        #expect(try parsed.checkHistogram("vhost_user_scsi_request_duration_seconds") == 2, "one series per queue")
        let q0 = ["controller": "ctrl0", "queue": "0"]
        func bucket(_ le: String) -> Double? {
            parsed.value("vhost_user_scsi_request_duration_seconds_bucket", q0.merging(["le": le]) { $1 })
        }
        #expect(bucket("0.000016") == 1)
        #expect(bucket("0.000064") == 1)
        #expect(bucket("0.000128") == 3)
        #expect(bucket("0.004096") == 4)
        #expect(bucket("8.388608") == 4)
        #expect(bucket("+Inf") == 5)
        #expect(parsed.value("vhost_user_scsi_request_duration_seconds_count", q0) == 5)
        #expect(parsed.value("vhost_user_scsi_request_duration_seconds_sum", q0) == 30.003155)
        #expect(parsed.samples(named: "vhost_user_scsi_request_duration_seconds_bucket").count == 2 * LatencyHistogram.bucketCount)
    }

    /// Label values are escaped (`\\`, `\"`, `\n`) and read back exactly; several controllers
    /// share each family's single HELP/TYPE.
    @Test func controllerNamesAreEscapedAndControllersShareFamilies() throws {
        let odd = "vm \"a\"\\b\nc"
        let text = PrometheusText.render([("ctrl0", Self.sampleStatistics()), (odd, Self.sampleStatistics())])
        let parsed = try PrometheusExposition(parsing: text)
        #expect(parsed.value("vhost_user_scsi_requests_in_flight", ["controller": odd, "queue": "0"]) == 7)
        #expect(parsed.value("vhost_user_scsi_requests_in_flight", ["controller": "ctrl0", "queue": "0"]) == 7)
        #expect(text.split(separator: "\n").filter { $0.hasPrefix("# TYPE vhost_user_scsi_requests_total ") }.count == 1)
        #expect(try parsed.checkHistogram("vhost_user_scsi_request_duration_seconds") == 4)
    }

    @Test func noControllersIsStillAValidExposition() throws {
        let parsed = try PrometheusExposition(parsing: PrometheusText.render([]))
        #expect(parsed.samples.isEmpty && parsed.types.count == 11)
    }

    /// The test's parser must reject what Prometheus would, or its passes mean nothing.
    @Test func theStrictParserRejectsMalformedLines() {
        let bad = [
            "# TYPE m counter\nm{a=\"1\"} \n",
            "# TYPE m counter\nm{a=1} 1\n",
            "m 1\n",
            "# TYPE m counter\nm{a=\"x\\q\"} 1\n",
            "# TYPE m counter\nm 1\nm 2\n",
            "# TYPE m counter\n1m 1\n",
            "# TYPE m counter\nm 1",
        ]
        for text in bad { #expect(throws: PrometheusExposition.ParseError.self) { try PrometheusExposition(parsing: text) } }
        let notCumulative = "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"
        #expect(throws: PrometheusExposition.ParseError.self) {
            try PrometheusExposition(parsing: notCumulative).checkHistogram("h")
        }
        let infNotCount = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"
        #expect(throws: PrometheusExposition.ParseError.self) { try PrometheusExposition(parsing: infNotCount).checkHistogram("h") }
    }

    @Test func secondsAreExactDecimals() {
        #expect(PrometheusText.secondsText(0) == "0")
        #expect(PrometheusText.secondsText(16_000) == "0.000016")
        #expect(PrometheusText.secondsText(2_000_000_000) == "2")
        #expect(PrometheusText.secondsText(1_500_000_001) == "1.500000001")
        #expect(PrometheusText.secondsText(8_388_608_000) == "8.388608")
    }
}
