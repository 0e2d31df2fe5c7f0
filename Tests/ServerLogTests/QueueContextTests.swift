import Dispatch
import ServerLog
import Testing

/// Lines logged on a controller's queues carry its name without the call site passing it.
@Suite struct QueueContextTests {
    @Test func aQueuesContextIsMergedAndTheEventWins() {
        let queue = DispatchQueue(label: "test.context")
        queue.setSpecific(key: Log.queueContext, value: ["controller": "vm1", "lun": "0:0"])
        let merged = queue.sync { Log.withQueueContext(["lun": "0:7"]) }
        #expect(merged == ["controller": "vm1", "lun": "0:7"])
        let onTarget = DispatchQueue(label: "test.child", target: queue).sync { Log.withQueueContext(nil) }
        #expect(onTarget?["controller"] == "vm1", "a queue targeting a tagged one inherits its tag")
        #expect(Log.withQueueContext(["a": "b"]) == ["a": "b"], "untagged: unchanged")
    }
}
