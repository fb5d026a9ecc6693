//! envoyproxy/ratelimit's own YAML config files, read unchanged from a directory (what its
//! `RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/config` holds, or a mounted ConfigMap) and reloaded
//! when they change.
//!
//! Like upstream, every file of the directory is a config file whatever its extension,
//! subdirectories included; names starting with `.` are skipped (a Kubernetes ConfigMap's
//! `..data` links are reached through the visible names). A reload builds the whole rule
//! set anew and swaps it in only if every file is valid: a bad edit leaves the last good
//! rules serving, as upstream does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::envoy::{DomainFile, EnvoyRules};
use crate::task::TaskGuard;
use crate::validate::Limits;

/// How often the directory is read for changes: an edit applies within this.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// A config file larger than this is refused rather than read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The directory's files: path and contents, sorted by path.
type Snapshot = Vec<(PathBuf, String)>;

fn snapshot(dir: &Path) -> Result<Snapshot, String> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    Ok(files)
}

fn collect(dir: &Path, files: &mut Snapshot) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|err| format!("{}: {err}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, as a ConfigMap's visible names are.
        let metadata = std::fs::metadata(&path).map_err(|err| format!("{}: {err}", path.display()))?;
        if metadata.is_dir() {
            collect(&path, files)?;
        } else if metadata.is_file() {
            if metadata.len() > MAX_FILE_BYTES {
                return Err(format!("{}: larger than {MAX_FILE_BYTES} bytes", path.display()));
            }
            let text = std::fs::read_to_string(&path).map_err(|err| format!("{}: {err}", path.display()))?;
            files.push((path, text));
        }
    }
    Ok(())
}

fn fingerprint(files: &Snapshot) -> Vec<u8> {
    let mut hash = Sha256::new();
    for (path, text) in files {
        hash.update(path.as_os_str().as_encoded_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    hash.finalize().to_vec()
}

fn parse(files: &Snapshot) -> Result<Vec<(String, DomainFile)>, String> {
    files
        .iter()
        .map(|(path, text)| {
            let domain: DomainFile =
                serde_saphyr::from_str(text).map_err(|err| format!("{}: {err}", path.display()))?;
            Ok((path.display().to_string(), domain))
        })
        .collect()
}

/// The rules of the config file's `[envoy]` domains and of the directory's files together.
fn build(static_domains: &[DomainFile], files: &Snapshot, limits: &Limits) -> Result<EnvoyRules, String> {
    let parsed = parse(files)?;
    let from_toml = static_domains.iter().map(|domain| ("config file [envoy]".to_owned(), domain));
    EnvoyRules::build(from_toml.chain(parsed.iter().map(|(origin, domain)| (origin.clone(), domain))), limits)
}

/// Reads the directory once; an error names the file and what is wrong in it. Also
/// returns what the reloader compares later reads with, so that a change made between
/// this read and the reloader's start is not missed.
pub fn load(dir: &Path, static_domains: &[DomainFile], limits: &Limits) -> Result<(EnvoyRules, Vec<u8>), String> {
    let files = snapshot(dir)?;
    Ok((build(static_domains, &files, limits)?, fingerprint(&files)))
}

/// Re-reads `dir` every second and publishes each valid change to `rules`; `loaded` is
/// the fingerprint of the read the current rules came from.
pub fn spawn_reloader(
    dir: PathBuf,
    static_domains: Vec<DomainFile>,
    limits: Limits,
    rules: watch::Sender<Arc<EnvoyRules>>,
    loaded: Vec<u8>,
) -> TaskGuard {
    TaskGuard::spawn(async move {
        let read = |dir: PathBuf| async move { tokio::task::spawn_blocking(move || snapshot(&dir)).await };
        let mut last = loaded;
        let mut interval = tokio::time::interval(RELOAD_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let outcome = match read(dir.clone()).await {
                Ok(Ok(files)) => {
                    let seen = fingerprint(&files);
                    if seen == last {
                        continue;
                    }
                    last = seen;
                    build(&static_domains, &files, &limits)
                }
                Ok(Err(error)) => {
                    // An unreadable directory is reported once, not every second.
                    if last.is_empty() {
                        continue;
                    }
                    last = Vec::new();
                    Err(error)
                }
                Err(panic) => Err(format!("reading the directory failed: {panic}")),
            };
            match outcome {
                Ok(new_rules) => {
                    tracing::info!(dir = %dir.display(), domains = new_rules.domain_count(), "envoy rules reloaded");
                    metrics::counter!("baton_envoy_config_reloads_total", "result" => "ok").increment(1);
                    rules.send_replace(Arc::new(new_rules));
                }
                Err(error) => {
                    tracing::error!(dir = %dir.display(), %error, "envoy rules not reloaded: the last valid rules stay");
                    metrics::counter!("baton_envoy_config_reloads_total", "result" => "error").increment(1);
                }
            }
        }
    })
}
