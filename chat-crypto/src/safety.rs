//! Safety numbers: a numeric fingerprint of two users' account identities, the same on both
//! sides.
//!
//! As Signal's, over account keys (version 2): for each user,
//! `h = SHA-512(00 02 || account key || user id)` (the account key's 32 bytes; the numeric
//! user ID as a u64, big-endian: 8 bytes), then 5,200 times `h = SHA-512(h || account key)`;
//! the first 30 bytes make six 5-digit groups (each 5-byte chunk as a big-endian integer mod
//! 100,000). The two 30-digit halves are ordered (smaller first) and joined, so both users
//! compute the same 60 digits.
//!
//! The number depends only on the account keys the client trusts, so it stays the same when
//! devices are linked or removed (each device is signed by the account key), it needs no
//! server call, and it changes exactly when an account identity changes.

use std::fmt;

use sha2::{Digest, Sha512};

use chat_core::UserId;

use crate::AccountKey;

const ITERATIONS: usize = 5_200;
/// Version 1 hashed every device identity; version 2 hashes the account key.
const VERSION: [u8; 2] = [0, 2];

/// 60 decimal digits, shown as 12 groups of 5.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// The 60 digits without spaces.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups: Vec<&str> = (0..12)
            .filter_map(|i| self.0.get(i * 5..i * 5 + 5))
            .collect();
        f.write_str(&groups.join(" "))
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({self})")
    }
}

/// The safety number of two users, each given by their user ID and their trusted account
/// key. Symmetric: both users get the same number.
pub fn safety_number(
    our_user: UserId,
    ours: &AccountKey,
    their_user: UserId,
    theirs: &AccountKey,
) -> SafetyNumber {
    let a = fingerprint(our_user, ours);
    let b = fingerprint(their_user, theirs);
    SafetyNumber(if a <= b { a + &b } else { b + &a })
}

fn fingerprint(user: UserId, account: &AccountKey) -> String {
    let key = account.to_bytes();
    let mut h = Sha512::new();
    h.update(VERSION);
    h.update(key);
    h.update(user.get().to_be_bytes());
    let mut hash = h.finalize();
    for _ in 0..ITERATIONS {
        let mut h = Sha512::new();
        h.update(hash);
        h.update(key);
        hash = h.finalize();
    }
    hash.chunks_exact(5)
        .take(6)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}
