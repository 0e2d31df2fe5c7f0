// The libFuzzer entry point for one fuzz target, chosen at compile time with
// -D FUZZ_<TARGET> (see run.sh). Built with `swiftc -parse-as-library -sanitize=fuzzer,address`:
// libFuzzer supplies `main`, so this file must not have one.
import FuzzTargets

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
#if FUZZ_MESSAGE_DECODER
    fuzzMessageDecoder(bytes)
#elseif FUZZ_DESCRIPTOR_CHAIN
    fuzzDescriptorChain(bytes)
#elseif FUZZ_SCSI_REQUEST
    fuzzSCSIRequest(bytes)
#elseif FUZZ_CONTROL_QUEUE
    fuzzControlQueue(bytes)
#elseif FUZZ_FRONTEND_CONNECTION
    fuzzFrontendConnection(bytes)
#else
#error("compile with -D FUZZ_<TARGET>")
#endif
    return 0
}
