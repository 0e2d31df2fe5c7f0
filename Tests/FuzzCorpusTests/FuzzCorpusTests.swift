import Foundation
import FuzzTargets
import Testing

/// Replays the committed fuzz corpus (Fuzz/corpus/<target>/) through the entry points, so
/// every input a fuzzer once found interesting stays a regression test, and checks that the
/// seeds built from the product's encoders are part of it.
@Suite(.serialized) struct FuzzCorpusTests {
    /// Fuzz/corpus, found from this file (Tests/FuzzCorpusTests/...).
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz/corpus")

    static func files(of target: String) -> [URL] {
        let directory = corpus.appendingPathComponent(target)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { directory.appendingPathComponent($0) }
    }

    @Test(arguments: FuzzSeeds.targets)
    func replayCorpus(_ target: String) throws {
        let files = Self.files(of: target)
        var replayed = 0
        for file in files {
            let bytes = try [UInt8](Data(contentsOf: file))
            FuzzSeeds.run(target: target, bytes)
            replayed += 1
        }
        #expect(replayed > 0, "no corpus files for \(target) in \(Self.corpus.path)")
    }

    /// Every seed is in the corpus (FUZZ_WRITE_SEEDS=1 writes them as seed-<name>), and runs.
    @Test(arguments: FuzzSeeds.targets)
    func seedsAreInTheCorpus(_ target: String) throws {
        let seeds = try #require(FuzzSeeds.all()[target])
        let directory = Self.corpus.appendingPathComponent(target)
        if ProcessInfo.processInfo.environment["FUZZ_WRITE_SEEDS"] == "1" {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            for (name, bytes) in seeds {
                try Data(bytes).write(to: directory.appendingPathComponent("seed-\(name)"))
            }
        }
        for (name, bytes) in seeds.sorted(by: { $0.key < $1.key }) {
            let stored = try? Data(contentsOf: directory.appendingPathComponent("seed-\(name)"))
            #expect(stored.map([UInt8].init) == bytes,
                    "Fuzz/corpus/\(target)/seed-\(name) is missing or stale: run FUZZ_WRITE_SEEDS=1 swift test --filter FuzzCorpusTests")
            FuzzSeeds.run(target: target, bytes)
        }
    }
}
