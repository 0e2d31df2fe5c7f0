import Logging

/// Log levels, ordered by severity (the spellings of `--log-level`).
public enum LogLevel: Int, Comparable, Sendable, CaseIterable {
    case trace, debug, info, warning, error

    public init?(name: String) {
        guard let level = LogLevel.allCases.first(where: { $0.name == name }) else { return nil }
        self = level
    }

    public var name: String {
        switch self {
        case .trace: return "trace"
        case .debug: return "debug"
        case .info: return "info"
        case .warning: return "warning"
        case .error: return "error"
        }
    }

    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }

    /// The swift-log level of the same name.
    public var swiftLogLevel: Logger.Level {
        switch self {
        case .trace: return .trace
        case .debug: return .debug
        case .info: return .info
        case .warning: return .warning
        case .error: return .error
        }
    }

    /// The nearest of ours: swift-log's notice counts as info, critical as error.
    public init(_ level: Logger.Level) {
        switch level {
        case .trace: self = .trace
        case .debug: self = .debug
        case .info, .notice: self = .info
        case .warning: self = .warning
        case .error, .critical: self = .error
        }
    }
}

/// How each event is written (the spellings of `--log-format`).
public enum LogFormat: Int, Sendable, CaseIterable {
    /// `1700000000.123 INFO message key=value ...`, as the server always wrote.
    case text
    /// One JSON object per line: `{"ts":"2026-11-20T13:45:06.123Z","level":"info","msg":"...",...}`.
    case json

    public init?(name: String) {
        guard let format = LogFormat.allCases.first(where: { $0.name == name }) else { return nil }
        self = format
    }

    public var name: String {
        switch self {
        case .text: return "text"
        case .json: return "json"
        }
    }
}
