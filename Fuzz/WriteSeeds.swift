// Writes the seeds of every fuzz target (FuzzSeeds, built with the product's encoders) into
// Fuzz/corpus/<target>/seed-<name>. Built and run by run.sh; `swift test` checks the result.
import FuzzTargets
import Glibc

let root = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "Fuzz/corpus"
var written = 0
for (target, seeds) in FuzzSeeds.all() {
    let directory = "\(root)/\(target)"
    mkdir(directory, 0o755)
    for (name, bytes) in seeds {
        guard let file = fopen("\(directory)/seed-\(name)", "wb") else {
            fputs("cannot write \(directory)/seed-\(name)\n", stderr)
            exit(1)
        }
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        fclose(file)
        written += 1
    }
}
print("wrote \(written) seeds under \(root)")
