//! The product's limits as named constants (R-MSG-4, R-CONV-2, R-E2E-4).
//!
//! The server sees only ciphertext, so it enforces byte bounds derived from the character
//! limits here; the client enforces the character limits on plaintext before encrypting.

/// The most characters (Unicode scalar values) in one text message.
pub const MAX_TEXT_CHARS: usize = 100_000;

/// The most UTF-8 bytes a text of [`MAX_TEXT_CHARS`] characters can take (4 bytes each).
pub const MAX_TEXT_BYTES: usize = MAX_TEXT_CHARS * 4;

/// Room for everything in an encoded plaintext [`Content`](crate::Content) besides the text:
/// field keys, a reply target, mentions, an attachment pointer.
pub const CONTENT_OVERHEAD_MAX: usize = 4 * 1024;

/// The most bytes of one encoded plaintext content.
pub const MAX_CONTENT_BYTES: usize = MAX_TEXT_BYTES + CONTENT_OVERHEAD_MAX;

/// Room for the encryption layer around a content: nonce, tag, header, signature, padding.
pub const CIPHER_OVERHEAD_MAX: usize = 1024;

/// The most bytes of a message body as the server sees it (ciphertext). Derived from
/// [`MAX_TEXT_CHARS`]; a larger body is refused with `body_too_large`.
pub const MAX_BODY_BYTES: usize = MAX_CONTENT_BYTES + CIPHER_OVERHEAD_MAX;

/// The most bytes of the per-device part of a message (a wrapped message key, or a sender-key
/// distribution). The body is shared by all recipients; only this part is per device.
pub const MAX_DEVICE_HEADER_BYTES: usize = 2048;

/// The most members a group can have. A deployment may configure a lower limit, never a
/// higher one.
pub const MAX_GROUP_MEMBERS: usize = 100;

/// The most devices one user can have registered at once.
pub const MAX_DEVICES_PER_USER: usize = 10;

/// The most recipient devices of one message: every device of every member.
pub const MAX_RECIPIENT_DEVICES: usize = MAX_GROUP_MEMBERS * MAX_DEVICES_PER_USER;

/// Room for a frame's fields besides the body and the per-device headers.
const FRAME_OVERHEAD_MAX: usize = 4 * 1024;

/// Room per recipient entry in a frame besides its header: the device address and keys.
const RECIPIENT_OVERHEAD_MAX: usize = 32;

/// The largest encoded frame either side may send. A larger WebSocket message is refused with
/// `frame_too_large` before it is decoded.
pub const MAX_FRAME_BYTES: usize = MAX_BODY_BYTES
    + MAX_RECIPIENT_DEVICES * (MAX_DEVICE_HEADER_BYTES + RECIPIENT_OVERHEAD_MAX)
    + FRAME_OVERHEAD_MAX;

/// The most users one presence subscription frame can name.
pub const MAX_PRESENCE_SUBSCRIPTIONS: usize = 1000;

/// The most inbox entries the server sends in one backlog page before it waits for the
/// client's cursor ack.
pub const MAX_SYNC_PAGE: usize = 1000;

/// The most UTF-8 bytes of the human-readable message in an error frame.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 512;

const _: () = assert!(MAX_FRAME_BYTES < 4 * 1024 * 1024, "frames stay under 4 MiB");
