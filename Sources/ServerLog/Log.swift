import Dispatch
import Logging
import Synchronization

/// Structured metadata of one event: swift-log's `Logger.Metadata`, written as `key=value`
/// pairs (text) or as members of the line's JSON object (json).
public typealias LogMetadata = Logger.Metadata

/// The process-wide logger the server's code calls: `Log.info("...")`,
/// `Log.error("...", metadata: ["lun": "0:1"])`.
///
/// It is a façade over a swift-log `Logger` whose handler is `LineLogHandler` (one line per
/// event on stderr, one `write(2)` per line, so lines from different queues never interleave).
/// Cheap when a level is off: the message and the metadata are autoclosures, and the level is
/// one relaxed atomic load, checked before swift-log is touched.
public enum Log {
    private static let threshold = Atomic<Int>(LogLevel.info.rawValue)
    private static let formatSetting = Atomic<Int>(LogFormat.text.rawValue)

    /// The least severe level written (`--log-level`); default info.
    public static var level: LogLevel {
        get { LogLevel(rawValue: threshold.load(ordering: .relaxed)) ?? .info }
        set { threshold.store(newValue.rawValue, ordering: .relaxed) }
    }

    /// How lines are written (`--log-format`); default text. Applies to every `LineLogHandler`
    /// made without a format of its own, from the next event on.
    public static var format: LogFormat {
        get { LogFormat(rawValue: formatSetting.load(ordering: .relaxed)) ?? .text }
        set { formatSetting.store(newValue.rawValue, ordering: .relaxed) }
    }

    /// The swift-log logger behind the façade, for code that wants a `Logger` (its level
    /// follows `Log.level`). To route other libraries' swift-log output the same way, the
    /// executable may call `LoggingSystem.bootstrap(LineLogHandler.init(label:))` once.
    public static let logger = Logger(label: "vhost-user-scsi") { LineLogHandler(label: $0) }

    @inline(__always)
    public static func enabled(_ level: LogLevel) -> Bool {
        level.rawValue >= threshold.load(ordering: .relaxed)
    }

    /// At a level chosen at run time (e.g. a session's lifecycle lines, quieter for a probe).
    public static func log(_ level: LogLevel, _ message: @autoclosure () -> String,
                           metadata: @autoclosure () -> LogMetadata? = nil,
                           file: String = #fileID, function: String = #function, line: UInt = #line) {
        emit(level, message, metadata, file: file, function: function, line: line)
    }

    public static func trace(_ message: @autoclosure () -> String, metadata: @autoclosure () -> LogMetadata? = nil,
                             file: String = #fileID, function: String = #function, line: UInt = #line) {
        emit(.trace, message, metadata, file: file, function: function, line: line)
    }

    public static func debug(_ message: @autoclosure () -> String, metadata: @autoclosure () -> LogMetadata? = nil,
                             file: String = #fileID, function: String = #function, line: UInt = #line) {
        emit(.debug, message, metadata, file: file, function: function, line: line)
    }

    public static func info(_ message: @autoclosure () -> String, metadata: @autoclosure () -> LogMetadata? = nil,
                            file: String = #fileID, function: String = #function, line: UInt = #line) {
        emit(.info, message, metadata, file: file, function: function, line: line)
    }

    public static func warning(_ message: @autoclosure () -> String, metadata: @autoclosure () -> LogMetadata? = nil,
                               file: String = #fileID, function: String = #function, line: UInt = #line) {
        emit(.warning, message, metadata, file: file, function: function, line: line)
    }

    public static func error(_ message: @autoclosure () -> String, metadata: @autoclosure () -> LogMetadata? = nil,
                             file: String = #fileID, function: String = #function, line: UInt = #line) {
        emit(.error, message, metadata, file: file, function: function, line: line)
    }

    @inline(__always)
    /// Metadata every event logged on a queue carries, set with `DispatchQueue.setSpecific`
    /// (e.g. `controller=vm1` on all of a controller's queues, so the lines of a process
    /// serving several VMs say which one they are about without each call site passing it).
    public static let queueContext = DispatchSpecificKey<LogMetadata>()

    private static func emit(_ level: LogLevel, _ message: () -> String, _ metadata: () -> LogMetadata?,
                             file: String, function: String, line: UInt) {
        guard enabled(level) else { return }
        logger.log(level: level.swiftLogLevel, Logger.Message(stringLiteral: message()),
                   metadata: withQueueContext(metadata()), file: file, function: function, line: line)
    }

    /// `own` plus the current queue's `queueContext`; an event's own keys win.
    public static func withQueueContext(_ own: LogMetadata?) -> LogMetadata? {
        guard let context = DispatchQueue.getSpecific(key: queueContext) else { return own }
        return context.merging(own ?? [:]) { _, own in own }
    }
}
