//! When a schedule ticks: a cron expression in a time zone (the croner crate, which handles
//! daylight-saving changes as OCPS specifies), or a fixed interval from the schedule's
//! creation. All instants are µs since the Unix epoch on Redis's clock.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::error::Error;

/// The shortest fixed interval.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub enum Timing {
    Cron {
        cron: Box<Cron>,
        zone: Tz,
    },
    /// Ticks at `anchor + k × every`, k ≥ 1.
    Every {
        every_micros: u64,
        anchor_micros: u64,
    },
}

impl Timing {
    /// A cron expression (5 fields, or 6 with seconds first) in an IANA zone ("" = UTC).
    pub fn cron(expression: &str, zone: &str) -> Result<Self, Error> {
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let cron = parser
            .parse(expression)
            .map_err(|err| Error::invalid("schedule.cron", format!("does not parse: {err}")))?;
        let zone = match zone {
            "" => Tz::UTC,
            name => Tz::from_str(name)
                .map_err(|_| Error::invalid("schedule.time_zone", format!("{name:?} is not an IANA time zone")))?,
        };
        Ok(Self::Cron { cron: Box::new(cron), zone })
    }

    pub fn every(every: Duration, anchor_micros: u64) -> Result<Self, Error> {
        if every < MIN_EVERY {
            return Err(Error::invalid("schedule.every", format!("must be at least {MIN_EVERY:?}")));
        }
        let every_micros = u64::try_from(every.as_micros()).unwrap_or(u64::MAX);
        Ok(Self::Every { every_micros, anchor_micros })
    }

    /// The first tick strictly after `after`, if any is left.
    pub fn next_after(&self, after: u64) -> Option<u64> {
        match self {
            Self::Every { every_micros, anchor_micros } => {
                let elapsed = after.saturating_sub(*anchor_micros);
                let ticks = if after < *anchor_micros { 0 } else { elapsed / every_micros };
                anchor_micros.checked_add((ticks + 1).checked_mul(*every_micros)?)
            }
            Self::Cron { cron, zone } => {
                let start = zone.from_utc_datetime(&utc(after)?.naive_utc());
                let next = cron.find_next_occurrence(&start, false).ok()?;
                micros_of(&next.with_timezone(&Utc))
            }
        }
    }

    /// The latest tick at or before `at`, but not before `not_before`.
    pub fn latest_at_or_before(&self, at: u64, not_before: u64) -> Option<u64> {
        let latest = match self {
            Self::Every { every_micros, anchor_micros } => {
                let ticks = at.checked_sub(*anchor_micros)? / every_micros;
                (ticks >= 1).then(|| anchor_micros + ticks * every_micros)?
            }
            Self::Cron { cron, zone } => {
                let start = zone.from_utc_datetime(&utc(at)?.naive_utc());
                let previous = cron.find_previous_occurrence(&start, true).ok()?;
                micros_of(&previous.with_timezone(&Utc))?
            }
        };
        (latest >= not_before).then_some(latest)
    }
}

fn utc(micros: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(i64::try_from(micros).ok()?)
}

fn micros_of(at: &DateTime<Utc>) -> Option<u64> {
    u64::try_from(at.timestamp_micros()).ok()
}

/// What a schedule does with ticks every replica missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    Skip,
    /// Enqueue up to this many of them, the most recent.
    CatchUp(u32),
}

/// The ticks to enqueue now, oldest first, and the tick after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    pub ticks: Vec<u64>,
    pub next: Option<u64>,
}

/// The most ticks one firing enqueues: on-time ticks beyond this (a grace longer than this
/// many intervals) count as missed.
pub const MAX_TICKS_PER_FIRING: usize = 100;

/// Which ticks from `due` (the schedule's stored next tick, at or before `now`) to enqueue:
/// every tick at most `grace` late, and of the later ones as `missed` says.
pub fn firing(timing: &Timing, due: u64, now: u64, grace: Duration, missed: Missed) -> Firing {
    let on_time_from = now.saturating_sub(u64::try_from(grace.as_micros()).unwrap_or(u64::MAX)).max(due);
    // Walk back from now: the on-time ticks, then (when catching up) the latest missed ones.
    let mut ticks = Vec::new();
    let mut cursor = now;
    while ticks.len() < MAX_TICKS_PER_FIRING {
        match timing.latest_at_or_before(cursor, on_time_from) {
            Some(tick) => {
                ticks.push(tick);
                match tick.checked_sub(1) {
                    Some(before) => cursor = before,
                    None => break,
                }
            }
            None => break,
        }
    }
    if let Missed::CatchUp(limit) = missed {
        let mut caught_up = 0;
        while caught_up < limit.max(1) && ticks.len() < MAX_TICKS_PER_FIRING && on_time_from > due {
            let Some(tick) = timing.latest_at_or_before(cursor.min(on_time_from - 1), due) else {
                break;
            };
            ticks.push(tick);
            caught_up += 1;
            match tick.checked_sub(1) {
                Some(before) => cursor = before,
                None => break,
            }
        }
    }
    ticks.reverse();
    Firing { ticks, next: timing.next_after(now) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    fn at(text: &str) -> u64 {
        micros_of(&DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)).unwrap()
    }

    #[test]
    fn intervals_tick_from_their_anchor() {
        let timing = Timing::every(Duration::from_secs(10), 1000 * SECOND).unwrap();
        assert_eq!(timing.next_after(1000 * SECOND), Some(1010 * SECOND));
        assert_eq!(timing.next_after(1015 * SECOND), Some(1020 * SECOND));
        assert_eq!(timing.next_after(10), Some(1010 * SECOND));
        assert_eq!(timing.latest_at_or_before(1029 * SECOND, 0), Some(1020 * SECOND));
        assert_eq!(timing.latest_at_or_before(1005 * SECOND, 0), None, "the anchor itself is no tick");
        assert!(Timing::every(Duration::from_millis(999), 0).is_err());
    }

    #[test]
    fn cron_with_seconds_and_zones() {
        let every_five = Timing::cron("*/5 * * * * *", "").unwrap();
        assert_eq!(every_five.next_after(at("2026-03-01T10:00:03Z")), Some(at("2026-03-01T10:00:05Z")));
        let paris_nine = Timing::cron("0 9 * * *", "Europe/Paris").unwrap();
        assert_eq!(paris_nine.next_after(at("2026-07-01T00:00:00Z")), Some(at("2026-07-01T07:00:00Z")));
        assert_eq!(paris_nine.next_after(at("2026-01-10T00:00:00Z")), Some(at("2026-01-10T08:00:00Z")));
        assert!(Timing::cron("not cron", "").is_err());
        assert!(Timing::cron("* * * * *", "Mars/Olympus").is_err());
    }

    /// As croner documents (OCPS): a fixed time inside the spring-forward gap fires at the
    /// first valid time after it; inside the fall-back overlap, once.
    #[test]
    fn daylight_saving_changes_follow_croner() {
        // Europe/Paris: 2026-03-29 02:00 → 03:00; 2026-10-25 03:00 → 02:00.
        let half_past_two = Timing::cron("30 2 * * *", "Europe/Paris").unwrap();
        let spring = half_past_two.next_after(at("2026-03-28T23:00:00Z")).unwrap();
        assert_eq!(spring, at("2026-03-29T01:00:00Z"), "03:00 CEST, the first valid time after the gap");
        let autumn = half_past_two.next_after(at("2026-10-24T22:00:00Z")).unwrap();
        assert_eq!(autumn, at("2026-10-25T00:30:00Z"), "02:30 CEST, the first pass");
        let after_autumn = half_past_two.next_after(autumn).unwrap();
        assert_eq!(after_autumn, at("2026-10-26T01:30:00Z"), "not again at 02:30 CET");
    }

    #[test]
    fn firing_enqueues_on_time_ticks_and_skips_or_catches_up_missed_ones() {
        let timing = Timing::every(Duration::from_secs(1), 0);
        let timing = timing.unwrap();
        let grace = Duration::from_secs(5);
        // On time: the one due tick.
        let on_time = firing(&timing, 100 * SECOND, 100 * SECOND + 300_000, grace, Missed::Skip);
        assert_eq!(on_time, Firing { ticks: vec![100 * SECOND], next: Some(101 * SECOND) });
        // Down from 100 s to 200 s: ticks 195..=200 are within grace, the rest were missed.
        let skipped = firing(&timing, 100 * SECOND, 200 * SECOND, grace, Missed::Skip);
        assert_eq!(skipped.ticks, (195..=200).map(|s| s * SECOND).collect::<Vec<_>>());
        let caught_up = firing(&timing, 100 * SECOND, 200 * SECOND, grace, Missed::CatchUp(3));
        assert_eq!(caught_up.ticks, (192..=200).map(|s| s * SECOND).collect::<Vec<_>>());
        assert_eq!(caught_up.next, Some(201 * SECOND));
        // A catch-up never reaches before the due tick.
        let short = firing(&timing, 190 * SECOND, 200 * SECOND, grace, Missed::CatchUp(50));
        assert_eq!(short.ticks.first(), Some(&(190 * SECOND)));
    }
}
