//! Honest latency: Redis, baton and this load generator each on CPUs of their own where the
//! machine has enough, and each scenario's peak and p99 at half of that peak measured so.
//! Unpinned, the load generator's own bursts of work delay the very calls it times.
//!
//! With two CPUs three processes cannot have one each: the load generator gets one and
//! Redis and baton share the other, which still keeps the timer off the measured cores. The
//! note under the report says which layout ran. Every process gets all CPUs back after.

use std::sync::Arc;

use baton::proto::v1::Algorithm;

use super::{Bench, Call, ceiling, check, lock};

/// A scenario's calls, whichever scenario.
type Op = Arc<dyn Fn(usize, u64) -> Call + Send + Sync>;

/// Which CPUs each process was pinned to.
struct Layout {
    redis: Vec<usize>,
    baton: Vec<usize>,
    load: Vec<usize>,
}

impl Layout {
    /// Redis is single-threaded: one CPU. Baton and the load generator split the rest; with
    /// only two CPUs, Redis and baton share one. `None` with a single CPU.
    fn for_cpus(cpus: &[usize]) -> Option<Self> {
        match cpus {
            [] | [_] => None,
            [first, second] => Some(Self { redis: vec![*second], baton: vec![*second], load: vec![*first] }),
            [redis, rest @ ..] => {
                let (baton, load) = rest.split_at(rest.len().div_ceil(2));
                Some(Self { redis: vec![*redis], baton: baton.to_vec(), load: load.to_vec() })
            }
        }
    }

    fn describe(&self) -> String {
        format!("Redis on CPU {:?}, baton on {:?}, load generator on {:?}", self.redis, self.baton, self.load)
    }
}

pub async fn run(bench: &mut Bench) {
    let all = allowed_cpus();
    let Some(layout) = Layout::for_cpus(&all) else {
        bench.notes.push("Pinned latency: skipped, this machine lets the benchmark use one CPU.".into());
        return;
    };
    let own_pid = std::process::id();
    let pinned = [(bench.redis_pid, &layout.redis), (bench.baton_pid, &layout.baton), (own_pid, &layout.load)];
    for (pid, cpus) in pinned {
        pin(pid, cpus);
    }
    let callers = bench.levels.iter().copied().max().unwrap_or(1);
    let pool = bench.pool.clone();
    let scenarios: [(&str, Op); 3] = [
        (ceiling::BATON_HEALTH, Arc::new(ceiling::health(pool.clone()))),
        ("Check fixed window", Arc::new(check::check_one(pool.clone(), Algorithm::FixedWindow))),
        (lock::LOCK_DISTINCT, Arc::new(lock::cycle(pool))),
    ];
    for (name, op) in scenarios {
        let name = format!("{name}, pinned");
        crate::measure::scenario(&mut bench.rows, &name, &[callers], bench.duration, |_| None, move |w, i| op(w, i))
            .await;
    }
    for (pid, _) in pinned {
        pin(pid, &all);
    }
    bench.notes.push(format!(
        "Pinned rows (\", pinned\"): {}; the peak at {callers} callers, then p99 at half of it.",
        layout.describe()
    ));
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and sched_getaffinity writes at most
    // the size it is given into it.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|cpu| libc::CPU_ISSET(*cpu, &set)).collect()
    }
}

/// Pins every thread of process `pid` to `cpus`; threads started later inherit it.
fn pin(pid: u32, cpus: &[usize]) {
    // SAFETY: as in `allowed_cpus`; sched_setaffinity only reads the set.
    #[allow(unsafe_code)]
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(*cpu, &mut set);
        }
        set
    };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    for thread in threads {
        let Some(tid) = thread.file_name().to_str().and_then(|tid| tid.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        // SAFETY: as above. A thread that ended since the listing is refused (ESRCH), harmlessly.
        #[allow(unsafe_code)]
        unsafe {
            libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Layout;

    fn layout(cpus: &[usize]) -> Option<(Vec<usize>, Vec<usize>, Vec<usize>)> {
        Layout::for_cpus(cpus).map(|l| (l.redis, l.baton, l.load))
    }

    #[test]
    fn one_cpu_pins_nothing() {
        assert!(layout(&[]).is_none());
        assert!(layout(&[3]).is_none());
    }

    #[test]
    fn two_cpus_keep_the_load_generator_apart() {
        assert_eq!(layout(&[0, 1]), Some((vec![1], vec![1], vec![0])));
    }

    #[test]
    fn more_cpus_give_each_process_its_own() {
        assert_eq!(layout(&[0, 1, 2]), Some((vec![0], vec![1], vec![2])));
        assert_eq!(layout(&[2, 3, 4, 5, 6]), Some((vec![2], vec![3, 4], vec![5, 6])));
        assert_eq!(layout(&[0, 1, 2, 3]), Some((vec![0], vec![1, 2], vec![3])));
    }
}
