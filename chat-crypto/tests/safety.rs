//! Safety numbers.

mod common;

use chat_core::UserId;
use chat_crypto::{AccountIdentity, safety_number};
use common::rng;

#[test]
fn symmetric_stable_and_sensitive() {
    let mut rng = rng(1);
    let user = |n| UserId::new(n).unwrap();
    let a = AccountIdentity::generate(&mut rng).public();
    let b = AccountIdentity::generate(&mut rng).public();
    let ab = safety_number(user(1), &a, user(2), &b);
    assert_eq!(ab, safety_number(user(2), &b, user(1), &a));
    assert_eq!(ab.digits().len(), 60);
    assert!(ab.digits().bytes().all(|c| c.is_ascii_digit()));
    assert_eq!(ab.to_string().split(' ').count(), 12);
    // Another account key, or the same keys under other user IDs, change the number.
    let c = AccountIdentity::generate(&mut rng).public();
    assert_ne!(safety_number(user(1), &a, user(2), &c), ab);
    assert_ne!(safety_number(user(1), &a, user(3), &b), ab);
}
