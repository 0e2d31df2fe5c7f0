import VirtioSCSI

/// What a configuration reload does to one controller's LUNs (Docs/CONFIGURATION.md,
/// "Reloading"): the difference between the LUNs it serves and the LUNs the file lists, by
/// guest address. An address only the file has is added; one only the server has is removed;
/// one whose URL changed is removed and added again (a different disk at the same address).
/// Pure: the reload applies the result with `Controller.removeLUN` / `addLUN`.
struct LUNChanges: Equatable {
    /// Addresses to take away first (so that a changed URL's address is free again), in
    /// address order.
    var removals: [VirtioSCSIAddress]
    /// LUNs to add after the removals, in address order.
    var additions: [ControllerConfiguration.LUN]
    /// LUNs served already at the same address with the same URL.
    var unchanged: Int

    init(current: [ControllerConfiguration.LUN], wanted: [ControllerConfiguration.LUN]) {
        let served = Dictionary(current.map { ($0.address, $0.url) }) { first, _ in first }
        let listed = Dictionary(wanted.map { ($0.address, $0.url) }) { first, _ in first }
        removals = served.keys.filter { listed[$0] != served[$0] }.sorted(by: Self.addressOrder)
        additions = listed.keys.filter { listed[$0] != served[$0] }.sorted(by: Self.addressOrder)
            .map { ControllerConfiguration.LUN(address: $0, url: listed[$0]!) }
        unchanged = listed.keys.filter { listed[$0] == served[$0] }.count
    }

    var isEmpty: Bool { removals.isEmpty && additions.isEmpty }

    static func addressOrder(_ a: VirtioSCSIAddress, _ b: VirtioSCSIAddress) -> Bool {
        (a.target, a.lun) < (b.target, b.lun)
    }
}
