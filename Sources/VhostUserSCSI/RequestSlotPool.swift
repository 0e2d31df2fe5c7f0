/// The request slots of one queue, indexed by token, and the stack of free ones: storage
/// allocated once, for the most slots a queue can have, reached through pointers held in
/// `let`s.
///
/// Why not two arrays: a class's stored array `var` is checked for exclusive access at run
/// time whenever the compiler cannot prove no other access overlaps (an append that may grow,
/// a loop calling into a session), which cost three checks per request (~75 instructions
/// each) plus uniqueness checks. Access through these pointers is not checked; that is safe
/// because the pool is confined to its worker's queue and no method here calls out while it
/// touches the storage.
final class RequestSlotPool {
    let capacity: Int
    /// Initialized for `0..<counts.pointee.slots`; a slot, once made, lives as long as the pool.
    private let storage: UnsafeMutablePointer<RequestSlot>
    /// Tokens of free slots; the last is taken first.
    private let freeTokens: UnsafeMutablePointer<Int>
    private let counts: UnsafeMutablePointer<(slots: Int, free: Int)>

    init(capacity: Int) {
        self.capacity = capacity
        storage = .allocate(capacity: capacity)
        freeTokens = .allocate(capacity: capacity)
        counts = .allocate(capacity: 1)
        counts.initialize(to: (0, 0))
    }

    deinit {
        storage.deinitialize(count: counts.pointee.slots)
        storage.deallocate()
        freeTokens.deallocate()
        counts.deallocate()
    }

    /// Every slot made so far, in token order.
    var all: UnsafeBufferPointer<RequestSlot> { UnsafeBufferPointer(start: storage, count: counts.pointee.slots) }

    subscript(token: Int) -> RequestSlot {
        precondition(token >= 0 && token < counts.pointee.slots, "token \(token) names no slot")
        return storage[token]
    }

    /// Makes slots up to `count` (they stay when a later ring is smaller) and marks free the
    /// slots below `count` that have no command outstanding; the lowest token is taken first.
    func prepare(count: Int) {
        precondition(count <= capacity)
        while counts.pointee.slots < count {
            (storage + counts.pointee.slots).initialize(to: RequestSlot(token: counts.pointee.slots))
            counts.pointee.slots += 1
        }
        counts.pointee.free = 0
        // Commands of an abandoned ring may still be outstanding: their slots stay taken.
        for token in (0..<count).reversed() where storage[token].backend < 0 {
            freeTokens[counts.pointee.free] = token
            counts.pointee.free += 1
        }
    }

    /// The token of the free slot `takeFree` would take, or nil when none is free.
    var nextFree: Int? {
        counts.pointee.free > 0 ? freeTokens[counts.pointee.free - 1] : nil
    }

    /// Takes the slot `nextFree` names.
    func takeFree() {
        precondition(counts.pointee.free > 0)
        counts.pointee.free -= 1
    }

    /// Returns slot `token` to the free stack.
    func release(_ token: Int) {
        precondition(counts.pointee.free < capacity)
        freeTokens[counts.pointee.free] = token
        counts.pointee.free += 1
    }
}
