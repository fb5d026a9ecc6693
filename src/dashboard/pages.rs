//! The pages' templates (src/dashboard/templates) and the rows they show, already turned
//! into text: templates only lay out and escape.

use std::time::Duration;

use askama::Template;

use super::{ago, preview, span, state_label, timestamp, until};
use crate::election::Leader;
use crate::lock::Holder;
use crate::proto::v1::Schedule;
use crate::queue::{Job, QueueStats};
use crate::ratelimit::{LimitOutcome, Policy};
use crate::session::Session;

/// What every page shows around its content.
pub(crate) struct Chrome {
    pub title: String,
    /// The nav entry marked current.
    pub section: &'static str,
    pub signed_in_as: Option<String>,
    pub admin: bool,
    /// The form token; empty when signed out.
    pub csrf: String,
    pub tenant: String,
    /// What the last action did.
    pub notice: String,
}

impl Chrome {
    pub fn sections(&self) -> &'static [Section] {
        &SECTIONS
    }

    pub fn plain(title: &str) -> Self {
        Self {
            title: title.into(),
            section: "",
            signed_in_as: None,
            admin: false,
            csrf: String::new(),
            tenant: String::new(),
            notice: String::new(),
        }
    }
}

pub(crate) struct Section {
    pub id: &'static str,
    pub href: &'static str,
    pub label: &'static str,
}

const SECTIONS: [Section; 6] = [
    Section { id: "queues", href: "/queues", label: "Queues" },
    Section { id: "locks", href: "/locks", label: "Locks" },
    Section { id: "elections", href: "/elections", label: "Elections" },
    Section { id: "ratelimits", href: "/ratelimits", label: "Rate limits" },
    Section { id: "sessions", href: "/sessions", label: "Sessions" },
    Section { id: "redis", href: "/redis", label: "Redis" },
];

#[derive(Template)]
#[template(path = "error.html")]
pub(crate) struct ErrorPage {
    pub chrome: Chrome,
    pub status: u16,
    pub message: String,
}

#[derive(Template)]
#[template(path = "login.html")]
pub(crate) struct LoginPage {
    pub chrome: Chrome,
    pub failed: bool,
    /// The form's sign-in token (its cookie's twin).
    pub token: String,
}

pub(crate) struct QueueRow {
    pub name: String,
    pub ready: u64,
    pub scheduled: u64,
    pub active: u64,
    pub dead: u64,
    pub succeeded: u64,
    pub paused: bool,
    pub oldest_ready: String,
    pub enqueued_per_minute: u64,
    pub succeeded_per_minute: u64,
}

impl QueueRow {
    /// A queue's counts, and its (enqueued, succeeded) per minute.
    pub fn new(name: String, stats: &QueueStats, (enqueued, succeeded): (u64, u64)) -> Self {
        Self {
            name,
            ready: stats.ready,
            scheduled: stats.scheduled,
            active: stats.active,
            dead: stats.dead,
            succeeded: stats.succeeded,
            paused: stats.paused,
            oldest_ready: if stats.ready == 0 { "—".into() } else { span(stats.oldest_ready_age) },
            enqueued_per_minute: enqueued,
            succeeded_per_minute: succeeded,
        }
    }
}

#[derive(Template)]
#[template(path = "queues.html")]
pub(crate) struct QueuesPage {
    pub chrome: Chrome,
    pub queues: Vec<QueueRow>,
    /// How many queue names the namespace has, shown or not.
    pub total: usize,
}

pub(crate) struct JobRow {
    pub id: String,
    pub job_type: String,
    pub group: String,
    pub attempts: String,
    pub created: String,
    pub run_at: String,
    pub last_error: String,
}

impl JobRow {
    pub fn new(job: &Job) -> Self {
        Self {
            id: job.job_id.clone(),
            job_type: job.job_type.clone(),
            group: job.group.clone(),
            attempts: format!("{} of {}", job.attempts, job.max_attempts),
            created: ago(job.created_at_micros),
            run_at: timestamp(job.run_at_micros),
            last_error: job.last_error.chars().take(120).collect(),
        }
    }
}

pub(crate) struct GroupRow {
    pub name: String,
    pub ready: u64,
    pub active: u64,
}

pub(crate) struct ScheduleRow {
    pub id: String,
    pub timing: String,
    pub paused: bool,
    pub next: String,
    pub fired: u64,
}

impl ScheduleRow {
    pub fn new(schedule: &Schedule) -> Self {
        use crate::proto::v1::schedule::Timing;
        let timing = match &schedule.timing {
            Some(Timing::Cron(cron)) => format!("cron {cron} ({})", schedule.time_zone),
            Some(Timing::Every(every)) => {
                format!("every {}", span(Duration::new(every.seconds as u64, every.nanos as u32)))
            }
            None => "—".into(),
        };
        let next = schedule
            .next_ticks
            .first()
            .map_or_else(|| "—".into(), |at| timestamp(at.seconds as u64 * 1_000_000 + at.nanos as u64 / 1000));
        Self { id: schedule.schedule_id.clone(), timing, paused: schedule.paused, next, fired: schedule.ticks_fired }
    }
}

#[derive(Template)]
#[template(path = "queue.html")]
pub(crate) struct QueuePage {
    pub chrome: Chrome,
    /// This queue's page, its name encoded.
    pub path: String,
    pub stats: QueueRow,
    /// The listed state, lower case.
    pub state: &'static str,
    pub jobs: Vec<JobRow>,
    pub page: usize,
    pub more: bool,
    pub groups: Vec<GroupRow>,
    pub schedules: Vec<ScheduleRow>,
}

impl QueuePage {
    pub const STATES: [(&'static str, &'static str); 5] = [
        ("ready", "Ready"),
        ("scheduled", "Scheduled"),
        ("active", "Active"),
        ("succeeded", "Succeeded"),
        ("dead", "Dead"),
    ];
}

pub(crate) struct JobDetail {
    pub id: String,
    pub queue: String,
    pub job_type: String,
    pub state: &'static str,
    pub finished: bool,
    pub group: String,
    pub priority: i32,
    pub attempts: String,
    pub created: String,
    pub run_at: String,
    pub finished_at: String,
    pub last_error: String,
    pub progress: String,
    pub payload_size: usize,
    pub payload: String,
    pub result: String,
}

impl JobDetail {
    pub fn new(job: &Job) -> Self {
        let progress = job.progress.as_ref().map_or_else(String::new, |progress| {
            let detail = preview(&progress.detail);
            let at = ago(progress.reported_at_micros);
            if detail.is_empty() {
                format!("{} ({at})", progress.value)
            } else {
                format!("{} — {detail} ({at})", progress.value)
            }
        });
        Self {
            id: job.job_id.clone(),
            queue: job.queue.clone(),
            job_type: job.job_type.clone(),
            state: state_label(job.state),
            finished: matches!(
                job.state,
                crate::queue::JobState::Succeeded | crate::queue::JobState::Dead | crate::queue::JobState::Cancelled
            ),
            group: job.group.clone(),
            priority: job.priority,
            attempts: format!("{} of {}", job.attempts, job.max_attempts),
            created: timestamp(job.created_at_micros),
            run_at: timestamp(job.run_at_micros),
            finished_at: job.finished_at_micros.map_or_else(|| "—".into(), timestamp),
            last_error: job.last_error.clone(),
            progress,
            payload_size: job.payload.len(),
            payload: preview(&job.payload),
            result: preview(&job.result),
        }
    }
}

#[derive(Template)]
#[template(path = "job.html")]
pub(crate) struct JobPage {
    pub chrome: Chrome,
    pub queue_path: String,
    pub job: JobDetail,
}

pub(crate) struct HolderRow {
    pub name: String,
    pub owner: String,
    pub fencing_token: u64,
    pub ttl_left: String,
    pub waiting: bool,
}

impl HolderRow {
    pub fn new(name: &str, holder: &Holder, waiting: bool) -> Self {
        Self {
            name: name.to_owned(),
            owner: holder.owner.clone(),
            fencing_token: holder.fencing_token,
            ttl_left: until(holder.expires_at_micros),
            waiting,
        }
    }
}

#[derive(Template)]
#[template(path = "locks.html")]
pub(crate) struct LocksPage {
    pub chrome: Chrome,
    pub prefix: String,
    pub searched: bool,
    pub rows: Vec<HolderRow>,
    /// How complete the lookup was.
    pub note: String,
}

pub(crate) struct LeaderRow {
    pub name: String,
    pub owner: String,
    pub term: u64,
    pub since: String,
    pub ttl_left: String,
    pub value: String,
}

impl LeaderRow {
    pub fn new(name: &str, leader: &Leader) -> Self {
        Self {
            name: name.to_owned(),
            owner: leader.owner.clone(),
            term: leader.term,
            since: ago(leader.since_micros),
            ttl_left: until(leader.expires_at_micros),
            value: preview(&leader.value),
        }
    }
}

#[derive(Template)]
#[template(path = "elections.html")]
pub(crate) struct ElectionsPage {
    pub chrome: Chrome,
    pub prefix: String,
    pub searched: bool,
    pub rows: Vec<LeaderRow>,
    pub note: String,
}

pub(crate) struct PolicyRow {
    pub name: String,
    pub algorithm: String,
    pub limit: u64,
    pub period: String,
    pub burst: String,
    pub fail_open: bool,
}

impl PolicyRow {
    pub fn new(name: &str, policy: &Policy) -> Self {
        let spec = &policy.spec;
        let token_bucket = spec.algorithm == crate::ratelimit::Algorithm::TokenBucket;
        Self {
            name: name.to_owned(),
            algorithm: format!("{:?}", spec.algorithm),
            limit: spec.limit,
            period: span(spec.period),
            burst: if token_bucket { spec.burst.to_string() } else { "—".into() },
            fail_open: policy.fail_open,
        }
    }
}

pub(crate) struct DryRunRow {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after: String,
    pub retry_after: String,
}

impl DryRunRow {
    pub fn new(outcome: &LimitOutcome) -> Self {
        Self {
            allowed: outcome.allowed,
            limit: outcome.limit,
            remaining: outcome.remaining,
            reset_after: span(outcome.reset_after),
            retry_after: span(outcome.retry_after),
        }
    }
}

#[derive(Template)]
#[template(path = "ratelimits.html")]
pub(crate) struct RateLimitsPage {
    pub chrome: Chrome,
    pub policies: Vec<PolicyRow>,
    pub domains: Vec<String>,
    pub policy: String,
    pub key: String,
    pub outcome: Option<DryRunRow>,
}

pub(crate) struct SessionRow {
    pub handle: String,
    pub created: String,
    pub last_seen: String,
    pub expires: String,
    pub attributes: String,
}

impl SessionRow {
    pub fn new(session: &Session) -> Self {
        let expires = session.idle_expires_at_micros.min(session.absolute_expires_at_micros);
        let attributes: Vec<String> = session.attributes.iter().map(|(key, value)| format!("{key}={value}")).collect();
        Self {
            handle: session.handle.clone(),
            created: timestamp(session.created_at_micros),
            last_seen: ago(session.last_seen_at_micros),
            expires: format!("in {}", until(expires)),
            attributes: attributes.join(", "),
        }
    }
}

#[derive(Template)]
#[template(path = "sessions.html")]
pub(crate) struct SessionsPage {
    pub chrome: Chrome,
    pub subject: String,
    pub searched: bool,
    pub sessions: Vec<SessionRow>,
}

/// One Redis node's INFO, the lines an operator looks at.
pub(crate) struct RedisNode {
    /// Empty on a single server.
    pub address: String,
    pub role: String,
    pub version: String,
    pub memory_used: String,
    pub max_memory: String,
    pub policy: String,
    pub policy_warning: bool,
    pub evicted: String,
    pub replicas: String,
    pub clients: String,
}

impl RedisNode {
    pub fn parse(address: &str, info: &str) -> Self {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
                .map_or_else(|| "—".to_owned(), |value| value.trim().to_owned())
        };
        let max_memory = match field("maxmemory").as_str() {
            "0" => "no limit".to_owned(),
            _ => field("maxmemory_human"),
        };
        let policy = field("maxmemory_policy");
        Self {
            address: address.to_owned(),
            role: field("role"),
            version: field("redis_version"),
            memory_used: field("used_memory_human"),
            max_memory,
            // Anything that evicts may drop a lock, a lease or a job (docs/operations.md).
            policy_warning: policy != "noeviction" && policy != "—",
            policy,
            evicted: field("evicted_keys"),
            replicas: field("connected_slaves"),
            clients: field("connected_clients"),
        }
    }
}

#[derive(Template)]
#[template(path = "redis.html")]
pub(crate) struct RedisPage {
    pub chrome: Chrome,
    pub nodes: Vec<RedisNode>,
}
