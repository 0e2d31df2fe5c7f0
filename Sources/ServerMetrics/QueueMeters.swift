/// What a request queue counts on its data path: its `QueueCounters` and the latency
/// timestamps of the commands in flight, in memory allocated once and reached through
/// pointers.
///
/// Why pointers: Swift checks exclusive access to a class's stored `var`s at run time (a
/// thread-local lookup, several nanoseconds per access); access through a pointer held in a
/// `let` is not checked, so counting a request costs a few adds. Confined to one serial queue
/// (the request queue's), like its owner; `counters` is copied out there for publishing.
///
/// Timestamps: one clock read per batch of submissions (a kick: its commands leave together,
/// at the flush that ends it) and one per batch of completions (they arrived together in one
/// read of the connection).
public final class QueueMeters {
    @usableFromInline struct State {
        @usableFromInline var counters = QueueCounters()
        /// 0 until read in the current batch.
        @usableFromInline var submitClock: UInt64 = 0
        @usableFromInline var completionClock: UInt64 = 0
        @usableFromInline init() {}
    }

    @usableFromInline struct Command {
        @usableFromInline var submittedAt: UInt64
        @usableFromInline var dataOutLength: Int
        @usableFromInline init(submittedAt: UInt64, dataOutLength: Int) {
            self.submittedAt = submittedAt
            self.dataOutLength = dataOutLength
        }
    }

    @usableFromInline let state: UnsafeMutablePointer<State>
    /// Indexed by token, `0..<tokens`.
    @usableFromInline let commands: UnsafeMutablePointer<Command>
    public let tokens: Int

    public init(tokens: Int) {
        self.tokens = tokens
        state = .allocate(capacity: 1)
        state.initialize(to: State())
        commands = .allocate(capacity: tokens)
        commands.initialize(repeating: Command(submittedAt: 0, dataOutLength: 0), count: tokens)
    }

    deinit {
        state.deinitialize(count: 1)
        state.deallocate()
        commands.deinitialize(count: tokens)
        commands.deallocate()
    }

    /// A copy of the counters, for publishing.
    public var counters: QueueCounters { state.pointee.counters }

    /// A new batch of submissions begins (the next `submitting` reads the clock).
    @inlinable @inline(__always)
    public func submissionBatchStarted() {
        state.pointee.submitClock = 0
    }

    /// The command with `token` goes to the target now.
    @inlinable @inline(__always)
    public func submitting(token: Int, dataOutLength: Int) {
        precondition(token >= 0 && token < tokens)
        if state.pointee.submitClock == 0 { state.pointee.submitClock = MonotonicClock.nanoseconds() }
        commands[token] = Command(submittedAt: state.pointee.submitClock, dataOutLength: dataOutLength)
    }

    /// The command with `token` completed: records its latency and returns its data-out
    /// length. `batched`: more completions of the same batch may follow, until
    /// `completionBatchEnded`.
    @inlinable @inline(__always)
    public func completed(token: Int, batched: Bool) -> Int {
        precondition(token >= 0 && token < tokens)
        if state.pointee.completionClock == 0 { state.pointee.completionClock = MonotonicClock.nanoseconds() }
        let now = state.pointee.completionClock
        let command = commands[token]
        state.pointee.counters.recordLatency(nanoseconds: now > command.submittedAt ? now - command.submittedAt : 0)
        if !batched { state.pointee.completionClock = 0 }
        return command.dataOutLength
    }

    @inlinable @inline(__always)
    public func completionBatchEnded() {
        state.pointee.completionClock = 0
    }

    /// A request answered with a response header (`QueueCounters.recordAnswer`).
    @inlinable @inline(__always)
    public func answered(opcode: UInt8, responseOK: Bool, status: UInt8, bytesRead: Int, bytesWritten: Int) {
        state.pointee.counters.recordAnswer(opcode: opcode, responseOK: responseOK, status: status,
                                            bytesRead: bytesRead, bytesWritten: bytesWritten)
    }

    /// A request refused without a response header.
    @inlinable @inline(__always)
    public func refused() {
        state.pointee.counters.recordRefused()
    }
}
