//! Safety numbers: a numeric fingerprint of two users' identity keys, the same on both sides.
//!
//! As Signal's: for each user, `h = SHA-512(version || keys || user id)` (the numeric user ID
//! as a u64, big-endian: 8 bytes), then 5,200 times
//! `h = SHA-512(h || keys)`; the first 30 bytes make six 5-digit groups (each 5-byte chunk as a
//! big-endian integer mod 100,000). The two 30-digit halves are ordered (smaller first) and
//! joined, so both users compute the same 60 digits. Users here have several devices, each
//! with its own identity, so `keys` is the sorted, de-duplicated concatenation of all the
//! user's device identities: adding or changing a device changes the number.

use std::collections::BTreeSet;
use std::fmt;

use sha2::{Digest, Sha512};

use crate::IdentityPublic;

const ITERATIONS: usize = 5_200;
const VERSION: [u8; 2] = [0, 1];

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

/// The safety number of two users, each given by their numeric user ID and the identities of
/// all their devices. Symmetric: both users get the same number.
pub fn safety_number(
    our_user: u64,
    our_devices: &[IdentityPublic],
    their_user: u64,
    their_devices: &[IdentityPublic],
) -> SafetyNumber {
    let a = fingerprint(&our_user.to_be_bytes(), our_devices);
    let b = fingerprint(&their_user.to_be_bytes(), their_devices);
    SafetyNumber(if a <= b { a + &b } else { b + &a })
}

fn fingerprint(user: &[u8], devices: &[IdentityPublic]) -> String {
    let keys: Vec<u8> = devices
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .flat_map(|d| d.to_bytes())
        .collect();
    let mut h = Sha512::new();
    h.update(VERSION);
    h.update(&keys);
    h.update(user);
    let mut hash = h.finalize();
    for _ in 0..ITERATIONS {
        let mut h = Sha512::new();
        h.update(hash);
        h.update(&keys);
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
