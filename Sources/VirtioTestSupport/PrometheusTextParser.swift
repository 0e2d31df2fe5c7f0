/// A strict reader of the Prometheus text exposition format 0.0.4, for tests: every line must
/// be `# HELP name text`, `# TYPE name type` or a sample `name{label="value",...} value`, and
/// every sample must belong to a family whose TYPE came before it.
public struct PrometheusExposition {
    public struct Sample: Equatable {
        public var name: String
        public var labels: [String: String]
        public var value: Double
    }

    public struct ParseError: Error, CustomStringConvertible {
        public var description: String
    }

    public private(set) var samples: [Sample] = []
    /// Family name → type (counter, gauge, histogram...).
    public private(set) var types: [String: String] = [:]
    public private(set) var helps: [String: String] = [:]

    public init(parsing text: String) throws {
        guard text.isEmpty || text.hasSuffix("\n") else { throw ParseError(description: "the text does not end in a newline") }
        var seen = Set<String>()
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().enumerated() {
            func fail(_ why: String) -> ParseError { ParseError(description: "line \(number + 1) '\(line)': \(why)") }
            if line.hasPrefix("#") {
                let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
                guard parts.count >= 3, parts[0] == "#", Self.isMetricName(parts[2]) else { throw fail("bad comment line") }
                let name = String(parts[2])
                switch parts[1] {
                case "HELP":
                    guard helps[name] == nil else { throw fail("second HELP") }
                    helps[name] = parts.count > 3 ? String(parts[3]) : ""
                case "TYPE":
                    guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(parts[3]) else {
                        throw fail("bad TYPE")
                    }
                    guard types[name] == nil, !samples.contains(where: { Self.family(of: $0.name, in: [name: ""]) == name }) else {
                        throw fail("TYPE after samples of its family, or twice")
                    }
                    types[name] = String(parts[3])
                default:
                    throw fail("unknown comment")
                }
                continue
            }
            let sample: Sample
            do { sample = try Self.parseSample(line) } catch { throw fail(error.description) }
            guard Self.family(of: sample.name, in: types) != nil else { throw fail("sample of a family with no TYPE") }
            let key = sample.name + "|" + sample.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            guard seen.insert(key).inserted else { throw fail("duplicate series") }
            samples.append(sample)
        }
    }

    /// The value of the sample with exactly these labels.
    public func value(_ name: String, _ labels: [String: String]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }

    public func samples(named name: String) -> [Sample] { samples.filter { $0.name == name } }

    /// For each series of histogram `family`: buckets in increasing `le`, cumulative counts
    /// never decreasing, the last bucket `+Inf` and equal to `_count`. Returns the number of
    /// series checked.
    public func checkHistogram(_ family: String) throws -> Int {
        guard types[family] == "histogram" else { throw ParseError(description: "\(family) is not a histogram") }
        let counts = samples(named: family + "_count")
        for count in counts {
            let buckets = samples(named: family + "_bucket").filter {
                var labels = $0.labels
                labels["le"] = nil
                return labels == count.labels
            }
            guard let last = buckets.last, last.labels["le"] == "+Inf" else {
                throw ParseError(description: "\(family) \(count.labels): no +Inf bucket last")
            }
            var previousBound = -Double.infinity
            var previousCount = 0.0
            for bucket in buckets {
                guard let le = bucket.labels["le"], let bound = le == "+Inf" ? Double.infinity : Double(le), bound > previousBound else {
                    throw ParseError(description: "\(family) \(count.labels): bucket bounds not increasing at \(bucket.labels)")
                }
                guard bucket.value >= previousCount else {
                    throw ParseError(description: "\(family) \(count.labels): bucket counts not cumulative at le=\(le)")
                }
                previousBound = bound
                previousCount = bucket.value
            }
            guard last.value == count.value else {
                throw ParseError(description: "\(family) \(count.labels): +Inf bucket \(last.value) != _count \(count.value)")
            }
            guard value(family + "_sum", count.labels) != nil else {
                throw ParseError(description: "\(family) \(count.labels): no _sum")
            }
        }
        return counts.count
    }

    static func family(of name: String, in types: [String: String]) -> String? {
        if types[name] != nil { return name }
        for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) {
            let base = String(name.dropLast(suffix.count))
            if types[base] == "histogram" || types[base] == "summary" { return base }
        }
        return nil
    }

    static func isMetricName<S: StringProtocol>(_ s: S) -> Bool {
        guard let first = s.unicodeScalars.first, !("0"..."9").contains(first) else { return false }
        return s.unicodeScalars.allSatisfy { $0 == "_" || $0 == ":" || ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) }
    }

    static func isLabelName<S: StringProtocol>(_ s: S) -> Bool {
        isMetricName(s) && !s.contains(":")
    }

    static func parseSample(_ line: Substring) throws(ParseError) -> Sample {
        func failure(_ why: String) -> ParseError { ParseError(description: why) }
        var rest = line[...]
        let name = rest.prefix { $0 != "{" && $0 != " " }
        guard isMetricName(name) else { throw failure("bad metric name") }
        rest = rest.dropFirst(name.count)
        var labels: [String: String] = [:]
        if rest.first == "{" {
            rest = rest.dropFirst()
            while rest.first != "}" {
                let label = rest.prefix { $0 != "=" }
                guard isLabelName(label), labels[String(label)] == nil else { throw failure("bad or repeated label name") }
                rest = rest.dropFirst(label.count)
                guard rest.hasPrefix("=\"") else { throw failure("label without =\"") }
                rest = rest.dropFirst(2)
                var value = ""
                var closed = false
                while let c = rest.first {
                    rest = rest.dropFirst()
                    if c == "\"" { closed = true; break }
                    if c == "\\" {
                        guard let e = rest.first else { throw failure("dangling escape") }
                        rest = rest.dropFirst()
                        switch e {
                        case "\\": value.append("\\")
                        case "\"": value.append("\"")
                        case "n": value.append("\n")
                        default: throw failure("bad escape \\\(e)")
                        }
                    } else {
                        value.append(c)
                    }
                }
                guard closed else { throw failure("unterminated label value") }
                labels[String(label)] = value
                if rest.first == "," { rest = rest.dropFirst() } else if rest.first != "}" { throw failure("expected , or }") }
            }
            rest = rest.dropFirst()
        }
        guard rest.first == " " else { throw failure("no space before the value") }
        let valueText = rest.dropFirst()
        let value: Double?
        switch valueText {
        case "+Inf": value = .infinity
        case "-Inf": value = -.infinity
        case "NaN": value = .nan
        default: value = valueText.contains(" ") ? nil : Double(valueText)
        }
        guard let value else { throw failure("bad value '\(valueText)'") }
        return Sample(name: String(name), labels: labels, value: value)
    }
}
