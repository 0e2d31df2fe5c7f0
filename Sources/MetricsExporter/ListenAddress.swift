import Glibc

/// A one-line reason the exporter cannot start: a bad address or a socket call that failed.
public struct MetricsExporterError: Error, CustomStringConvertible, Equatable {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }
}

/// Where the exporter listens: a dotted IPv4 address and a TCP port (0: any free port).
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` (the value of `--metrics-listen`): HOST a dotted IPv4 address or
    /// `localhost`, PORT 0...65535.
    public init(parsing text: String) throws(MetricsExporterError) {
        guard let colon = text.lastIndex(of: ":") else {
            throw MetricsExporterError("'\(text)' is not HOST:PORT (for example 127.0.0.1:9100)")
        }
        let host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard let port = UInt16(portText) else {
            throw MetricsExporterError("'\(portText)' in '\(text)' is not a port number (0...65535)")
        }
        let address = ListenAddress(host: host == "localhost" ? "127.0.0.1" : host, port: port)
        guard address.ipv4 != nil else {
            throw MetricsExporterError("'\(host)' in '\(text)' is not an IPv4 address (for example 127.0.0.1)")
        }
        self = address
    }

    public var description: String { "\(host):\(port)" }

    /// The host in network byte order, if it is a dotted IPv4 address.
    var ipv4: in_addr? {
        var address = in_addr()
        return inet_pton(AF_INET, host, &address) == 1 ? address : nil
    }
}
