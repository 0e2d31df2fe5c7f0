// Kept tiny: the client is in Client.swift.
Client.main()
