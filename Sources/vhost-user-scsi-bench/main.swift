// Kept tiny on purpose: code here is main-actor isolated; the tool lives in Bench.swift.
import Glibc
exit(Bench.main(CommandLine.arguments))
