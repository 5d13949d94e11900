// Tests index fixed test data; a panic here is a test failure.
#![allow(clippy::indexing_slicing)]

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::{Account, IdentityKeys};

fn u(n: u64) -> UserId {
    UserId::new(n).unwrap()
}

fn d(n: u64) -> DeviceId {
    DeviceId::new(n).unwrap()
}

fn identity(rng: &mut StdRng) -> IdentityPublic {
    IdentityKeys::generate(rng).public()
}

#[test]
fn a_signed_list_round_trips_and_any_changed_byte_is_refused() {
    let mut rng = StdRng::seed_from_u64(1);
    let account = AccountIdentity::generate(&mut rng);
    let devices = [(d(9), identity(&mut rng)), (d(3), identity(&mut rng))];
    let list = account.sign_device_list(u(5), 2, &devices).unwrap();
    assert_eq!(list.devices()[0].0, d(3), "sorted by device ID");
    assert_eq!(list.identity_of(d(9)), Some(devices[0].1));
    assert_eq!(list.identity_of(d(4)), None);
    let bytes = list.encode();
    assert_eq!(bytes.len(), 2 + 8 + 8 + 32 + 4 + 2 * 72 + 64);
    assert_eq!(SignedDeviceList::decode(&bytes).unwrap(), list);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        assert!(SignedDeviceList::decode(&bad).is_err(), "byte {i} flipped");
    }
    assert!(SignedDeviceList::decode(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn lists_that_name_a_device_twice_or_too_many_are_refused() {
    let mut rng = StdRng::seed_from_u64(2);
    let account = AccountIdentity::generate(&mut rng);
    let id = identity(&mut rng);
    assert!(
        account
            .sign_device_list(u(1), 1, &[(d(1), id), (d(1), id)])
            .is_err()
    );
    let many: Vec<_> = (1..=MAX_LISTED_DEVICES as u64 + 1)
        .map(|n| (d(n), id))
        .collect();
    assert_eq!(
        account.sign_device_list(u(1), 1, &many).unwrap_err(),
        Error::TooLarge("device list")
    );
    assert!(
        account
            .sign_device_list(u(1), 1, &many[..MAX_LISTED_DEVICES])
            .is_ok()
    );
}

#[test]
fn updates_report_devices_and_refuse_rollback_and_equivocation() {
    let mut rng = StdRng::seed_from_u64(3);
    let account = AccountIdentity::generate(&mut rng);
    let (a, b, b2, c) = (
        identity(&mut rng),
        identity(&mut rng),
        identity(&mut rng),
        identity(&mut rng),
    );
    let v1 = account
        .sign_device_list(u(1), 1, &[(d(1), a), (d(2), b)])
        .unwrap();
    let v2 = account
        .sign_device_list(u(1), 2, &[(d(2), b2), (d(3), c)])
        .unwrap();
    assert_eq!(
        v2.update_from(&v1).unwrap(),
        DeviceListUpdate::Devices {
            added: vec![d(3)],
            removed: vec![d(1)],
            changed: vec![d(2)],
        }
    );
    assert_eq!(v1.update_from(&v2), Err(Error::DeviceListRollback));
    let other_v2 = account.sign_device_list(u(1), 2, &[(d(2), b)]).unwrap();
    assert_eq!(other_v2.update_from(&v2), Err(Error::DeviceListRollback));
    assert!(matches!(
        v2.update_from(&v2),
        Ok(DeviceListUpdate::Devices { added, removed, changed })
            if added.is_empty() && removed.is_empty() && changed.is_empty()
    ));
    let recovered = AccountIdentity::generate(&mut rng)
        .sign_device_list(u(1), 3, &[(d(4), c)])
        .unwrap();
    assert_eq!(
        recovered.update_from(&v2).unwrap(),
        DeviceListUpdate::AccountChanged
    );
    let someone_else = account.sign_device_list(u(2), 3, &[(d(4), c)]).unwrap();
    assert!(someone_else.update_from(&v2).is_err());
}

proptest! {
    /// A holder that applies every list the server shows it, in any order, keeps exactly the
    /// highest version it has seen: a lower one is always refused.
    #[test]
    fn the_trusted_version_never_goes_down(versions in prop::collection::vec(0u64..20, 1..30)) {
        let account = AccountIdentity::from_secret(&[7; 32]);
        let id = IdentityPublic { signing: [1; 32], dh: [2; 32] };
        let lists: Vec<_> = versions
            .iter()
            .map(|v| account.sign_device_list(u(1), *v, &[(d(1 + v % 3), id)]).unwrap())
            .collect();
        let mut trusted = lists[0].clone();
        for list in &lists[1..] {
            match list.update_from(&trusted) {
                Ok(_) => {
                    prop_assert!(list.version() >= trusted.version());
                    trusted = list.clone();
                }
                Err(e) => {
                    prop_assert_eq!(e, Error::DeviceListRollback);
                    prop_assert!(list.version() <= trusted.version());
                }
            }
        }
        prop_assert_eq!(trusted.version(), *versions.iter().max().unwrap());
    }

    /// Decoding arbitrary bytes never panics, and anything that decodes re-encodes to itself.
    #[test]
    fn decoding_garbage_is_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(list) = SignedDeviceList::decode(&bytes) {
            prop_assert_eq!(&list.encode(), &bytes);
        }
        let _ = LinkCode::from_bytes(&bytes);
    }
}

fn linked_setup(rng: &mut StdRng) -> (AccountIdentity, LinkCode, SignedDeviceList) {
    let account = AccountIdentity::generate(rng);
    let old = identity(rng);
    let new = identity(rng);
    let code = LinkCode::new(rng, d(8), new);
    let list = account
        .sign_device_list(u(4), 2, &[(d(1), old), (d(8), new)])
        .unwrap();
    (account, code, list)
}

#[test]
fn a_link_code_carries_the_account_to_the_new_device() {
    let mut rng = StdRng::seed_from_u64(4);
    let (account, code, list) = linked_setup(&mut rng);
    let bytes = code.to_bytes();
    assert_eq!(bytes.len(), LINK_CODE_BYTES);
    let shown = LinkCode::from_bytes(&bytes).unwrap();
    assert_eq!((shown.device(), shown.identity()), (d(8), code.identity()));

    let sealed = shown.seal(&mut rng, &account, &list).unwrap();
    let (received, got) = code.open(u(4), &sealed).unwrap();
    assert_eq!(received.public(), account.public());
    assert_eq!(got, list);
    // Another user, or a changed byte anywhere, is refused.
    assert!(code.open(u(5), &sealed).is_err());
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x80;
        assert!(code.open(u(4), &bad).is_err(), "byte {i}");
    }
    let secret = hex::encode(&bytes[bytes.len() - 32..]);
    assert!(
        !format!("{code:?}").contains(&secret),
        "the secret stays out of Debug"
    );
}

#[test]
fn the_server_cannot_link_a_device_of_its_own_or_hand_over_its_own_account() {
    let mut rng = StdRng::seed_from_u64(5);
    let (account, code, list) = linked_setup(&mut rng);
    // A sealer who lacks the code's secret (the server): its own code for the same device.
    let forged = LinkCode::new(&mut rng, d(8), code.identity());
    let sealed = forged.seal(&mut rng, &account, &list).unwrap();
    assert_eq!(
        code.open(u(4), &sealed).unwrap_err(),
        Error::DecryptionFailed
    );
    // A linked device refuses to seal a list that does not add the code's device.
    let without = account
        .sign_device_list(u(4), 2, &[(d(1), code.identity())])
        .unwrap();
    assert!(code.seal(&mut rng, &account, &without).is_err());
    let other_account = AccountIdentity::generate(&mut rng);
    assert!(code.seal(&mut rng, &other_account, &list).is_err());
}

#[test]
fn the_account_identity_survives_a_pickle() {
    let mut rng = StdRng::seed_from_u64(6);
    let mut device = Account::new(&mut rng);
    let restored = Account::from_pickle(&device.pickle()).unwrap();
    assert!(restored.account_identity().is_none());
    let account = AccountIdentity::generate(&mut rng);
    device.set_account_identity(AccountIdentity::from_secret(&account.secret()));
    let restored = Account::from_pickle(&device.pickle()).unwrap();
    assert_eq!(
        restored.account_identity().map(AccountIdentity::public),
        Some(account.public())
    );
    assert!(!format!("{restored:?}").contains(&hex::encode(*account.secret())));
}
