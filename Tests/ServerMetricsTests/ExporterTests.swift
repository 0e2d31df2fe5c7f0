import Glibc
import MetricsExporter
import ServerMetrics
import Synchronization
import Testing
import VirtioTestSupport

/// The listener over real sockets on 127.0.0.1 (ephemeral ports).
@Suite struct ExporterTests {
    static func start(_ sources: [MetricsSource] = [MetricsSource(controller: "ctrl0") { PrometheusTextTests.sampleStatistics() }])
        throws -> PrometheusExporter {
        try PrometheusExporter.start(host: "127.0.0.1", port: 0, sources: sources)
    }

    @Test func servesMetricsInTheTextFormat() throws {
        let exporter = try Self.start()
        defer { exporter.stop() }
        #expect(exporter.address.port != 0, "the real port of an ephemeral listener")
        let response = try HTTPFetch.get(port: exporter.address.port, path: "/metrics")
        #expect(response.status == 200)
        #expect(response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
        #expect(response.headers["content-length"] == String(response.body.utf8.count))
        let parsed = try PrometheusExposition(parsing: response.body)
        #expect(parsed.value("vhost_user_scsi_requests_in_flight", ["controller": "ctrl0", "queue": "0"]) == 7)
        // A query string is ignored; HEAD has the head only.
        #expect(try HTTPFetch.get(port: exporter.address.port, path: "/metrics?x=1").status == 200)
        let head = try HTTPFetch.send(port: exporter.address.port, request: "HEAD /metrics HTTP/1.0\r\n\r\n")
        #expect(head.status == 200 && head.body.isEmpty && head.headers["content-length"] == String(response.body.utf8.count))
    }

    @Test func readsTheSourcesAtEveryScrape() throws {
        let scrapes = Atomic<Int>(0)
        let exporter = try Self.start([MetricsSource(controller: "c") {
            let n = scrapes.add(1, ordering: .relaxed).newValue
            return DeviceStatistics(queues: [QueueStatistics(queue: 0, inFlight: n)])
        }])
        defer { exporter.stop() }
        for expected in 1...3 {
            let parsed = try PrometheusExposition(parsing: HTTPFetch.get(port: exporter.address.port, path: "/metrics").body)
            #expect(parsed.value("vhost_user_scsi_requests_in_flight", ["controller": "c", "queue": "0"]) == Double(expected))
        }
    }

    @Test func otherPathsMethodsAndGarbageGetErrors() throws {
        let exporter = try Self.start()
        defer { exporter.stop() }
        let port = exporter.address.port
        #expect(try HTTPFetch.get(port: port, path: "/").status == 404)
        #expect(try HTTPFetch.get(port: port, path: "/metricsx").status == 404)
        let post = try HTTPFetch.send(port: port, request: "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        #expect(post.status == 405 && post.headers["allow"] == "GET, HEAD")
        #expect(try HTTPFetch.send(port: port, request: "hello there\r\n\r\n").status == 400)
        #expect(try HTTPFetch.send(port: port, request: "GET /metrics SPDY/3\n\n").status == 400)
        let huge = "GET /metrics HTTP/1.1\r\nX-Filler: " + String(repeating: "a", count: 10_000) + "\r\n\r\n"
        #expect(try HTTPFetch.send(port: port, request: huge).status == 431)
        // Bare LF line ends are accepted (RFC 9112 §2.2).
        #expect(try HTTPFetch.send(port: port, request: "GET /metrics HTTP/1.0\n\n").status == 200)
    }

    /// A client that connects and says nothing neither blocks other scrapes nor stays forever.
    @Test func silentClientsDoNotBlockOthersAndAreDropped() throws {
        let exporter = try Self.start()
        defer { exporter.stop() }
        let port = exporter.address.port
        let silent = try (0..<3).map { _ in try HTTPFetch.connect(port: port, timeout: 10) }
        defer { silent.forEach { close($0) } }
        let half = try HTTPFetch.connect(port: port)
        defer { close(half) }
        _ = "GET /metr".withCString { send(half, $0, 9, Int32(MSG_NOSIGNAL)) }

        let start = MonotonicClock.nanoseconds()
        #expect(try HTTPFetch.get(port: port, path: "/metrics").status == 200)
        #expect(MonotonicClock.nanoseconds() - start < 1_000_000_000, "served at once despite the silent clients")

        // The deadline (5 s) closes the silent ones: reading returns end of stream.
        let closedAt = MonotonicClock.nanoseconds()
        #expect(try HTTPFetch.readToEnd(silent[0]) == "")
        let waited = Double(MonotonicClock.nanoseconds() - closedAt) / 1e9
        #expect(waited < 8, "dropped after the 5 s deadline, not kept")
    }

    @Test func moreClientsThanTheLimitAreTurnedAwayAndServiceGoesOn() throws {
        let exporter = try Self.start()
        defer { exporter.stop() }
        let port = exporter.address.port
        let idle = try (0..<PrometheusExporter.maxConnections).map { _ in try HTTPFetch.connect(port: port) }
        // Every slot is taken by an idle client: the next one is closed at once.
        usleep(200_000)
        let extra = try HTTPFetch.connect(port: port)
        #expect(try HTTPFetch.readToEnd(extra) == "")
        close(extra)
        idle.forEach { close($0) }
        usleep(200_000)
        #expect(try HTTPFetch.get(port: port, path: "/metrics").status == 200, "slots come back when clients leave")
    }

    @Test func stopClosesTheListener() throws {
        let exporter = try Self.start()
        let port = exporter.address.port
        exporter.stop()
        exporter.stop()
        #expect(throws: (any Error).self) { try HTTPFetch.get(port: port, path: "/metrics") }
    }

    @Test func listenAddressesParseWithOneLineErrors() throws {
        #expect(try ListenAddress(parsing: "127.0.0.1:9100") == ListenAddress(host: "127.0.0.1", port: 9100))
        #expect(try ListenAddress(parsing: "0.0.0.0:0") == ListenAddress(host: "0.0.0.0", port: 0))
        #expect(try ListenAddress(parsing: "localhost:80") == ListenAddress(host: "127.0.0.1", port: 80))
        for bad in ["9100", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "host.example:9100", "[::1]:9100", ":9100"] {
            #expect(throws: MetricsExporterError.self, "\(bad)") { try ListenAddress(parsing: bad) }
        }
        do {
            _ = try ListenAddress(parsing: "nowhere:1")
        } catch {
            #expect(error.description == "'nowhere' in 'nowhere:1' is not an IPv4 address (for example 127.0.0.1)")
        }
    }

    @Test func aTakenPortIsAOneLineError() throws {
        let first = try Self.start()
        defer { first.stop() }
        #expect {
            _ = try PrometheusExporter.start(host: "127.0.0.1", port: first.address.port, sources: [])
        } throws: { error in
            (error as? MetricsExporterError)?.description == "metrics: cannot listen on 127.0.0.1:\(first.address.port): Address already in use"
        }
    }
}
