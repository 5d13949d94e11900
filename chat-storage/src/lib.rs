//! chat-storage: storage backends for the chat crate family. Being written.
