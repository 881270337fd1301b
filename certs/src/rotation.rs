//! When certificates are renewed: a pure schedule over an explicit clock (every call says what time it
//! is), so the rules — renew well before expiry, spread renewals, retry failures with backoff before the
//! certificate in use expires, forget what nobody uses — are tested without waiting and without a runtime.
//! The certificate actor owns one and sleeps until [`Rotation::next_due`].

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::{Duration, SystemTime};

/// When a certificate is renewed, relative to its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewPolicy {
    /// Renew when `lifetime / remaining_divisor` is left (OSM: a third) ...
    pub remaining_divisor: u32,
    /// ... or this much, whichever is more (OSM: 5 minutes), but never before half the lifetime has
    /// passed: a short-lived certificate (a minute, say) is renewed half-way, not at once.
    pub min_remaining: Duration,
    /// Renewals are brought forward by up to `lifetime / jitter_divisor`, spread by a per-certificate
    /// seed, so certificates issued together do not all renew in the same instant.
    pub jitter_divisor: u32,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        Self { remaining_divisor: 3, min_remaining: Duration::from_secs(5 * 60), jitter_divisor: 20 }
    }
}

impl RenewPolicy {
    /// When a certificate valid from `not_before` to `not_after` is renewed; `seed` spreads the jitter
    /// (e.g. a hash of the serial number).
    pub fn renew_at(&self, not_before: SystemTime, not_after: SystemTime, seed: u64) -> SystemTime {
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        let remaining = (lifetime / self.remaining_divisor.max(1)).max(self.min_remaining).min(lifetime / 2);
        let spread = lifetime / self.jitter_divisor.max(1);
        let jitter = if spread.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(seed % u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX))
        };
        not_after - remaining - jitter
    }
}

/// How long to wait before trying again after `failures` failed issuances in a row: 1 s, doubling, at
/// most 5 minutes — and, while a certificate is still in use, at most a quarter of what is left of its
/// validity, so retries keep coming well before it expires.
pub fn retry_after(failures: u32, now: SystemTime, expires: Option<SystemTime>) -> Duration {
    let backoff = Duration::from_secs(1 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300));
    match expires.map(|e| e.duration_since(now).unwrap_or_default()) {
        Some(left) => backoff.min((left / 4).max(Duration::from_secs(1))),
        None => backoff,
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    due: SystemTime,
    /// When the certificate in use expires (none yet: the first issuance failed).
    expires: Option<SystemTime>,
    failures: u32,
    /// Taken off the queue by [`Rotation::take_due`]; back with `issued` or `failed`.
    in_flight: bool,
}

/// The renewal queue: key → when its certificate is renewed next.
#[derive(Debug)]
pub struct Rotation<K> {
    policy: RenewPolicy,
    queue: BTreeSet<(SystemTime, K)>,
    entries: HashMap<K, Entry>,
}

impl<K: Ord + Hash + Clone> Rotation<K> {
    pub fn new(policy: RenewPolicy) -> Self {
        Self { policy, queue: BTreeSet::new(), entries: HashMap::new() }
    }

    pub fn policy(&self) -> RenewPolicy {
        self.policy
    }

    fn schedule(&mut self, key: K, entry: Entry) {
        if let Some(old) = self.entries.insert(key.clone(), entry)
            && !old.in_flight
        {
            self.queue.remove(&(old.due, key.clone()));
        }
        self.queue.insert((entry.due, key));
    }

    /// A certificate was issued for `key`: it is renewed at the policy's time. Returns that time.
    pub fn issued(&mut self, key: K, not_before: SystemTime, not_after: SystemTime, seed: u64) -> SystemTime {
        let due = self.policy.renew_at(not_before, not_after, seed);
        self.schedule(key, Entry { due, expires: Some(not_after), failures: 0, in_flight: false });
        due
    }

    /// Issuing for `key` failed at `now`: try again after [`retry_after`] (the certificate in use, if
    /// any, stays in use meanwhile). Returns when.
    pub fn failed(&mut self, key: K, now: SystemTime) -> SystemTime {
        let (expires, failures) = self.entries.get(&key).map_or((None, 1), |e| (e.expires, e.failures + 1));
        let due = now + retry_after(failures, now, expires);
        self.schedule(key, Entry { due, expires, failures, in_flight: false });
        due
    }

    /// Renews `key` no later than `at` (its validity was shortened, say). No effect on a key not
    /// scheduled, in flight, or due earlier.
    pub fn renew_by(&mut self, key: &K, at: SystemTime) {
        if let Some(e) = self.entries.get(key).copied()
            && !e.in_flight
            && at < e.due
        {
            self.schedule(key.clone(), Entry { due: at, ..e });
        }
    }

    /// Nobody uses `key`'s certificate any more: it is not renewed.
    pub fn forget(&mut self, key: &K) {
        if let Some(e) = self.entries.remove(key)
            && !e.in_flight
        {
            self.queue.remove(&(e.due, key.clone()));
        }
    }

    /// The earliest renewal to come.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// The keys due at `now`, taken off the queue: each comes back with [`Rotation::issued`] or
    /// [`Rotation::failed`] (or goes with [`Rotation::forget`]).
    pub fn take_due(&mut self, now: SystemTime) -> Vec<K> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.queue.first()
            && *at <= now
        {
            let Some((_, key)) = self.queue.pop_first() else { break };
            if let Some(e) = self.entries.get_mut(&key) {
                e.in_flight = true;
            }
            due.push(key);
        }
        due
    }

    /// When `key`'s certificate is renewed next (`None`: not scheduled, or being renewed now).
    pub fn due(&self, key: &K) -> Option<SystemTime> {
        self.entries.get(key).filter(|e| !e.in_flight).map(|e| e.due)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    #[test]
    fn renewal_comes_a_third_before_expiry_or_five_minutes_or_half_way() {
        let p = RenewPolicy { jitter_divisor: u32::MAX, ..RenewPolicy::default() };
        // A day: a third (8 h) before expiry.
        assert_eq!(p.renew_at(t(0), t(0) + 24 * HOUR, 0), t(0) + 16 * HOUR);
        // Twelve minutes: five minutes before (more than a third).
        assert_eq!(p.renew_at(t(0), t(0) + 12 * MIN, 0), t(0) + 7 * MIN);
        // One minute: half-way, not at once.
        assert_eq!(p.renew_at(t(0), t(0) + MIN, 0), t(0) + MIN / 2);
    }

    #[test]
    fn jitter_only_brings_renewal_forward_and_by_at_most_a_twentieth() {
        let p = RenewPolicy::default();
        let plain = RenewPolicy { jitter_divisor: u32::MAX, ..p }.renew_at(t(0), t(0) + 24 * HOUR, 0);
        let mut seen = BTreeSet::new();
        for seed in (0..2000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
            let at = p.renew_at(t(0), t(0) + 24 * HOUR, seed);
            assert!(at <= plain && plain.duration_since(at).unwrap() < 24 * HOUR / 20, "{seed}");
            seen.insert(at);
        }
        assert!(seen.len() > 1900, "renewals are spread: {}", seen.len());
    }

    #[test]
    fn retries_back_off_and_stay_well_before_expiry() {
        let expires = Some(t(0) + 10 * MIN);
        let waits: Vec<u64> = (1..=12).map(|f| retry_after(f, t(0), None).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // With ten minutes left, never more than a quarter of that.
        assert_eq!(retry_after(12, t(0), expires), Duration::from_secs(150));
        // Simulate renewals failing from the renewal time on: the retries come ever closer together and
        // none is scheduled past the expiry.
        let mut r = Rotation::new(RenewPolicy::default());
        let mut now = r.issued("a", t(0), t(0) + HOUR, 7);
        let mut retries = 0;
        while now < t(0) + HOUR - Duration::from_secs(2) {
            assert_eq!(r.take_due(now), ["a"]);
            now = r.failed("a", now);
            retries += 1;
            assert!(now < t(0) + HOUR, "a retry after the expiry: {now:?}");
        }
        assert!(retries > 10, "{retries}");
    }

    #[test]
    fn the_queue_gives_what_is_due_in_order_and_each_key_once() {
        let mut r = Rotation::new(RenewPolicy { jitter_divisor: u32::MAX, ..RenewPolicy::default() });
        r.issued("late", t(0), t(0) + 24 * HOUR, 0);
        r.issued("early", t(0), t(0) + HOUR, 0);
        assert_eq!(r.next_due(), Some(t(0) + 40 * MIN));
        assert!(r.take_due(t(0) + 39 * MIN).is_empty());
        assert_eq!(r.take_due(t(0) + 40 * MIN), ["early"]);
        assert_eq!(r.due(&"early"), None, "in flight");
        assert!(r.take_due(t(0) + 40 * MIN).is_empty(), "taken once");
        assert_eq!(r.next_due(), Some(t(0) + 16 * HOUR));
        // Renewed: back in the queue at its new certificate's time.
        r.issued("early", t(0) + 40 * MIN, t(0) + 100 * MIN, 0);
        assert_eq!(r.next_due(), Some(t(0) + 80 * MIN));
        assert_eq!(r.take_due(t(0) + 24 * HOUR), ["early", "late"]);
    }

    #[test]
    fn a_shorter_validity_brings_renewals_forward_and_forgotten_keys_leave() {
        let mut r = Rotation::new(RenewPolicy { jitter_divisor: u32::MAX, ..RenewPolicy::default() });
        r.issued("a", t(0), t(0) + 24 * HOUR, 0);
        r.issued("b", t(0), t(0) + 24 * HOUR, 0);
        r.renew_by(&"a", t(0) + MIN);
        r.renew_by(&"b", t(0) + 20 * HOUR);
        assert_eq!(r.due(&"a"), Some(t(0) + MIN));
        assert_eq!(r.due(&"b"), Some(t(0) + 16 * HOUR), "never later than planned");
        r.forget(&"a");
        assert_eq!(r.len(), 1);
        assert_eq!(r.take_due(t(0) + 24 * HOUR), ["b"]);
        // Forgotten while in flight: its result finds nothing to reschedule into the queue twice.
        r.forget(&"b");
        assert!(r.is_empty() && r.next_due().is_none());
    }
}
