import Glibc
import Logging

/// A swift-log handler that writes one line per event, in `LogFormat.text` or `.json`, to
/// stderr (one `write(2)` per line) or to a given sink (tests).
///
/// Its level follows `Log.level` unless set on the handler (swift-log's value semantics: a
/// level set on one `Logger` changes only that logger).
public struct LineLogHandler: LogHandler {
    public let label: String
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    /// nil: follow `Log.format`.
    public var format: LogFormat?
    private var levelOverride: Logger.Level?
    private let write: @Sendable (String) -> Void

    /// A handler writing to stderr.
    public init(label: String) {
        self.init(label: label, format: nil, write: LineLogHandler.writeToStandardError)
    }

    /// A handler writing each line (newline included) through `write`.
    public init(label: String, format: LogFormat?, write: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.format = format
        self.write = write
    }

    public var logLevel: Logger.Level {
        get { levelOverride ?? Log.level.swiftLogLevel }
        set { levelOverride = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        // Precedence, lowest first: the handler's metadata, the provider's, the event's own.
        var merged = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty {
            merged.merge(provided) { _, new in new }
        }
        if let own = event.metadata, !own.isEmpty {
            merged.merge(own) { _, new in new }
        }
        let line = LogLineFormatter.line(format: format ?? Log.format, time: .now(), level: event.level,
                                         message: event.message.description, metadata: merged)
        write(line)
    }

    /// One `write(2)` for the whole line (retried on EINTR and short writes), so concurrent
    /// lines never interleave.
    @Sendable public static func writeToStandardError(_ line: String) {
        var line = line
        line.withUTF8 { buf in
            var offset = 0
            while offset < buf.count {
                let n = Glibc.write(2, buf.baseAddress! + offset, buf.count - offset)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                offset += n
            }
        }
    }
}
