import Glibc

/// Why a host name could not be looked up, in the resolver's words ("Name or service not
/// known"); the session says which name.
struct ResolveError: Error, Equatable, CustomStringConvertible {
    var reason: String

    init(_ reason: String) {
        self.reason = reason
    }

    var description: String { reason }
}

/// Host names of iSCSI portals, looked up the way libiscsi would have (its
/// `iscsi_connect_async` calls getaddrinfo with no hints and connects to the first address),
/// so handing it the numeric address instead changes nothing but where the lookup blocks.
enum HostLookup {
    /// True for an IPv4 or IPv6 address literal (as in the URL, without brackets): libiscsi
    /// takes it as it is, and no lookup is needed.
    static func isNumericAddress(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    /// getaddrinfo(3): the first address of `host` in numeric form, or the resolver's reason.
    /// Blocks for as long as the resolver takes (with an unreachable DNS server, its timeout
    /// times its attempts times the servers in resolv.conf: 5 × 2 × n s by default).
    static func getaddrinfo(host: String, port: UInt16) -> Result<String, ResolveError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        // What glibc assumes without hints (libiscsi passes none): no IPv6 address unless the
        // host has an IPv6 address of its own configured, and the reverse for IPv4.
        hints.ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = Glibc.getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            let reason = rc == EAI_SYSTEM ? String(cString: strerror(errno)) : String(cString: gai_strerror(rc))
            return .failure(ResolveError(rc == 0 ? "no address" : reason))
        }
        defer { freeaddrinfo(list) }
        var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let named = getnameinfo(first.pointee.ai_addr, first.pointee.ai_addrlen, &text, socklen_t(text.count),
                                nil, 0, NI_NUMERICHOST)
        guard named == 0 else { return .failure(ResolveError(String(cString: gai_strerror(named)))) }
        return .success(text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
    }
}
