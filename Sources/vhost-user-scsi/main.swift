// Kept tiny on purpose: closures written here would be main-actor isolated and trap when a
// Dispatch source fires them on another queue (see Server.swift).
Server.main()
