import ControlProtocol
import Glibc

/// Reads the JSON configuration file (Docs/CONFIGURATION.md) into a ServerConfiguration with
/// the command line's setters: a key is an option's name with underscores for dashes.
enum ConfigurationFile {
    static func load(path: String, into configuration: inout ServerConfiguration) throws(ConfigurationError) {
        let bytes = try readFile(path)
        let root: JSONValue
        do { root = try JSONValue.parse(bytes) } catch {
            throw ConfigurationError("\(path): \(error)")
        }
        guard case .object(let settings) = root else {
            throw ConfigurationError("\(path): the top level must be a JSON object")
        }
        for key in settings.keys.sorted() {
            let value = settings[key]!
            if key == "controllers" {
                guard case .array(let controllers) = value else {
                    throw ConfigurationError("\(path): controllers must be an array")
                }
                for (index, entry) in controllers.enumerated() {
                    let controller = try loadController(entry, index: configuration.controllers.count,
                                                        where: "\(path): controllers[\(index)]")
                    configuration.controllers.append(controller)
                }
                continue
            }
            let name = key.replacingUnderscores()
            guard let setter = Settings.global[name] else {
                throw ConfigurationError("\(path): unknown key '\(key)'")
            }
            guard let text = value.scalarText else {
                throw ConfigurationError("\(path): \(key) must be a string or a number")
            }
            do { try setter(&configuration, text) } catch {
                throw ConfigurationError("\(path): \(key): \(error.description.droppingOptionName())")
            }
        }
    }

    /// One entry of `controllers` (also the arguments of the control socket's add-controller):
    /// its LUNs are given as `lunArguments`, resolved by `resolveLUNs`.
    static func loadController(_ entry: JSONValue, index: Int,
                                       where location: String) throws(ConfigurationError) -> ControllerConfiguration {
        guard case .object(let fields) = entry else { throw ConfigurationError("\(location) must be an object") }
        var controller = ControllerConfiguration(name: "ctrl\(index)")
        for key in fields.keys.sorted() {
            let value = fields[key]!
            if key == "luns" {
                guard case .array(let luns) = value else { throw ConfigurationError("\(location).luns must be an array") }
                for (i, lun) in luns.enumerated() {
                    controller.lunArguments.append(try lunArgument(lun, where: "\(location).luns[\(i)]"))
                }
                continue
            }
            let name = key.replacingUnderscores()
            guard name != "lun", let setter = Settings.controller[name] else {
                throw ConfigurationError("\(location): unknown key '\(key)'")
            }
            guard let text = value.scalarText else {
                throw ConfigurationError("\(location).\(key) must be a string or a number")
            }
            do { try setter(&controller, text) } catch {
                throw ConfigurationError("\(location).\(key): \(error.description.droppingOptionName())")
            }
        }
        return controller
    }

    /// `"URL"`, `"T:L=URL"` or `{"address": "T:L", "url": "URL"}`.
    private static func lunArgument(_ value: JSONValue, where location: String) throws(ConfigurationError) -> String {
        if let text = value.stringValue { return text }
        guard case .object(let fields) = value, let url = fields["url"]?.stringValue else {
            throw ConfigurationError("\(location) must be a URL string or an object with \"url\"")
        }
        for key in fields.keys where key != "url" && key != "address" {
            throw ConfigurationError("\(location): unknown key '\(key)'")
        }
        guard let address = fields["address"] else { return url }
        guard let text = address.stringValue else { throw ConfigurationError("\(location).address must be \"T:L\"") }
        do { _ = try ControllerConfiguration.parseAddress(text) } catch {
            throw ConfigurationError("\(location).address: \(error)")
        }
        return "\(text)=\(url)"
    }

    private static func readFile(_ path: String) throws(ConfigurationError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw ConfigurationError("cannot read configuration file \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else {
                throw ConfigurationError("cannot read configuration file \(path): \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            bytes += chunk[0..<n]
            guard bytes.count <= 16 << 20 else { throw ConfigurationError("\(path): larger than 16 MiB") }
        }
        return bytes
    }
}

private extension String {
    func replacingUnderscores() -> String { String(map { $0 == "_" ? "-" : $0 }) }

    /// "--name must be ..." → "must be ...": in the file the key is named already.
    func droppingOptionName() -> String {
        guard hasPrefix("--"), let space = firstIndex(of: " ") else { return self }
        return String(self[index(after: space)...])
    }
}
