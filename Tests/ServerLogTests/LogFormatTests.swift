import Foundation
import Logging
import ServerLog
import Synchronization
import Testing

/// The two line formats of `LineLogHandler` (Docs/OBSERVABILITY.md).
@Suite struct LogFormatTests {
    static let time = LogTime(seconds: 1_700_000_000, milliseconds: 7)

    @Test func textLineIsTheOldLinePlusSortedMetadata() {
        let line = LogLineFormatter.line(format: .text, time: Self.time, level: .warning, message: "ring 2: draining",
                                         metadata: ["queue": "0", "controller": "ctrl0"])
        #expect(line == "1700000000.007 WARNING ring 2: draining controller=ctrl0 queue=0\n")
        let bare = LogLineFormatter.line(format: .text, time: Self.time, level: .info, message: "hello", metadata: [:])
        #expect(bare == "1700000000.007 INFO hello\n", "without metadata exactly the format the server always wrote")
    }

    @Test func textQuotesValuesThatWouldBreakKeyValueParsing() {
        let line = LogLineFormatter.line(format: .text, time: Self.time, level: .error, message: "two\nlines",
                                         metadata: ["url": "iscsi://h/iqn x", "empty": "", "eq": "a=b", "quote": "say \"hi\"",
                                                    "plain": "iscsi://127.0.0.1:3260/iqn.2026-11.example:storage/1"])
        #expect(line == "1700000000.007 ERROR two\\nlines empty=\"\" eq=\"a=b\" "
                + "plain=iscsi://127.0.0.1:3260/iqn.2026-11.example:storage/1 quote=\"say \\\"hi\\\"\" url=\"iscsi://h/iqn x\"\n")
        #expect(line.filter { $0 == "\n" }.count == 1, "one event, one line")
    }

    @Test func jsonLineIsOneObjectWithTheFieldsAndMetadata() throws {
        let line = LogLineFormatter.line(format: .json, time: Self.time, level: .info, message: "logged in",
                                         metadata: ["lun": "0:1", "attempt": .stringConvertible(3),
                                                    "luns": .array(["0:1", "0:2"]), "peer": .dictionary(["port": "3260"])])
        #expect(line == "{\"ts\":\"2023-11-14T22:13:20.007Z\",\"level\":\"info\",\"msg\":\"logged in\",\"attempt\":\"3\","
                + "\"lun\":\"0:1\",\"luns\":[\"0:1\",\"0:2\"],\"peer\":{\"port\":\"3260\"}}\n")
        let object = try Self.parse(line)
        #expect(object["msg"] as? String == "logged in")
        #expect(object["luns"] as? [String] == ["0:1", "0:2"])
    }

    /// RFC 8259 §7: quotes, backslashes and control characters are escaped, so a line always
    /// parses back to the exact message, and stays one line.
    @Test func jsonEscapesQuotesNewlinesAndControlCharacters() throws {
        let message = "he said \"no\"\\ then\nleft\r\tbell\u{07} nul\u{00} é ✓"
        let line = LogLineFormatter.line(format: .json, time: Self.time, level: .error, message: message,
                                         metadata: ["why": "a \"quoted\"\nreason"])
        #expect(line.hasSuffix("}\n"))
        #expect(line.dropLast().contains("\n") == false, "no raw newline inside the object")
        #expect(line.contains("\\\"no\\\"\\\\ then\\nleft\\r\\tbell\\u0007 nul\\u0000 é ✓"))
        let object = try Self.parse(line)
        #expect(object["msg"] as? String == message)
        #expect(object["why"] as? String == "a \"quoted\"\nreason")
        #expect(object["level"] as? String == "error")
    }

    @Test func jsonRenamesMetadataKeysThatCollideWithTheFields() throws {
        let line = LogLineFormatter.line(format: .json, time: Self.time, level: .debug, message: "m",
                                         metadata: ["msg": "shadow", "level": "x", "ts": "y"])
        let object = try Self.parse(line)
        #expect(object["msg"] as? String == "m")
        #expect(object["_msg"] as? String == "shadow")
        #expect(object["_level"] as? String == "x" && object["_ts"] as? String == "y")
    }

    @Test func rfc3339StampsAreUTC() {
        #expect(LogTime(seconds: 0, milliseconds: 0).rfc3339 == "1970-01-01T00:00:00.000Z")
        #expect(LogTime(seconds: 951_782_400, milliseconds: 999).rfc3339 == "2000-02-29T00:00:00.999Z")
        #expect(LogTime(seconds: 12, milliseconds: 45).epochText == "12.045")
    }

    @Test func formatAndLevelNamesParse() {
        #expect(LogFormat(name: "json") == .json && LogFormat(name: "text") == .text && LogFormat(name: "xml") == nil)
        #expect(LogLevel(name: "warning") == .warning && LogLevel(name: "notice") == nil)
        #expect(LogLevel(.critical) == .error && LogLevel(.notice) == .info)
    }

    static func parse(_ line: String) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
        return try #require(object as? [String: Any])
    }
}

/// Lines captured from a handler.
final class CapturedLines: Sendable {
    private let lines = Mutex<[String]>([])
    var all: [String] { lines.withLock { $0 } }
    func append(_ line: String) { lines.withLock { $0.append(line) } }
}

/// The handler behind swift-log and the `Log` façade. Serialized: these change the process's
/// `Log.level` and `Log.format` and put them back.
@Suite(.serialized) struct LogHandlerTests {
    @Test func handlerMergesMetadataWithTheEventWinning() throws {
        let captured = CapturedLines()
        var logger = Logger(label: "test") { LineLogHandler(label: $0, format: .json, write: captured.append) }
        logger.logLevel = .trace
        logger[metadataKey: "controller"] = "ctrl0"
        logger[metadataKey: "queue"] = "1"
        logger.info("done", metadata: ["queue": "2", "lun": "0:1"])
        let line = try #require(captured.all.first)
        let object = try LogFormatTests.parse(line)
        #expect(object["controller"] as? String == "ctrl0")
        #expect(object["queue"] as? String == "2", "the event's own metadata wins")
        #expect(object["lun"] as? String == "0:1")
    }

    @Test func handlerFollowsLogLevelAndLogFormatUnlessSetOnIt() {
        let savedLevel = Log.level
        let savedFormat = Log.format
        defer {
            Log.level = savedLevel
            Log.format = savedFormat
        }
        let captured = CapturedLines()
        let logger = Logger(label: "test") { LineLogHandler(label: $0, format: nil, write: captured.append) }
        Log.level = .warning
        Log.format = .text
        logger.info("dropped")
        logger.warning("kept as text")
        Log.format = .json
        Log.level = .debug
        logger.debug("kept as json")
        #expect(captured.all.count == 2)
        #expect(captured.all.first?.hasSuffix(" WARNING kept as text\n") == true)
        #expect(captured.all.last?.hasPrefix("{\"ts\":") == true)
        #expect(captured.all.last?.contains("\"level\":\"debug\",\"msg\":\"kept as json\"") == true)
    }

    /// Below the level the message and metadata are never built.
    @Test func disabledLevelsBuildNothing() {
        let savedLevel = Log.level
        defer { Log.level = savedLevel }
        Log.level = .error
        let built = Atomic<Int>(0)
        func expensive() -> String {
            built.add(1, ordering: .relaxed)
            return "expensive"
        }
        func expensiveMetadata() -> LogMetadata {
            built.add(1, ordering: .relaxed)
            return ["k": "v"]
        }
        Log.trace(expensive(), metadata: expensiveMetadata())
        Log.debug(expensive())
        Log.info(expensive(), metadata: expensiveMetadata())
        Log.warning(expensive())
        #expect(built.load(ordering: .relaxed) == 0)
        #expect(!Log.enabled(.warning) && Log.enabled(.error))
        #expect(Log.logger.logLevel == .error, "the swift-log logger follows Log.level")
    }
}
