import Dispatch
import Glibc
import ISCSIInitiator
import SCSICore
import ServerLog
import ServiceNotify
import VhostUserBackend
import VhostUserSCSI
import VirtioSCSI

/// Wiring: options → probe the LUNs → device → vhost-user server → wait for a signal.
enum Server {
    static func main() -> Never {
        let options: Options
        do {
            switch try Options.parse(Array(CommandLine.arguments.dropFirst())) {
            case .help:
                print(Options.usage)
                exit(0)
            case .run(let parsed):
                options = parsed
            }
        } catch {
            fail("\(error)", status: 2)
        }
        Log.level = options.logLevel
        signal(SIGPIPE, SIG_IGN)

        // Fail early and clearly when a target cannot be reached or a LUN is not there.
        for lun in options.luns {
            do {
                try probe(lun, initiatorName: options.initiatorName)
            } catch {
                fail("\(error)", status: 1)
            }
        }

        let lunMap = LUNMap(options.luns.map { (address: $0.address, backendLUN: $0.url.lun) })
        let urls = options.luns.map(\.url)
        let initiatorName = options.initiatorName
        let recovery = options.recoveryPolicy
        let device = VirtioSCSIDevice(lunMap: lunMap, requestQueues: options.requestQueues) { backend, queue, maxOutstanding in
            try ISCSISession(url: urls[backend], initiatorName: initiatorName, queue: queue, maxOutstanding: maxOutstanding,
                             recovery: recovery)
        }
        let server = VhostUserServer(socketPath: options.socketPath, device: device,
                                     options: BackendOptions(drainTimeout: .seconds(options.drainTimeoutSeconds)))
        do {
            try server.start()
        } catch {
            fail("\(error)", status: 1)
        }
        Log.info("serving \(options.luns.count) LUN(s) on \(options.requestQueues) request queue(s) as \(options.initiatorName); "
                 + "target outages ridden out for \(options.targetTimeoutSeconds) s, keep-alive "
                 + (options.keepaliveSeconds == 0 ? "off" : "every \(options.keepaliveSeconds) s"))
        ServiceNotify.ready(status: "serving \(options.luns.count) LUN(s) on \(options.socketPath)")
        installSignalHandlers(server: server, device: device)
        dispatchMain()
    }

    private static func probe(_ lun: Options.LUN, initiatorName: String) throws {
        let queue = DispatchQueue(label: "probe")
        try queue.sync {
            let session = try ISCSISession(url: lun.url, initiatorName: initiatorName, queue: queue, maxOutstanding: 1)
            defer { session.close() }
            let inquiry = try session.inquiry()
            guard inquiry.peripheralType & 0xE0 == 0 else {
                throw ProbeError(description: "\(lun.url): no logical unit at LUN \(lun.url.lun) (peripheral qualifier \(inquiry.peripheralType >> 5))")
            }
            let capacity: (blocks: UInt64, blockSize: UInt32)
            do {
                capacity = try session.readCapacity()
            } catch where inquiry.peripheralType & 0x1F != 0 {
                throw ProbeError(description: "\(lun.url): LUN \(lun.url.lun) is not a disk (peripheral type "
                                 + "0x\(String(inquiry.peripheralType & 0x1F, radix: 16)), \(inquiry.vendor) \(inquiry.product)); "
                                 + "on tgt, LUN 0 is the controller and disks start at 1")
            }
            let bytes = capacity.blocks * UInt64(capacity.blockSize)
            Log.info("guest \(lun.address) = \(lun.url): \(inquiry.vendor) \(inquiry.product), "
                     + "\(capacity.blocks) blocks of \(capacity.blockSize) bytes (\(bytes / 1_048_576) MiB)")
        }
    }

    /// One line on stderr and the exit status; never a stack trace.
    static func fail(_ message: String, status: Int32) -> Never {
        let line = "vhost-user-scsi: \(message)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        exit(status)
    }

    struct ProbeError: Error, CustomStringConvertible {
        var description: String
    }

    private static func installSignalHandlers(server: VhostUserServer, device: VirtioSCSIDevice) {
        let queue = DispatchQueue(label: "signals")
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { @Sendable in
                Log.info("signal \(sig): finishing in-flight I/O and shutting down")
                server.shutdown()
                device.closeSessions()
                Log.info("shut down cleanly")
                exit(0)
            }
            source.resume()
            signalSources.append(source)
        }
    }

    nonisolated(unsafe) private static var signalSources: [DispatchSourceSignal] = []
}
