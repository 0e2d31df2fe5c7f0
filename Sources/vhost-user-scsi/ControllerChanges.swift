/// What a configuration reload does to the set of controllers (Docs/CONFIGURATION.md,
/// "Reloading"), by name: a controller only the file has is added; one only the server has is
/// removed (the reload keeps one whose VM is connected); one in both keeps serving, its LUNs
/// compared by LUNChanges. Pure: the reload applies it through ControllerRegistry.Changes.
struct ControllerChanges {
    /// Names served and no longer listed, in the order served. Removed before the additions,
    /// so that a controller renamed in the file can take over its socket.
    var removals: [String]
    /// Controllers listed and not served, in the file's order.
    var additions: [ControllerConfiguration]
    /// Controllers served and listed: as served and as listed, in the order served.
    var kept: [(served: ControllerConfiguration, listed: ControllerConfiguration)]

    init(current: [ControllerConfiguration], wanted: [ControllerConfiguration]) {
        removals = current.filter { served in !wanted.contains { $0.name == served.name } }.map(\.name)
        additions = wanted.filter { listed in !current.contains { $0.name == listed.name } }
        kept = current.compactMap { served in
            wanted.first { $0.name == served.name }.map { (served: served, listed: $0) }
        }
    }
}
