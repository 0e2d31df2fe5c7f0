import Glibc
import Logging

/// The wall-clock time of an event, to the millisecond.
public struct LogTime: Sendable, Equatable {
    /// Seconds since the Unix epoch (UTC).
    public var seconds: Int
    public var milliseconds: Int

    public init(seconds: Int, milliseconds: Int) {
        self.seconds = seconds
        self.milliseconds = milliseconds
    }

    public static func now() -> LogTime {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return LogTime(seconds: Int(ts.tv_sec), milliseconds: Int(ts.tv_nsec) / 1_000_000)
    }

    /// `1700000000.123`: the text format's stamp, as the server always wrote it.
    public var epochText: String {
        "\(seconds)." + LogLineFormatter.padded(milliseconds, 3)
    }

    /// `2023-11-14T22:13:20.123Z` (RFC 3339, UTC): the JSON format's `ts`.
    public var rfc3339: String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        let pad = LogLineFormatter.padded
        return "\(parts.tm_year + 1900)-\(pad(Int(parts.tm_mon) + 1, 2))-\(pad(Int(parts.tm_mday), 2))"
            + "T\(pad(Int(parts.tm_hour), 2)):\(pad(Int(parts.tm_min), 2)):\(pad(Int(parts.tm_sec), 2))"
            + ".\(pad(milliseconds, 3))Z"
    }
}

/// Renders one event as one line (ending in a newline) of either format. Pure: the tests
/// call it directly.
///
/// - text: `STAMP LEVEL message key=value ...`; metadata sorted by key; a value that is empty or
///   holds a space, `"`, `=` or a control character is quoted with JSON string escapes; newlines
///   in the message are written as `\n`, so an event is always one line.
/// - json: `{"ts":...,"level":...,"msg":...}` then the metadata keys, sorted, as members
///   (arrays and dictionaries as JSON arrays and objects). A metadata key that is `ts`,
///   `level` or `msg` is written with a leading underscore.
public enum LogLineFormatter {
    static let reservedKeys: Set<String> = ["ts", "level", "msg"]

    public static func line(format: LogFormat, time: LogTime, level: Logger.Level, message: String,
                            metadata: Logger.Metadata) -> String {
        switch format {
        case .text: return textLine(time: time, level: level, message: message, metadata: metadata)
        case .json: return jsonLine(time: time, level: level, message: message, metadata: metadata)
        }
    }

    public static func textLine(time: LogTime, level: Logger.Level, message: String, metadata: Logger.Metadata) -> String {
        var line = time.epochText + " " + level.rawValue.uppercased() + " "
        appendSingleLine(message, to: &line)
        for key in metadata.keys.sorted() {
            line += " "
            line += key
            line += "="
            appendTextValue(metadata[key]!, to: &line)
        }
        line += "\n"
        return line
    }

    public static func jsonLine(time: LogTime, level: Logger.Level, message: String, metadata: Logger.Metadata) -> String {
        var line = "{\"ts\":\"" + time.rfc3339 + "\",\"level\":\"" + level.rawValue + "\",\"msg\":"
        appendJSONString(message, to: &line)
        for key in metadata.keys.sorted() {
            line += ","
            appendJSONString(reservedKeys.contains(key) ? "_" + key : key, to: &line)
            line += ":"
            appendJSONValue(metadata[key]!, to: &line)
        }
        line += "}\n"
        return line
    }

    /// `text` as a JSON string literal (RFC 8259 §7): `"` and `\` escaped, control characters
    /// as `\n`, `\r`, `\t` or `\u00XX`.
    public static func appendJSONString(_ text: String, to out: inout String) {
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += "\\u00" + hexDigit(scalar.value >> 4) + hexDigit(scalar.value & 0xF)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    static func appendJSONValue(_ value: Logger.MetadataValue, to out: inout String) {
        switch value {
        case .string(let text):
            appendJSONString(text, to: &out)
        case .stringConvertible(let convertible):
            appendJSONString(convertible.description, to: &out)
        case .array(let values):
            out += "["
            for (index, element) in values.enumerated() {
                if index > 0 { out += "," }
                appendJSONValue(element, to: &out)
            }
            out += "]"
        case .dictionary(let members):
            out += "{"
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { out += "," }
                appendJSONString(key, to: &out)
                out += ":"
                appendJSONValue(members[key]!, to: &out)
            }
            out += "}"
        }
    }

    static func appendTextValue(_ value: Logger.MetadataValue, to out: inout String) {
        let text: String
        switch value {
        case .string(let string): text = string
        default: text = value.description
        }
        let needsQuotes = text.isEmpty || text.unicodeScalars.contains {
            $0 == " " || $0 == "\"" || $0 == "=" || $0.value < 0x20 || $0.value == 0x7F
        }
        if needsQuotes { appendJSONString(text, to: &out) } else { out += text }
    }

    /// Appends `text` with line breaks written as `\n` and `\r`.
    static func appendSingleLine(_ text: String, to out: inout String) {
        guard text.unicodeScalars.contains(where: { $0 == "\n" || $0 == "\r" }) else {
            out += text
            return
        }
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            default: out.unicodeScalars.append(scalar)
            }
        }
    }

    static func hexDigit(_ value: UInt32) -> String {
        String(UnicodeScalar(UInt8(value < 10 ? 0x30 + value : 0x61 + value - 10)))
    }

    static func padded(_ value: Int, _ width: Int) -> String {
        let digits = String(value)
        return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
    }
}
