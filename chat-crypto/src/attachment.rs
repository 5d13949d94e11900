//! Attachments (placeholder, filled in below).
