//! Bounding what a hostile peer can make the controller log: per kind of event, the first line at once,
//! then at most one line every period, carrying how many were left out in between; and peer-supplied
//! strings made safe to log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One limiter serves many kinds of event (a handshake failure's reason, a webhook's refusal), each
/// limited on its own.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        Self { every, last: Mutex::new(HashMap::new()) }
    }

    /// `Some(left out since the last line)` when a line about `kind` may be logged now; `None` when it
    /// is to be left out (and counted).
    pub fn admit(&self, kind: &'static str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().ok()?;
        match last.get_mut(kind) {
            Some((at, left_out)) if now.saturating_duration_since(*at) < self.every => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// [`LogLimiter`] per key (a proxy): the first line about a key at once, then at most one every period,
/// carrying how many were left out. Holds at most `max_keys` keys: past that, keys quiet for a period are
/// forgotten (their next line would be admitted anyway), and a new key that still finds no room is
/// admitted without being remembered.
#[derive(Debug)]
pub struct KeyedLogLimiter {
    every: Duration,
    max_keys: usize,
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl KeyedLogLimiter {
    pub fn new(every: Duration, max_keys: usize) -> Self {
        Self { every, max_keys, last: Mutex::new(HashMap::new()) }
    }

    /// `Some(left out since the last line)` when a line about `key` may be logged now.
    pub fn admit(&self, key: &str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Option<u64> {
        let Ok(mut last) = self.last.lock() else { return Some(0) };
        if let Some((at, left_out)) = last.get_mut(key) {
            if now.saturating_duration_since(*at) < self.every {
                *left_out += 1;
                return None;
            }
            *at = now;
            return Some(std::mem::take(left_out));
        }
        if last.len() >= self.max_keys {
            let every = self.every;
            last.retain(|_, (at, left_out)| now.saturating_duration_since(*at) < every || *left_out > 0);
        }
        if last.len() < self.max_keys {
            last.insert(key.to_owned(), (now, 0));
        }
        Some(0)
    }
}

/// Longest peer-supplied string written to a log.
const MAX_LOGGED_BYTES: usize = 256;

/// A string from a peer, fit for a log line: control characters escaped (no forged lines), and cut to a
/// bounded length with the original size noted.
pub fn peer_str(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() >= MAX_LOGGED_BYTES {
            out.push_str(&format!("…({} bytes)", s.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_strings_cannot_forge_lines_or_flood_the_log() {
        assert_eq!(peer_str("a\nINFO forged\r"), "a\\nINFO forged\\r");
        let long = "x".repeat(100_000);
        let logged = peer_str(&long);
        assert!(logged.len() < 300 && logged.ends_with("…(100000 bytes)"), "{logged}");
    }

    #[test]
    fn one_line_per_key_per_period_in_bounded_memory() {
        let l = KeyedLogLimiter::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(l.admit_at("p1", t0), Some(0));
        // A reconnect storm of one proxy: one line, then one carrying the count.
        for _ in 0..2000 {
            assert_eq!(l.admit_at("p1", t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.admit_at("p1", t0 + Duration::from_secs(10)), Some(2000));
        // Other proxies are not held back by it; the map never exceeds its bound.
        assert_eq!(l.admit_at("p2", t0), Some(0));
        assert_eq!(l.admit_at("p3", t0), Some(0), "no room: admitted without being remembered");
        assert_eq!(l.last.lock().unwrap().len(), 2);
        assert_eq!(l.admit_at("p3", t0 + Duration::from_secs(30)), Some(0), "quiet keys are forgotten for room");
    }

    #[test]
    fn one_line_per_kind_per_period_counting_what_was_left_out() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.admit_at("a", t0), Some(0));
        assert_eq!(l.admit_at("b", t0), Some(0), "kinds are limited apart");
        for _ in 0..5 {
            assert_eq!(l.admit_at("a", t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.admit_at("a", t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(l.admit_at("a", t0 + Duration::from_secs(11)), None);
    }
}
