// SystemError, closeOwned and UnixSocket moved to the small UnixSockets module so that the
// control client can use them without the backend. They are still part of this module's API
// (MessageChannel throws SystemError; the driver connects with UnixSocket), so they are
// re-exported: this module's files and its importers see them as before.
@_exported import UnixSockets
