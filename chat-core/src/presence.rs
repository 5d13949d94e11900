//! The presence state machine (R-PRES-1), without I/O or a clock.
//!
//! A device is *alive* from its connect until `missed_heartbeats × heartbeat_interval` after
//! the last sign of life (connect or heartbeat). A user is online while any of their devices
//! is alive. Losing a connection does not end a device's life at once: it stays alive until
//! its window runs out, so a quick reconnect emits nothing (no flapping). Only an explicit
//! sign-out ends it immediately.
//!
//! Driving it, in the style of quinn-proto: feed inputs with `handle_*(now, …)`, then drain
//! [`PresenceTracker::poll_event`], and arrange to call [`PresenceTracker::handle_timeout`]
//! at [`PresenceTracker::poll_timeout`]. Every `handle_*` first expires the devices whose
//! window ended at or before `now`, so the outcome never depends on how punctual the timer is.
//!
//! One tracker holds the devices connected to one node. Its cost per input is O(log n) in
//! the number of tracked devices.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::ids::{DeviceAddress, UserId};
use crate::time::Timestamp;

/// Heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceConfig {
    /// How often clients send a heartbeat (default 5 s).
    pub heartbeat_interval: Duration,
    /// How many heartbeats may be missed before a device is offline (default 3).
    pub missed_heartbeats: u32,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            missed_heartbeats: 3,
        }
    }
}

impl PresenceConfig {
    /// How long a device stays alive after its last sign of life.
    pub fn window(&self) -> Duration {
        self.heartbeat_interval
            .saturating_mul(self.missed_heartbeats)
    }
}

/// A change of a user's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    /// The user's first device came alive.
    Online {
        /// The user.
        user: UserId,
        /// When.
        at: Timestamp,
    },
    /// The user's last alive device went.
    Offline {
        /// The user.
        user: UserId,
        /// The user's last sign of life on any device.
        last_active_at: Timestamp,
    },
}

#[derive(Debug, Clone, Copy)]
struct DeviceState {
    deadline: Timestamp,
}

#[derive(Debug, Default, Clone, Copy)]
struct UserState {
    alive_devices: usize,
    last_active: Option<Timestamp>,
}

/// Tracks which devices and users are online.
#[derive(Debug, Default)]
pub struct PresenceTracker {
    config: PresenceConfig,
    devices: HashMap<DeviceAddress, DeviceState>,
    users: HashMap<UserId, UserState>,
    deadlines: BTreeSet<(Timestamp, DeviceAddress)>,
    events: VecDeque<PresenceChange>,
}

impl PresenceTracker {
    /// An empty tracker.
    pub fn new(config: PresenceConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The settings.
    pub fn config(&self) -> PresenceConfig {
        self.config
    }

    /// Whether any of the user's devices is alive (as of the last input).
    pub fn is_online(&self, user: UserId) -> bool {
        self.users.get(&user).is_some_and(|u| u.alive_devices > 0)
    }

    /// The last sign of life of an online user. `None` for users who are offline: the
    /// tracker forgets them once it has emitted their `Offline`, which carries the time.
    pub fn last_active(&self, user: UserId) -> Option<Timestamp> {
        self.users.get(&user).and_then(|u| u.last_active)
    }

    /// How many devices are alive.
    pub fn alive_devices(&self) -> usize {
        self.devices.len()
    }

    /// A device connected (and authenticated).
    pub fn handle_connect(&mut self, now: Timestamp, device: DeviceAddress) {
        self.seen(now, device);
    }

    /// A heartbeat arrived from a device.
    pub fn handle_heartbeat(&mut self, now: Timestamp, device: DeviceAddress) {
        self.seen(now, device);
    }

    /// A device's connection was lost. It stays alive until its window ends, so a reconnect
    /// within the window changes nothing.
    pub fn handle_disconnect(&mut self, now: Timestamp, _device: DeviceAddress) {
        self.expire(now);
    }

    /// A device signed out or its token was revoked: it is gone at once.
    pub fn handle_sign_out(&mut self, now: Timestamp, device: DeviceAddress) {
        self.expire(now);
        if let Some(state) = self.devices.remove(&device) {
            self.deadlines.remove(&(state.deadline, device));
            self.device_gone(device.user);
        }
    }

    /// Time passed: devices whose window ended at or before `now` go.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.expire(now);
    }

    /// When [`Self::handle_timeout`] should next be called, if any device is alive.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// The next status change to publish, oldest first.
    pub fn poll_event(&mut self) -> Option<PresenceChange> {
        self.events.pop_front()
    }

    fn seen(&mut self, now: Timestamp, device: DeviceAddress) {
        self.expire(now);
        let deadline = now.saturating_add(self.config.window());
        let user = self.users.entry(device.user).or_default();
        user.last_active = Some(user.last_active.map_or(now, |t| t.max(now)));
        match self.devices.insert(device, DeviceState { deadline }) {
            Some(old) => {
                self.deadlines.remove(&(old.deadline, device));
            }
            None => {
                user.alive_devices += 1;
                if user.alive_devices == 1 {
                    self.events.push_back(PresenceChange::Online {
                        user: device.user,
                        at: now,
                    });
                }
            }
        }
        self.deadlines.insert((deadline, device));
    }

    fn expire(&mut self, now: Timestamp) {
        while let Some(&(deadline, device)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if self.devices.remove(&device).is_some() {
                self.device_gone(device.user);
            }
        }
    }

    fn device_gone(&mut self, user: UserId) {
        let Some(state) = self.users.get_mut(&user) else {
            return;
        };
        state.alive_devices = state.alive_devices.saturating_sub(1);
        if state.alive_devices == 0 {
            let last_active_at = state.last_active.unwrap_or(Timestamp::EPOCH);
            self.users.remove(&user);
            self.events.push_back(PresenceChange::Offline {
                user,
                last_active_at,
            });
        }
    }
}
