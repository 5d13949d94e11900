//! All sessions with one remote device, and the rule that makes simultaneous starts converge.
//!
//! Two devices can start sessions with each other at the same time (each fetched the other's
//! bundle), so a device may hold several sessions with one peer. The rule, as in Signal: send
//! on the session that most recently decrypted a message (or was most recently started);
//! accept on any of them. After one message in each direction that does not cross, both ends
//! send on the same session.
//!
//! One exception guards against replays: a session started by a first message that used no
//! one-time prekey (which an adversary could have replayed) and that the peer has not yet
//! confirmed never moves ahead of a confirmed session (one the peer answered on); see
//! [`Session::is_confirmed`].

use std::fmt;

use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::envelope::Decrypted;
use crate::identity::{Account, len_u32};
use crate::session::{DeviceAddress, Session, is_prekey_message, prekey_identity};
use crate::{Error, IdentityPublic};

/// Sessions kept per remote device (the active one and three older ones).
pub const MAX_SESSIONS_PER_DEVICE: usize = 4;

const TAG: u8 = 0xA6;
const VERSION: u8 = 1;

/// The sessions with one remote device, the active one first.
#[derive(Default)]
pub struct DeviceSessions {
    sessions: Vec<Session>,
}

impl DeviceSessions {
    /// No sessions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The session to encrypt with, if any (else fetch a bundle and [`DeviceSessions::add`]).
    pub fn active(&mut self) -> Option<&mut Session> {
        self.sessions.first_mut()
    }

    /// Makes a new session (from [`Session::initiate`]) the active one. Refused with
    /// [`Error::SessionMismatch`] if it is with another device than the held sessions, and with
    /// [`Error::IdentityChanged`] if the held sessions were made with another identity of
    /// that device: an identity change is never accepted silently.
    pub fn add(&mut self, session: Session) -> Result<(), Error> {
        let other_device = |s: &Session| s.their_address() != session.their_address();
        if self.sessions.first().is_some_and(other_device) {
            // All sessions here are with one remote device.
            return Err(Error::SessionMismatch);
        }
        if self
            .their_identity()
            .is_some_and(|known| known != session.their_identity())
        {
            return Err(Error::IdentityChanged);
        }
        self.push(session);
        Ok(())
    }

    /// Forgets every session, after the user (or the app's policy) accepted an identity change
    /// of the remote device, or when the device was removed.
    pub fn clear(&mut self) {
        self.sessions.clear();
    }

    fn push(&mut self, session: Session) {
        self.sessions.insert(0, session);
        self.sessions.truncate(MAX_SESSIONS_PER_DEVICE);
    }

    /// Number of sessions held.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when there is no session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The identity the remote device used in its sessions (the active one's).
    pub fn their_identity(&self) -> Option<IdentityPublic> {
        self.sessions.first().map(Session::their_identity)
    }

    /// Opens a message from the remote device with whichever session it belongs to, starting a
    /// new one (and consuming a one-time prekey from `account`) for a prekey message of an
    /// unknown session. The session that opened it becomes the active one. Changes nothing
    /// on error. A new session whose identity differs from the held sessions' is refused with
    /// [`Error::IdentityChanged`] (nothing consumed): surface it, then [`DeviceSessions::clear`]
    /// and decrypt again once accepted.
    pub fn decrypt(
        &mut self,
        account: &mut Account,
        our_address: DeviceAddress,
        their_address: DeviceAddress,
        header: &[u8],
        body: &[u8],
    ) -> Result<Decrypted, Error> {
        let mut errors = Vec::with_capacity(self.sessions.len());
        for i in 0..self.sessions.len() {
            let Some(session) = self.sessions.get_mut(i) else {
                break;
            };
            match session.decrypt(header, body) {
                Ok(d) => {
                    self.promote(i);
                    return Ok(d);
                }
                Err(e) => errors.push(e),
            }
        }
        if is_prekey_message(header) && errors.iter().all(|e| *e == Error::SessionMismatch) {
            // Checked before accepting, so a refused identity consumes no one-time prekey.
            let claimed = prekey_identity(header)?;
            if self.their_identity().is_some_and(|known| known != claimed) {
                return Err(Error::IdentityChanged);
            }
            let (session, d) = Session::accept(account, our_address, their_address, header, body)?;
            self.push_received(session);
            return Ok(d);
        }
        // The most telling error: one from a session the message could belong to.
        Err(errors
            .into_iter()
            .find(|e| *e != Error::SessionMismatch)
            .unwrap_or(Error::SessionMismatch))
    }

    /// Where a session may go: the front, unless it is unconfirmed and started without a
    /// one-time prekey, in which case not ahead of any confirmed session before `limit`.
    fn front_for(&self, session: &Session, limit: usize) -> usize {
        if session.is_confirmed() || !session.started_without_one_time_prekey() {
            return 0;
        }
        self.sessions
            .iter()
            .take(limit)
            .rposition(Session::is_confirmed)
            .map_or(0, |c| c + 1)
    }

    /// Adds a session started by a received first message.
    fn push_received(&mut self, session: Session) {
        let at = self.front_for(&session, self.sessions.len());
        self.sessions.insert(at, session);
        self.sessions.truncate(MAX_SESSIONS_PER_DEVICE);
    }

    fn promote(&mut self, i: usize) {
        let Some(session) = self.sessions.get(i) else {
            return;
        };
        let to = self.front_for(session, i);
        if to < i {
            let s = self.sessions.remove(i);
            self.sessions.insert(to, s);
        }
    }

    /// Versioned secret bytes.
    pub fn pickle(&self) -> Zeroizing<Vec<u8>> {
        let pickles: Vec<_> = self.sessions.iter().map(Session::pickle).collect();
        let mut w = Writer::with_capacity(8 + pickles.iter().map(|p| 4 + p.len()).sum::<usize>());
        w.u8(TAG).u8(VERSION).u32(len_u32(pickles.len()));
        for p in &pickles {
            w.var(p);
        }
        w.into_secret()
    }

    /// Restores [`DeviceSessions::pickle`].
    pub fn from_pickle(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "device sessions pickle");
        r.expect_header(TAG, VERSION)?;
        let n = r.u32()? as usize;
        if n > MAX_SESSIONS_PER_DEVICE {
            return Err(Error::Malformed("device sessions pickle"));
        }
        let mut sessions = Vec::with_capacity(n);
        for _ in 0..n {
            sessions.push(Session::from_pickle(r.var(bytes.len())?)?);
        }
        r.finish()?;
        Ok(Self { sessions })
    }
}

impl fmt::Debug for DeviceSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.sessions).finish()
    }
}
