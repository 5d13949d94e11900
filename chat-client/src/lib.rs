//! chat-client: the SDK that applications embed.
//!
//! **Not built yet.** This crate is reserved in the workspace so the layout is stable; the
//! client is tracked as open work (see `docs/ARCHITECTURE.md`). It exports nothing, so nothing
//! can depend on behaviour that does not exist.
