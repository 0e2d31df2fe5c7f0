import VhostUserProtocol

/// Fuzzes the vhost-user message decoding (no syscalls): header validation and every payload
/// decoder, with any payload size and any number of file descriptors.
///
/// Input: byte 0 is the number of file descriptors that came with the message (n % 10, so
/// also more than the protocol's 8), bytes 1-12 the header, the rest the payload. The bytes
/// after byte 0 are also read as a stream of messages the way `MessageChannel` frames them.
///
/// Invariants: a header passes validation exactly when its version is 1 and its size at
/// most 4096; what a decoder accepts is well-formed (region counts, fd count, no overlap, no
/// wrap-around, exact sizes) and encodes back to the same bytes.
public func fuzzMessageDecoder(_ data: [UInt8]) {
    var input = FuzzReader(data)
    let fdCount = Int(input.u8() % 10)
    let headerBytes = input.bytes(VhostUserHeader.byteCount)
    let payload = input.rest()
    if headerBytes.count == VhostUserHeader.byteCount {
        checkHeader(headerBytes)
    }
    decodeEveryPayload(payload, fdCount: fdCount)
    framing(Array(data.dropFirst()), fdCount: fdCount)
}

private func checkHeader(_ bytes: [UInt8]) {
    let header = bytes.withUnsafeBytes { VhostUserHeader($0) }
    var encoded: [UInt8] = []
    header.encode(into: &encoded)
    precondition(encoded == bytes, "header does not encode back to its bytes")
    let versionOK = header.flags.rawValue & VhostUserHeaderFlags.versionMask == 1
    let sizeOK = header.size <= UInt32(VhostUserHeader.maxPayload)
    switch header.validationError {
    case nil: precondition(versionOK && sizeOK, "header accepted with flags \(header.flags.rawValue) size \(header.size)")
    case .badVersion?: precondition(!versionOK)
    case .payloadTooLarge?: precondition(versionOK && !sizeOK)
    case let other?: preconditionFailure("header validation gave \(other)")
    }
    _ = VhostUserRequest(rawValue: header.request)
}

private func decodeEveryPayload(_ payload: [UInt8], fdCount: Int) {
    // SET_MEM_TABLE
    do {
        let table = try MemoryTable(decoding: payload, fdCount: fdCount)
        precondition((1...MemoryTable.maxRegions).contains(table.regions.count), "\(table.regions.count) regions accepted")
        precondition(table.regions.count == fdCount, "\(table.regions.count) regions with \(fdCount) fds accepted")
        precondition(payload.count >= MemoryTable.payloadSize(regionCount: table.regions.count)
                     && payload.count <= MemoryTable.payloadSize(regionCount: MemoryTable.maxRegions))
        for (i, region) in table.regions.enumerated() {
            checkRegion(region)
            for other in table.regions[..<i] {
                precondition(!region.overlaps(other) && !other.overlaps(region), "overlapping regions accepted")
            }
        }
        let encoded = table.encoded()
        precondition(Array(payload.prefix(encoded.count)).enumerated().allSatisfy { i, b in i == 4 || i == 5 || i == 6 || i == 7 || b == encoded[i] },
                     "memory table does not encode back to its bytes")
        let again = try MemoryTable(decoding: encoded, fdCount: fdCount)
        precondition(again == table, "memory table round trip differs")
    } catch {
        _ = error.description
    }
    // ADD_MEM_REG / REM_MEM_REG
    for request in ["ADD_MEM_REG", "REM_MEM_REG"] {
        do {
            let single = try SingleMemoryRegion(decoding: payload, request: request)
            precondition(payload.count == SingleMemoryRegion.byteCount)
            checkRegion(single.region)
            precondition(Array(single.encoded()[8...]) == Array(payload[8...]), "single region does not encode back")
            let again = try SingleMemoryRegion(decoding: single.encoded(), request: request)
            precondition(again == single, "single region round trip differs")
        } catch {
            _ = error.description
        }
    }
    // SET_VRING_ADDR
    if payload.count == VringAddress.byteCount {
        let address = VringAddress(decoding: payload)
        precondition(address.encoded() == payload, "vring address does not encode back")
        if address.alignmentError == nil {
            precondition(address.descriptorTable % 16 == 0 && address.availRing % 2 == 0 && address.usedRing % 4 == 0)
            precondition(address.flags & ~VringAddress.flagLog == 0)
        }
    }
    // SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE
    if payload.count == VringState.byteCount {
        let state = VringState(decoding: payload)
        precondition(state.encoded() == payload, "vring state does not encode back")
        var reader = PayloadReader(payload)
        let value: UInt64 = reader.read()
        precondition(reader.remaining == 0)
        // SET_VRING_KICK/CALL/ERR: ring index in bits 0-7, bit 8 "no fd", the rest reserved.
        _ = (value & 0xFF, value & 0x100 != 0, value & ~UInt64(0x1FF) == 0)
    }
}

private func checkRegion(_ region: MemoryRegionDescription) {
    precondition(region.validationError == nil)
    precondition(region.size > 0)
    precondition(!region.guestPhysicalAddress.addingReportingOverflow(region.size).overflow)
    precondition(!region.userAddress.addingReportingOverflow(region.size).overflow)
    precondition(!region.mmapOffset.addingReportingOverflow(region.size).overflow)
    precondition(region.mmapOffset <= UInt64(Int64.max))
    precondition(region.overlaps(region))
}

/// Reads `stream` as consecutive messages (header, then `size` payload bytes), as the
/// server's channel does, stopping at the first header it refuses or at the end.
private func framing(_ stream: [UInt8], fdCount: Int) {
    var offset = 0
    var messages = 0
    while stream.count - offset >= VhostUserHeader.byteCount && messages < 64 {
        let header = stream[offset..<(offset + VhostUserHeader.byteCount)].withUnsafeBytes { VhostUserHeader($0) }
        if header.validationError != nil { return }
        offset += VhostUserHeader.byteCount
        let size = Int(header.size)
        guard stream.count - offset >= size else { return }
        decodeEveryPayload(Array(stream[offset..<(offset + size)]), fdCount: messages == 0 ? fdCount : 0)
        offset += size
        messages += 1
    }
}
