//! chat-server: the WebSocket chat node and its HTTP API.
//!
//! **Not built yet.** This crate is reserved in the workspace so the layout is stable; the
//! gateway, HTTP routes and binary are tracked as open work (see `docs/ARCHITECTURE.md`). It
//! exports nothing, so nothing can depend on behaviour that does not exist.
