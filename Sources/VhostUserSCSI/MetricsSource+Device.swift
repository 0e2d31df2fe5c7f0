import ServerMetrics

extension MetricsSource {
    /// The controller `name` served by `device`, as the exporter reads it (the published
    /// snapshots: the exporter never waits on a ring's queue).
    public init(controller name: String, device: VirtioSCSIDevice) {
        self.init(controller: name) { [device] in device.statistics() }
    }
}
