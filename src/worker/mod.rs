//! The supervised app-server worker: JSON-RPC transport over stdio, the supervisor that
//! spawns, handshakes and restarts it, and the built-in demo worker.
