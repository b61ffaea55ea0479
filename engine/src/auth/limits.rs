//! Failed-login accounting: which usernames and addresses failed too often lately, and until
//! when they are locked. Pure (the caller passes the time) and bounded (a fixed number of
//! entries per table, whatever names and addresses arrive).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// When a key gets locked, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Failures within `window` that lock the key; 0: never locked.
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            window_start: now,
            failures: 0,
            locked_until: None,
        }
    }

    /// From when on this entry no longer changes any answer.
    fn expires(&self, policy: &Policy) -> Instant {
        let window_end = later(self.window_start, policy.window);
        self.locked_until.map_or(window_end, |l| l.max(window_end))
    }
}

/// `at + d`; durations are validated at start-up (at most a year), so this does not saturate.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or(at)
}

/// Recent failures per key, at most `capacity` keys.
pub struct FailureTable<K> {
    policy: Policy,
    capacity: usize,
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Copy> FailureTable<K> {
    pub fn new(policy: Policy, capacity: usize) -> FailureTable<K> {
        FailureTable {
            policy,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// How long `key` stays locked, if it is.
    pub fn locked(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.entries.get(key)?.locked_until?;
        Some(until.checked_duration_since(now)?).filter(|left| !left.is_zero())
    }

    /// Counts one failure of `key`; true when this failure locks it.
    pub fn fail(&mut self, key: K, now: Instant) -> bool {
        if self.policy.max_failures == 0 {
            return false;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.make_room(now);
        }
        let policy = self.policy;
        let entry = self.entries.entry(key).or_insert_with(|| Entry::new(now));
        if entry.locked_until.is_some_and(|until| until > now) {
            return false;
        }
        if entry.locked_until.is_some() || now >= later(entry.window_start, policy.window) {
            *entry = Entry::new(now);
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures >= policy.max_failures {
            entry.locked_until = Some(later(now, policy.lockout));
            return true;
        }
        false
    }

    /// Forgets the failures of `key` (after a successful login).
    pub fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the entries that no longer matter; if none, the one that would expire first.
    fn make_room(&mut self, now: Instant) {
        let policy = self.policy;
        self.entries.retain(|_, e| e.expires(&policy) > now);
        if self.entries.len() >= self.capacity {
            let first = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.expires(&policy))
                .map(|(k, _)| *k);
            if let Some(key) = first {
                self.entries.remove(&key);
            }
        }
    }
}

/// Why a login is refused before its password is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locked {
    /// The username failed too often; for this long still.
    User(Duration),
    /// The address failed too often; for this long still.
    Address(Duration),
}

/// Which lockouts a failure started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lockouts {
    pub user: bool,
    pub address: bool,
}

/// The two tables a login is checked against: by username and by source address.
pub struct LoginLimits {
    users: FailureTable<u64>,
    addresses: FailureTable<IpAddr>,
    /// Usernames are kept as keyed hashes: a table of 16 KiB names would not be small, and a
    /// random key keeps a peer from choosing names that collide.
    hasher: RandomState,
}

impl LoginLimits {
    pub fn new(user: Policy, address: Policy, capacity: usize) -> LoginLimits {
        LoginLimits {
            users: FailureTable::new(user, capacity),
            addresses: FailureTable::new(address, capacity),
            hasher: RandomState::new(),
        }
    }

    /// Whether a login of `username` from `address` may be checked now.
    pub fn check(
        &self,
        username: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Locked> {
        if let Some(left) = address.and_then(|a| self.addresses.locked(&address_key(a), now)) {
            return Err(Locked::Address(left));
        }
        if let Some(left) = self.users.locked(&self.user_key(username), now) {
            return Err(Locked::User(left));
        }
        Ok(())
    }

    /// Counts a failed login; says which lockouts it started.
    pub fn failed(&mut self, username: &str, address: Option<IpAddr>, now: Instant) -> Lockouts {
        let user = self.user_key(username);
        Lockouts {
            user: self.users.fail(user, now),
            address: address.is_some_and(|a| self.addresses.fail(address_key(a), now)),
        }
    }

    /// A successful login clears the counts of its username and address.
    pub fn succeeded(&mut self, username: &str, address: Option<IpAddr>) {
        let user = self.user_key(username);
        self.users.clear(&user);
        if let Some(a) = address {
            self.addresses.clear(&address_key(a));
        }
    }

    fn user_key(&self, username: &str) -> u64 {
        self.hasher.hash_one(username)
    }
}

/// The key an address is counted under: an IPv4 address as it is (also when it arrives mapped
/// into IPv6), an IPv6 address by its /64, the block one host usually has to itself.
pub fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        max_failures: 3,
        window: Duration::from_secs(60),
        lockout: Duration::from_secs(300),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn failures_within_the_window_lock_until_the_lockout_ends() {
        let t0 = Instant::now();
        let mut table = FailureTable::new(POLICY, 10);
        assert!(!table.fail(1, t0));
        assert!(!table.fail(1, t0 + secs(10)));
        assert_eq!(table.locked(&1, t0 + secs(10)), None);
        assert!(table.fail(1, t0 + secs(20)), "the third failure locks");
        assert_eq!(table.locked(&1, t0 + secs(20)), Some(secs(300)));
        assert_eq!(table.locked(&1, t0 + secs(319)), Some(secs(1)));
        assert_eq!(table.locked(&1, t0 + secs(320)), None, "unlocked");
        assert_eq!(table.locked(&2, t0 + secs(20)), None, "others are not");
        // After a lockout the count starts again.
        assert!(!table.fail(1, t0 + secs(321)));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_lock() {
        let t0 = Instant::now();
        let mut table = FailureTable::new(POLICY, 10);
        for i in 0..10 {
            assert!(!table.fail(1, t0 + secs(i * 31)), "failure {i}");
        }
    }

    #[test]
    fn a_clear_forgets_and_zero_turns_it_off() {
        let t0 = Instant::now();
        let mut table = FailureTable::new(POLICY, 10);
        table.fail(1, t0);
        table.fail(1, t0);
        table.clear(&1);
        assert!(!table.fail(1, t0));
        let mut off = FailureTable::new(
            Policy {
                max_failures: 0,
                ..POLICY
            },
            10,
        );
        for _ in 0..100 {
            assert!(!off.fail(1, t0));
        }
        assert_eq!(off.len(), 0);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_what_expires_first() {
        let t0 = Instant::now();
        let mut table = FailureTable::new(POLICY, 3);
        for key in 0..3 {
            table.fail(key, t0);
            table.fail(key, t0);
            table.fail(key, t0);
        }
        // All three are locked; new keys still find room and the table never grows past 3.
        for key in 3..100 {
            table.fail(key, t0 + secs(key));
            assert!(table.len() <= 3);
        }
        // Expired entries are dropped before anything live.
        let mut table = FailureTable::new(POLICY, 2);
        table.fail(1, t0);
        for _ in 0..3 {
            table.fail(2, t0 + secs(100));
        }
        table.fail(3, t0 + secs(100));
        assert!(
            table.locked(&2, t0 + secs(100)).is_some(),
            "the live lock stays"
        );
    }

    #[test]
    fn logins_are_checked_by_address_and_by_username() {
        let t0 = Instant::now();
        let here: IpAddr = "192.0.2.7".parse().expect("ip");
        let mut limits = LoginLimits::new(
            POLICY,
            Policy {
                max_failures: 5,
                ..POLICY
            },
            100,
        );
        for _ in 0..3 {
            assert_eq!(limits.check("admin", Some(here), t0), Ok(()));
            limits.failed("admin", Some(here), t0);
        }
        assert_eq!(
            limits.check("admin", Some(here), t0),
            Err(Locked::User(secs(300)))
        );
        assert_eq!(limits.check("other", Some(here), t0), Ok(()));
        let lockouts = [
            limits.failed("a", Some(here), t0),
            limits.failed("b", Some(here), t0),
        ];
        assert_eq!(
            lockouts,
            [
                Lockouts::default(),
                Lockouts {
                    user: false,
                    address: true
                }
            ]
        );
        assert_eq!(
            limits.check("c", Some(here), t0),
            Err(Locked::Address(secs(300)))
        );
        let elsewhere: IpAddr = "198.51.100.1".parse().expect("ip");
        assert_eq!(limits.check("c", Some(elsewhere), t0), Ok(()));
        limits.succeeded("c", Some(here));
        assert_eq!(limits.check("c", Some(here), t0), Ok(()));
    }

    #[test]
    fn addresses_count_by_host() {
        let key = |s: &str| address_key(s.parse().expect("ip"));
        assert_eq!(key("192.0.2.7"), key("::ffff:192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }
}
