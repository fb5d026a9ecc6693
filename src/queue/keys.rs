//! The keys of one queue, and each script's KEYS in the order its header gives them.

use crate::store::KeyBuilder;
use crate::store::keys::Pattern;

pub(super) struct QueueKeys<'a> {
    keys: &'a KeyBuilder,
    queue: &'a str,
}

impl<'a> QueueKeys<'a> {
    pub(super) fn new(keys: &'a KeyBuilder, queue: &'a str) -> Self {
        Self { keys, queue }
    }

    fn part(&self, part: &str) -> String {
        self.keys.key(Pattern::Queue, self.queue, part)
    }

    fn parts<const N: usize>(&self, parts: [&str; N]) -> Vec<String> {
        parts.iter().map(|part| self.part(part)).collect()
    }

    pub(super) fn job(&self, job_id: &str) -> String {
        self.part(&format!("job:{job_id}"))
    }

    /// The prefix of every job key (fetch.lua appends the id).
    pub(super) fn job_prefix(&self) -> String {
        self.part("job:")
    }

    pub(super) fn dedup(&self, dedup_key: &str) -> String {
        self.part(&format!("dedup:{dedup_key}"))
    }

    pub(super) fn dead(&self) -> String {
        self.part("dead")
    }

    /// ConfigureQueue's rules (prelude.lua's `queue_config`).
    /// The groups' round robin and their active counts (prelude.lua's `use_groups`).
    pub(super) fn groups(&self) -> [String; 2] {
        [self.part("groups"), self.part("gactive")]
    }

    /// A group's ready jobs (prelude.lua's `group_ready`).
    pub(super) fn group_ready(&self, group: &str) -> String {
        format!("{}:{group}", self.part("ready"))
    }

    pub(super) fn config(&self) -> String {
        self.part("config")
    }

    pub(super) fn paused(&self) -> String {
        self.part("paused")
    }

    /// The queue's channel: jobs ready, settled or cancelled.
    pub(super) fn channel(&self) -> String {
        self.keys.channel(Pattern::Queue, self.queue)
    }

    /// The index a state's jobs are listed from (ListJobs), if it has one.
    pub(super) fn index_of(&self, state: super::JobState) -> Option<String> {
        use super::JobState;
        let part = match state {
            JobState::Ready => "ready_since",
            JobState::Scheduled => "scheduled",
            JobState::Active => "active",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Failed | JobState::Cancelled => return None,
        };
        Some(self.part(part))
    }

    /// The queue's events (prelude.lua's `record_events`), and watch.lua's keys.
    pub(super) fn events(&self) -> Vec<String> {
        self.parts(["watched", "events"])
    }

    pub(super) fn event_stream(&self) -> String {
        self.part("events")
    }

    /// Where scripts announce recorded events (prelude.lua's `record_events`).
    pub(super) fn events_channel(&self) -> String {
        format!("{}:events", self.channel())
    }

    /// enqueue.lua, before the per-job pairs of [`QueueKeys::job`] and [`QueueKeys::dedup`].
    pub(super) fn enqueue(&self) -> Vec<String> {
        self.parts([
            "ready",
            "ready_since",
            "scheduled",
            "watched",
            "events",
            "groups",
            "gactive",
            "config",
            "enqueued",
        ])
    }

    /// Jobs enqueued per minute, the last few minutes (enqueue.lua).
    pub(super) fn enqueued(&self) -> String {
        self.part("enqueued")
    }

    /// fetch.lua and stats.lua.
    pub(super) fn whole_queue(&self) -> Vec<String> {
        self.parts([
            "ready",
            "ready_since",
            "scheduled",
            "active",
            "dead",
            "paused",
            "watched",
            "events",
            "succeeded",
            "groups",
            "gactive",
            "config",
        ])
    }

    /// ack.lua, before one job key per delivery.
    pub(super) fn ack(&self) -> Vec<String> {
        self.parts(["active", "succeeded", "watched", "events", "ready", "groups", "gactive", "config"])
    }

    pub(super) fn nack(&self, job_id: &str) -> Vec<String> {
        let mut keys = vec![self.job(job_id)];
        keys.extend(self.parts([
            "active",
            "scheduled",
            "dead",
            "watched",
            "events",
            "ready",
            "groups",
            "gactive",
            "config",
        ]));
        keys
    }

    pub(super) fn progress(&self, job_id: &str) -> Vec<String> {
        let mut keys = vec![self.job(job_id)];
        keys.extend(self.events());
        keys
    }

    pub(super) fn extend(&self, job_id: &str) -> Vec<String> {
        vec![self.job(job_id), self.part("active")]
    }

    /// hand_back.lua, before the job keys.
    pub(super) fn hand_back(&self) -> Vec<String> {
        self.parts(["ready", "ready_since", "active", "dead", "watched", "events", "groups", "gactive", "config"])
    }

    pub(super) fn cancel(&self, job_id: &str) -> Vec<String> {
        let mut keys = vec![self.job(job_id)];
        keys.extend(self.parts([
            "ready",
            "ready_since",
            "scheduled",
            "active",
            "watched",
            "events",
            "groups",
            "gactive",
            "config",
        ]));
        keys
    }

    /// Every schedule script's keys: definitions, states, next ticks (schedule/prelude.lua).
    pub(super) fn schedules(&self) -> Vec<String> {
        self.parts(["schedules", "schedule_state", "schedule_due"])
    }

    /// retry_dead.lua, before the job keys.
    pub(super) fn retry_dead(&self) -> Vec<String> {
        self.parts(["ready", "ready_since", "dead", "watched", "events", "groups", "gactive", "config"])
    }
}
