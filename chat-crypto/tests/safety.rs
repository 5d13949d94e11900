//! Safety numbers.

mod common;

use chat_crypto::{IdentityKeys, safety_number};
use common::rng;

#[test]
fn symmetric_stable_and_sensitive() {
    let mut rng = rng(1);
    let a: Vec<_> = (0..2)
        .map(|_| IdentityKeys::generate(&mut rng).public())
        .collect();
    let b = vec![IdentityKeys::generate(&mut rng).public()];
    let ab = safety_number(1, &a, 2, &b);
    let ba = safety_number(2, &b, 1, &[a[1], a[0]]);
    assert_eq!(ab, ba);
    assert_eq!(ab.digits().len(), 60);
    assert!(ab.digits().bytes().all(|c| c.is_ascii_digit()));
    assert_eq!(ab.to_string().split(' ').count(), 12);
    // A changed or added device key changes the number.
    let c = IdentityKeys::generate(&mut rng).public();
    assert_ne!(safety_number(1, &a, 2, &[c]), ab);
    assert_ne!(safety_number(1, &a, 2, &[b[0], c]), ab);
    assert_ne!(safety_number(1, &a[..1], 2, &b), ab);
}
