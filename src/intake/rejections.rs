//! How many rejections each source gets recorded one by one. Anyone can send garbage to the
//! webhook; without a bound one client wrote thousands of rejection rows (and warnings) a
//! second. Each source (a client address; for IPv6 its /64, which one client usually holds
//! whole) has `per_window` recorded rejections per window; past that, its rejections are only
//! counted, on its last recorded one. The sources tracked are bounded too: when the table is
//! full of live windows, new sources share one "other sources" budget.
//!
//! The source is the TCP peer: behind a reverse proxy every rejection shares the proxy's
//! budget. Forwarded headers are not trusted, since the stranger writes them.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources tracked at once.
const MAX_SOURCES: usize = 4096;

/// What to do with one rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Record it, with its source.
    Record(String),
    /// Count it on the source's last recorded rejection.
    Count(String),
}

pub struct RejectionBudget {
    per_window: u32,
    window: Duration,
    sources: Mutex<HashMap<Source, Window>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Address(IpAddr),
    /// The first 64 bits of an IPv6 address.
    V6Net(u64),
    Unknown,
    /// Every new source while the table is full.
    Others,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    recorded: u32,
}

impl RejectionBudget {
    pub fn new(per_window: u32, window: Duration) -> RejectionBudget {
        RejectionBudget {
            per_window,
            window,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a rejection from `peer`, now, is recorded or only counted.
    pub fn judge(&self, peer: Option<IpAddr>, now: Instant) -> Verdict {
        // A poisoned lock only means another request panicked mid-update; the counts are
        // still counts.
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let mut source = Source::of(peer);
        if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
            sources.retain(|_, w| now.duration_since(w.started) < self.window);
            if sources.len() >= MAX_SOURCES {
                source = Source::Others;
            }
        }
        let window = sources.entry(source).or_insert(Window {
            started: now,
            recorded: 0,
        });
        if now.duration_since(window.started) >= self.window {
            *window = Window {
                started: now,
                recorded: 0,
            };
        }
        if window.recorded < self.per_window {
            window.recorded += 1;
            Verdict::Record(source.to_string())
        } else {
            Verdict::Count(source.to_string())
        }
    }
}

impl Source {
    fn of(peer: Option<IpAddr>) -> Source {
        match peer.map(|ip| ip.to_canonical()) {
            None => Source::Unknown,
            Some(IpAddr::V6(v6)) => Source::V6Net((u128::from(v6) >> 64) as u64),
            Some(v4) => Source::Address(v4),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Address(ip) => write!(f, "{ip}"),
            Source::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
            Source::Unknown => f.write_str("unknown"),
            Source::Others => f.write_str("other sources"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_source_past_its_budget_is_counted_until_its_window_ends() {
        let budget = RejectionBudget::new(2, Duration::from_secs(60));
        let start = Instant::now();

        let verdicts: Vec<Verdict> = (0..3)
            .map(|_| budget.judge(ip("203.0.113.7"), start))
            .collect();
        let later = budget.judge(ip("203.0.113.7"), start + Duration::from_secs(60));

        let source = "203.0.113.7".to_owned();
        assert_eq!(
            verdicts,
            [
                Verdict::Record(source.clone()),
                Verdict::Record(source.clone()),
                Verdict::Count(source.clone())
            ]
        );
        assert_eq!(later, Verdict::Record(source));
    }

    #[test]
    fn each_source_has_a_budget_of_its_own() {
        let budget = RejectionBudget::new(1, Duration::from_secs(60));
        let now = Instant::now();
        budget.judge(ip("203.0.113.7"), now);

        let other = budget.judge(ip("198.51.100.1"), now);

        assert_eq!(other, Verdict::Record("198.51.100.1".into()));
    }

    #[test]
    fn the_addresses_of_one_ipv6_64_share_a_budget() {
        let budget = RejectionBudget::new(1, Duration::from_secs(60));
        let now = Instant::now();
        budget.judge(ip("2001:db8:1:2::1"), now);

        let neighbour = budget.judge(ip("2001:db8:1:2:ffff::9"), now);

        assert_eq!(neighbour, Verdict::Count("2001:db8:1:2::/64".into()));
    }

    #[test]
    fn new_sources_share_one_budget_once_the_table_is_full_of_live_windows() {
        let budget = RejectionBudget::new(1, Duration::from_secs(60));
        let now = Instant::now();
        for n in 0..MAX_SOURCES as u32 {
            budget.judge(Some(IpAddr::from(n.to_be_bytes())), now);
        }

        let first = budget.judge(ip("203.0.113.7"), now);
        let second = budget.judge(ip("198.51.100.1"), now);
        let after_the_window = budget.judge(ip("192.0.2.1"), now + Duration::from_secs(60));

        assert_eq!(first, Verdict::Record("other sources".into()));
        assert_eq!(second, Verdict::Count("other sources".into()));
        assert_eq!(after_the_window, Verdict::Record("192.0.2.1".into()));
    }
}
