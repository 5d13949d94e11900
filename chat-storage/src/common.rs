//! Rules and conversions shared by every backend, so the backends differ only in how they
//! make each step atomic, never in what they check.

use std::collections::BTreeSet;

use chat_core::limits::MAX_GROUP_MEMBERS;
use chat_core::{DeviceAddress, DeviceMismatch, NewMessage, StoreError, StoreResult};

/// A backend failure described by a message: data read back that breaks an invariant, or a
/// failure that has to be reported to several callers at once (a failed group commit).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BackendFailure(pub(crate) String);

/// Shorthand for a [`StoreError::Backend`] with a message.
pub(crate) fn failure(message: impl Into<String>) -> StoreError {
    StoreError::backend(BackendFailure(message.into()))
}

/// The member limit in force: the caller's, never above the build's.
pub(crate) fn effective_limit(limit: usize) -> usize {
    limit.min(MAX_GROUP_MEMBERS)
}

/// Refuses a message that names a recipient device twice.
pub(crate) fn check_distinct_recipients(message: &NewMessage) -> StoreResult<()> {
    let mut seen = BTreeSet::new();
    if message.recipients.iter().all(|r| seen.insert(r.device)) {
        Ok(())
    } else {
        Err(StoreError::Invalid("duplicate recipient device"))
    }
}

/// Checks that the recipients are exactly `current` (every current device of every member)
/// minus the sending device.
pub(crate) fn check_coverage(current: &[DeviceAddress], message: &NewMessage) -> StoreResult<()> {
    let expected: Vec<DeviceAddress> = current
        .iter()
        .copied()
        .filter(|d| *d != message.sender)
        .collect();
    let given: Vec<DeviceAddress> = message.recipients.iter().map(|r| r.device).collect();
    let mismatch = DeviceMismatch::between(&expected, &given);
    if mismatch.is_empty() {
        Ok(())
    } else {
        Err(StoreError::StaleDevices(mismatch))
    }
}

/// An ID or count for a signed 64-bit column. Every ID is at most `MAX_ID` = `i64::MAX`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A page size for a `LIMIT` clause.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// An ID read back from a column, validated.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn from_sql<T: TryFrom<u64>>(value: i64, what: &str) -> StoreResult<T> {
    u64::try_from(value)
        .ok()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| failure(format!("stored {what} {value} is out of range")))
}

/// A fixed-size byte string read back from a column, validated.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn array_from_sql<const N: usize>(value: &[u8], what: &str) -> StoreResult<[u8; N]> {
    <[u8; N]>::try_from(value)
        .map_err(|_| failure(format!("stored {what} has {} bytes, not {N}", value.len())))
}

/// A `u32` key ID read back from a column, validated.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn u32_from_sql(value: i64, what: &str) -> StoreResult<u32> {
    u32::try_from(value).map_err(|_| failure(format!("stored {what} {value} is out of range")))
}
