//! Schedules on JobQueueService against a real Redis: create, read, page, pause, resume,
//! delete; exactly one job per tick across three replicas while one restarts; missed ticks
//! skipped or caught up after every replica was down; bad input.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::{
    CreateScheduleRequest, DeleteScheduleRequest, EnqueueRequest, ErrorReason, GetScheduleRequest,
    ListSchedulesRequest, MissedTicks, PauseScheduleRequest, ResumeScheduleRequest, Schedule, enqueue_request,
    schedule,
};
use common::{Baton, Clients, PATIENCE, Redis, Server, eventually, reason_of, unique};
use tonic::Code;
use tonic::transport::Channel;

type Queues = JobQueueServiceClient<Channel>;

const SECOND: u64 = 1_000_000;

fn every(queue: &str, id: &str, every: Duration) -> Schedule {
    Schedule {
        queue: queue.to_owned(),
        schedule_id: id.to_owned(),
        timing: Some(schedule::Timing::Every(duration_to_proto(every))),
        job: Some(EnqueueRequest { r#type: "report".into(), payload: b"tick".to_vec(), ..Default::default() }),
        ..Default::default()
    }
}

fn cron(queue: &str, id: &str, expression: &str) -> Schedule {
    Schedule { timing: Some(schedule::Timing::Cron(expression.to_owned())), ..every(queue, id, Duration::ZERO) }
}

async fn create(queues: &mut Queues, schedule: Schedule) -> Result<Schedule, tonic::Status> {
    let request = CreateScheduleRequest { schedule: Some(schedule), replace: false };
    queues.create_schedule(request).await.map(|response| response.into_inner().schedule.unwrap())
}

async fn get(queues: &mut Queues, queue: &str, id: &str) -> Result<Schedule, tonic::Status> {
    let request = GetScheduleRequest { queue: queue.to_owned(), schedule_id: id.to_owned() };
    queues.get_schedule(request).await.map(|response| response.into_inner().schedule.unwrap())
}

fn micros(at: &prost_types::Timestamp) -> u64 {
    at.seconds as u64 * SECOND + at.nanos as u64 / 1000
}

/// Every job of `queue` in Redis: its run_at (the tick it was enqueued for) → how many.
fn ticks_enqueued(redis: &Redis, queue: &str) -> BTreeMap<u64, u32> {
    let mut connection = redis.connection();
    let mut ticks = BTreeMap::new();
    for key in redis.keys().iter().filter(|key| key.contains(&format!("{{{queue}}}:job:"))) {
        let run_at: u64 = redis::cmd("HGET").arg(key).arg("run_at").query(&mut connection).unwrap();
        *ticks.entry(run_at).or_insert(0) += 1;
    }
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_is_created_read_paged_paused_resumed_and_deleted() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("crud");
    let created = create(&mut queues, every(&queue, "hourly", Duration::from_secs(3600))).await.unwrap();
    let ticks: Vec<u64> = created.next_ticks.iter().map(micros).collect();
    assert_eq!(ticks.len(), 5);
    let created_at = micros(created.created_at.as_ref().unwrap());
    assert_eq!(ticks[0], created_at + 3600 * SECOND);
    assert!(ticks.windows(2).all(|pair| pair[1] - pair[0] == 3600 * SECOND), "{ticks:?}");
    assert_eq!(created.job.as_ref().unwrap().r#type, "report");

    let again = create(&mut queues, every(&queue, "hourly", Duration::from_secs(60))).await.unwrap_err();
    assert_eq!((again.code(), reason_of(&again)), (Code::AlreadyExists, ErrorReason::ScheduleExists));
    let replaced = queues
        .create_schedule(CreateScheduleRequest { schedule: Some(cron(&queue, "hourly", "0 * * * *")), replace: true })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(replaced.timing, Some(schedule::Timing::Cron("0 * * * *".into())));
    assert_eq!(micros(&replaced.next_ticks[0]) % (3600 * SECOND), 0, "cron ticks on the hour");

    for id in ["a", "b", "c"] {
        create(&mut queues, cron(&queue, id, "0 0 * * *")).await.unwrap();
    }
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListSchedulesRequest { queue: queue.clone(), page_size: 3, page_token };
        let page = queues.list_schedules(request).await.unwrap().into_inner();
        listed.extend(page.schedules.into_iter().map(|schedule| schedule.schedule_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, ["a", "b", "c", "hourly"]);

    let paused = queues
        .pause_schedule(PauseScheduleRequest { queue: queue.clone(), schedule_id: "a".into() })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(paused.paused && paused.next_ticks.is_empty());
    let resumed = queues
        .resume_schedule(ResumeScheduleRequest { queue: queue.clone(), schedule_id: "a".into() })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(!resumed.paused && resumed.next_ticks.len() == 5);

    let delete = |id: &str| DeleteScheduleRequest { queue: queue.clone(), schedule_id: id.to_owned() };
    assert!(queues.delete_schedule(delete("a")).await.unwrap().into_inner().deleted);
    assert!(!queues.delete_schedule(delete("a")).await.unwrap().into_inner().deleted);
    let gone = get(&mut queues, &queue, "a").await.unwrap_err();
    assert_eq!((gone.code(), reason_of(&gone)), (Code::NotFound, ErrorReason::ScheduleNotFound));
    let missing = queues
        .pause_schedule(PauseScheduleRequest { queue: queue.clone(), schedule_id: "a".into() })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&missing), ErrorReason::ScheduleNotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_naming_the_field_and_write_nothing() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let ok = every("q", "s", Duration::from_secs(10));
    let with_job = |job: EnqueueRequest| Schedule { job: Some(job), ..ok.clone() };
    let cases = [
        ("schedule.schedule_id", Schedule { schedule_id: String::new(), ..ok.clone() }),
        ("schedule.queue", Schedule { queue: String::new(), ..ok.clone() }),
        ("schedule.cron", Schedule { timing: None, ..ok.clone() }),
        ("schedule.cron", cron("q", "s", "every tuesday")),
        ("schedule.cron", cron("q", "s", "61 * * * *")),
        ("schedule.time_zone", Schedule { time_zone: "Mars/Olympus".into(), ..cron("q", "s", "* * * * *") }),
        ("schedule.every", every("q", "s", Duration::from_millis(500))),
        ("schedule.jitter", Schedule { jitter: Some(duration_to_proto(Duration::from_secs(11))), ..ok.clone() }),
        ("schedule.job", Schedule { job: None, ..ok.clone() }),
        ("schedule.job.dedup_key", with_job(EnqueueRequest { dedup_key: "d".into(), ..Default::default() })),
        (
            "schedule.job.delay",
            with_job(EnqueueRequest {
                schedule: Some(enqueue_request::Schedule::Delay(duration_to_proto(Duration::from_secs(1)))),
                ..Default::default()
            }),
        ),
        ("schedule.job.payload", with_job(EnqueueRequest { payload: vec![0; 1024 * 1024 + 1], ..Default::default() })),
        ("schedule.job.priority", with_job(EnqueueRequest { priority: 5000, ..Default::default() })),
    ];
    for (field, schedule) in cases {
        let status = create(&mut queues, schedule).await.unwrap_err();
        assert_eq!((status.code(), reason_of(&status)), (Code::InvalidArgument, ErrorReason::InvalidField), "{field}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let status = get(&mut queues, "q", &"x".repeat(129)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(redis.dbsize(), 0, "bad input wrote {:?}", redis.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_holds_at_most_the_configured_number_of_schedules() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("full");
    for i in 0..1000 {
        create(&mut queues, cron(&queue, &format!("s{i:04}"), "0 0 1 1 *")).await.unwrap();
    }
    let refused = create(&mut queues, cron(&queue, "one-more", "0 0 1 1 *")).await.unwrap_err();
    assert_eq!((refused.code(), reason_of(&refused)), (Code::ResourceExhausted, ErrorReason::TooManySchedules));
    // Replacing one that exists is still allowed.
    let replace = CreateScheduleRequest { schedule: Some(cron(&queue, "s0000", "0 0 2 1 *")), replace: true };
    queues.create_schedule(replace).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_second_schedule_fires_once_per_tick_across_three_replicas_while_one_restarts() {
    let redis = Redis::start();
    let mut replicas: Vec<Baton> = (0..3).map(|_| Baton::start(Some(&redis.url()), &[])).collect();
    let queue = unique("every-second");
    let mut queues = replicas[1].queues().await;
    let created = create(&mut queues, cron(&queue, "pulse", "* * * * * *")).await.unwrap();
    let first = micros(&created.next_ticks[0]);
    let ticks = 60;
    let last = first + (ticks - 1) * SECOND;

    // A third of the way in, one replica is killed; at two thirds it is back.
    let third = Duration::from_secs(ticks / 3);
    tokio::time::sleep(third).await;
    replicas[0].sigkill();
    tokio::time::sleep(third).await;
    replicas[0] = Baton::start(Some(&redis.url()), &[]);
    eventually(PATIENCE + third, "every tick to be enqueued", || async {
        ticks_enqueued(&redis, &queue).range(first..=last).count() as u64 == ticks
    })
    .await;
    // A straggler would have had time to enqueue a tick twice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let enqueued = ticks_enqueued(&redis, &queue);
    let window: Vec<(&u64, &u32)> = enqueued.range(first..=last).collect();
    assert_eq!(window.len() as u64, ticks, "ticks missing: {window:?}");
    for (tick, count) in window {
        assert_eq!(*count, 1, "tick {tick} enqueued {count} times");
        assert_eq!(tick % SECOND, 0, "tick {tick} is not on a second");
    }
    let fired = get(&mut queues, &queue, "pulse").await.unwrap();
    assert!(fired.ticks_fired >= ticks, "{} ticks fired", fired.ticks_fired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_missed_while_every_replica_was_down_are_skipped_or_caught_up_per_policy() {
    let redis = Redis::start();
    let queue = unique("outage");
    let (skip_queue, catch_up_queue) = (format!("{queue}-skip"), format!("{queue}-catch-up"));
    let grace = Duration::from_secs(1);
    let created_at;
    {
        let baton = Baton::start(Some(&redis.url()), &[]);
        let mut queues = baton.queues().await;
        let policy = |queue: &str, missed: MissedTicks| Schedule {
            missed_ticks: missed.into(),
            catch_up_limit: 3,
            misfire_grace: Some(duration_to_proto(grace)),
            ..every(queue, "s", Duration::from_secs(1))
        };
        create(&mut queues, policy(&skip_queue, MissedTicks::Skip)).await.unwrap();
        let created = create(&mut queues, policy(&catch_up_queue, MissedTicks::CatchUp)).await.unwrap();
        created_at = micros(created.created_at.as_ref().unwrap());
        // Dropping the only replica ends it: from here on, nobody ticks.
    }
    let down_from = Instant::now();
    assert!(ticks_enqueued(&redis, &skip_queue).len() <= 1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before_restart: u64 = ticks_enqueued(&redis, &catch_up_queue).len() as u64;
    let _baton = Baton::start(Some(&redis.url()), &[]);
    let restarted_after = down_from.elapsed();
    eventually(PATIENCE, "the first ticks after the outage", || async {
        ticks_enqueued(&redis, &catch_up_queue).len() as u64 > before_restart + 3
            && !ticks_enqueued(&redis, &skip_queue).is_empty()
    })
    .await;
    let missed_window = |ticks: &BTreeMap<u64, u32>| {
        let outage_end = created_at + (restarted_after.as_micros() as u64);
        ticks.keys().filter(|tick| **tick > created_at + 2 * SECOND && **tick + 2 * SECOND < outage_end).count()
    };
    let caught_up = missed_window(&ticks_enqueued(&redis, &catch_up_queue));
    let skipped = missed_window(&ticks_enqueued(&redis, &skip_queue));
    assert!((2..=4).contains(&caught_up), "catch-up of 3 enqueued {caught_up} missed ticks");
    assert_eq!(skipped, 0, "skip enqueued {skipped} missed ticks");
}
