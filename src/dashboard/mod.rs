//! The operator's dashboard: HTML pages served on `--admin-listen` (docs/dashboard.md).
//!
//! Server-rendered with askama (which escapes everything a page shows, payloads included),
//! served by axum (tonic's own HTTP router), assets compiled into the binary. Pages read;
//! forms act, and only for a signed-in `admin` API key. Signing in stores a sign-in in
//! Redis (shared by every replica, revoked by Sign out) and gives the browser only its
//! random id, in an HttpOnly, SameSite=Strict cookie; every form carries a token derived
//! from that id (a cross-site form cannot know it), so an action needs both. Signed out,
//! the pages show the default namespace; signed in, the key's own tenant. Every action is
//! logged with the key's name.

mod pages;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::Form;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::auth::{ApiKeys, Identity};
use crate::election::ElectionManager;
use crate::envoy::EnvoyRules;
use crate::error::Error;
use crate::lock::LockManager;
use crate::queue::{JobState, QueueManager};
use crate::ratelimit::{Algorithm, LimitCheck, LimitSpec, Policy, RateLimiter};
use crate::session::SessionManager;
use crate::store::keys::{DEFAULT_NAMESPACE, Pattern};
use crate::store::{Command, KeyBuilder, Store};
use crate::task::TaskGuard;
use crate::validate::Limits;

use pages::*;

/// The browser's sign-in: a random id, whose hash Redis maps to the key's hash.
const COOKIE: &str = "baton_dashboard";
/// How long a sign-in lasts.
const SIGN_IN_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sign-in attempts one address may make per minute, right or wrong: guessing a key
/// through the form is as slow as this (counted by the rate limiter, in a namespace no
/// tenant can name).
const SIGN_INS_PER_MINUTE: u64 = 10;
const SIGN_IN_LIMIT_NAMESPACE: &str = "dashboard:sign-in";
/// Jobs per page of a queue's list.
const JOBS_PER_PAGE: usize = 50;
/// Queues shown on the queues page (each costs three reads).
const QUEUES_SHOWN: usize = 500;
/// Groups shown on a queue's page.
const GROUPS_SHOWN: usize = 100;
/// Bytes of a payload or result a page shows.
const PREVIEW_BYTES: usize = 4096;

/// What the pages read and act on: the services' own managers, shared with the gRPC side.
pub struct Dashboard {
    pub queues: QueueManager,
    pub locks: LockManager,
    pub elections: ElectionManager,
    pub sessions: SessionManager,
    pub limiter: RateLimiter,
    pub policies: Arc<BTreeMap<String, Policy>>,
    pub envoy: tokio::sync::watch::Receiver<Arc<EnvoyRules>>,
    pub keys: ApiKeys,
    pub store: Store,
    pub limits: Limits,
}

type Shared = Arc<Dashboard>;

/// Serves the dashboard on `listener` until dropped.
pub fn serve(listener: TcpListener, dashboard: Dashboard) -> TaskGuard {
    let app = router(Arc::new(dashboard));
    TaskGuard::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "dashboard listener failed");
        }
    })
}

fn router(dashboard: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/queues") }))
        .route("/assets/dashboard.css", get(|| asset("text/css", include_str!("assets/dashboard.css"))))
        .route("/assets/dashboard.js", get(|| asset("text/javascript", include_str!("assets/dashboard.js"))))
        .route("/favicon.ico", get(|| asset("image/svg+xml", include_str!("assets/favicon.svg"))))
        .route("/login", get(login_page).post(sign_in))
        .route("/logout", post(sign_out))
        .route("/queues", get(queues_page))
        .route("/queues/{queue}", get(queue_page))
        .route("/queues/{queue}/{action}", post(queue_action))
        .route("/queues/{queue}/dead/{action}", post(dead_action))
        .route("/queues/{queue}/jobs/{job}", get(job_page))
        .route("/queues/{queue}/jobs/{job}/cancel", post(cancel_job))
        .route("/locks", get(locks_page))
        .route("/elections", get(elections_page))
        .route("/ratelimits", get(ratelimits_page))
        .route("/sessions", get(sessions_page))
        .route("/sessions/revoke", post(revoke_sessions))
        .route("/redis", get(redis_page))
        .fallback(|| async { Failure::NotFound("no such page".into()) })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(dashboard)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Pages run only their own script and style, and never inside another site's frame.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let policy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                  form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Who is looking: a signed-in key, or nobody (read-only, default namespace).
pub(crate) struct Viewer {
    identity: Option<Identity>,
    /// The sign-in this browser holds, when it is live.
    sign_in: Option<String>,
    /// The form token of that sign-in; empty when signed out.
    csrf: String,
    namespace: Arc<str>,
}

impl FromRequestParts<Shared> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, dashboard: &Shared) -> Result<Self, Self::Rejection> {
        let jar = CookieJar::from_headers(&parts.headers);
        let sign_in =
            jar.get(COOKIE).map(|cookie| cookie.value().to_owned()).filter(|id| crate::secret::is_hex(id, 32));
        let identity = match &sign_in {
            Some(id) => dashboard.signed_in(id).await,
            None => None,
        };
        let sign_in = sign_in.filter(|_| identity.is_some());
        let csrf = sign_in.as_deref().map(form_token).unwrap_or_default();
        let namespace =
            identity.as_ref().map_or_else(|| Arc::from(DEFAULT_NAMESPACE), |identity| identity.tenant.clone());
        Ok(Self { identity, sign_in, csrf, namespace })
    }
}

/// Where a sign-in lives: under the SHA-256 of its id, so Redis never holds a usable one.
fn sign_in_key(id: &str) -> String {
    format!("baton:signin:{}", crate::secret::hex(&Sha256::digest(id.as_bytes())))
}

impl Dashboard {
    /// Who a live sign-in belongs to, while its key is still configured.
    async fn signed_in(&self, id: &str) -> Option<Identity> {
        let read = Command::new("GET").arg(&sign_in_key(id));
        match self.store.command::<Option<String>>("dashboard_sign_in", &read).await {
            Ok(hash) => {
                hash.and_then(|hash| crate::auth::decode_hex(&hash)).and_then(|hash| self.keys.identify_hash(&hash))
            }
            Err(error) => {
                tracing::warn!(%error, "dashboard: could not read a sign-in");
                None
            }
        }
    }
}

/// A form token: bound to the sign-in, unguessable without it, the same on every replica.
fn form_token(sign_in: &str) -> String {
    let digest =
        Sha256::new().chain_update(b"baton dashboard form token\0").chain_update(sign_in.as_bytes()).finalize();
    crate::secret::hex(&digest)
}

impl Viewer {
    /// The admin's name when this viewer may act with `token`; refused otherwise.
    fn authorize(&self, token: &str) -> Result<Arc<str>, Failure> {
        let Some(identity) = &self.identity else {
            return Err(Failure::Forbidden("sign in with an admin API key to act".into()));
        };
        if !identity.admin {
            return Err(Failure::Forbidden(format!("the key {:?} may only read (role admin acts)", identity.name)));
        }
        if !same(token, &self.csrf) {
            return Err(Failure::Forbidden("the form is stale or came from another site: reload the page".into()));
        }
        Ok(identity.name.clone())
    }

    fn chrome(&self, title: impl Into<String>, section: &'static str) -> Chrome {
        Chrome {
            title: title.into(),
            section,
            signed_in_as: self.identity.as_ref().map(|identity| identity.name.to_string()),
            admin: self.identity.as_ref().is_some_and(|identity| identity.admin),
            csrf: self.csrf.clone(),
            tenant: self.namespace.to_string(),
            notice: String::new(),
        }
    }
}

/// Why a page could not be shown or an action not taken.
pub(crate) enum Failure {
    NotFound(String),
    Forbidden(String),
    BadRequest(String),
    TooMany(String),
    Unavailable,
    Internal(String),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument { .. } => Self::BadRequest(error.to_string()),
            Error::Unavailable | Error::StorageFull | Error::ShuttingDown => Self::Unavailable,
            Error::JobNotFound { .. } | Error::SessionNotFound | Error::ScheduleNotFound => {
                Self::NotFound(error.to_string())
            }
            other => Self::Internal(format!("{other:?}")),
        }
    }
}

impl From<askama::Error> for Failure {
    fn from(error: askama::Error) -> Self {
        Self::Internal(format!("template: {error}"))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::NotFound(message) => (StatusCode::NOT_FOUND, message),
            Self::Forbidden(message) => (StatusCode::FORBIDDEN, message),
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            Self::TooMany(message) => (StatusCode::TOO_MANY_REQUESTS, message),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Redis is unavailable; try again shortly".into()),
            Self::Internal(cause) => {
                tracing::error!(%cause, "dashboard page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error (logged)".into())
            }
        };
        let page = ErrorPage {
            chrome: Chrome::plain(status.canonical_reason().unwrap_or("Error")),
            status: status.as_u16(),
            message,
        };
        match page.render() {
            Ok(html) => (status, axum::response::Html(html)).into_response(),
            Err(_) => (status, "error").into_response(),
        }
    }
}

type Page = Result<Response, Failure>;

fn html(template: &impl Template) -> Page {
    Ok(axum::response::Html(template.render()?).into_response())
}

/// Back to `to` after an action, telling what it did.
fn done(to: &str, notice: &str) -> Page {
    let separator = if to.contains('?') { '&' } else { '?' };
    let target = format!("{to}{separator}notice={}", encode(notice));
    Ok(Redirect::to(&target).into_response())
}

/// A path segment or query value, percent-encoded.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A listed state as the page's query names it.
fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Ready => "ready",
        JobState::Scheduled => "scheduled",
        JobState::Active => "active",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Dead => "dead",
        JobState::Cancelled => "cancelled",
    }
}

/// A job's state as the API names it.
fn state_label(state: JobState) -> &'static str {
    match state {
        JobState::Ready => "READY",
        JobState::Scheduled => "SCHEDULED",
        JobState::Active => "ACTIVE",
        JobState::Succeeded => "SUCCEEDED",
        JobState::Failed => "FAILED",
        JobState::Dead => "DEAD",
        JobState::Cancelled => "CANCELLED",
    }
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_micros() as u64)
}

/// `micros` (a Unix time) as UTC, to the second.
fn timestamp(micros: u64) -> String {
    if micros == 0 {
        return "—".into();
    }
    let at = UNIX_EPOCH + Duration::from_micros(micros);
    chrono::DateTime::<chrono::Utc>::from(at).format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A span for people: "4 s", "3 min", "2 h", "5 d".
fn span(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 if duration.is_zero() => "0 s".into(),
        0 => format!("{} ms", duration.as_millis()),
        1..120 => format!("{seconds} s"),
        120..7_200 => format!("{} min", seconds / 60),
        7_200..172_800 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

fn until(micros: u64) -> String {
    span(Duration::from_micros(micros.saturating_sub(now_micros())))
}

fn ago(micros: u64) -> String {
    if micros == 0 {
        return "—".into();
    }
    format!("{} ago", span(Duration::from_micros(now_micros().saturating_sub(micros))))
}

/// Bytes a person may look at: text as text (capped), anything else as its size and hex.
fn preview(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    let shown = &bytes[..bytes.len().min(PREVIEW_BYTES)];
    let cut = if bytes.len() > PREVIEW_BYTES {
        format!("\n… {} more bytes", bytes.len() - PREVIEW_BYTES)
    } else {
        String::new()
    };
    match std::str::from_utf8(shown) {
        Ok(text) => format!("{text}{cut}"),
        Err(error) if error.valid_up_to() + 4 > shown.len() && error.error_len().is_none() => {
            format!("{}{cut}", String::from_utf8_lossy(&shown[..error.valid_up_to()]))
        }
        Err(_) => {
            let hex: Vec<String> = shown.iter().take(256).map(|byte| format!("{byte:02x}")).collect();
            format!("({} bytes, not text) {}", bytes.len(), hex.join(" "))
        }
    }
}

fn check_name(field: &str, value: &str, limits: &Limits) -> Result<(), Failure> {
    crate::validate::key(field, value, limits).map_err(Failure::from)
}

#[derive(Deserialize)]
struct Notice {
    #[serde(default)]
    notice: String,
}

// ---- sign in ----

/// The sign-in form's token: a random value in a cookie and in the form, which a
/// cross-site form cannot read (so nobody can sign a browser in with their own key).
const LOGIN_COOKIE: &str = "baton_login";

async fn login_page(jar: CookieJar, viewer: Viewer) -> Response {
    let token = crate::secret::random_hex(16);
    let cookie =
        Cookie::build((LOGIN_COOKIE, token.clone())).path("/login").http_only(true).same_site(SameSite::Strict).build();
    let page = LoginPage { chrome: viewer.chrome("Sign in", "login"), failed: false, token };
    match html(&page) {
        Ok(page) => (jar.add(cookie), page).into_response(),
        Err(failure) => failure.into_response(),
    }
}

#[derive(Deserialize)]
struct SignIn {
    key: String,
    /// The sign-in form's token.
    #[serde(default)]
    csrf: String,
}

async fn sign_in(
    State(dashboard): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    viewer: Viewer,
    Form(form): Form<SignIn>,
) -> Page {
    let expected = jar.get(LOGIN_COOKIE).map(|cookie| cookie.value().to_owned()).unwrap_or_default();
    if expected.is_empty() || expected != form.csrf {
        return Err(Failure::Forbidden("the sign-in form is stale or came from another site: reload it".into()));
    }
    let attempts = LimitCheck {
        key: peer.ip().to_string(),
        spec: LimitSpec {
            algorithm: Algorithm::FixedWindow,
            limit: SIGN_INS_PER_MINUTE,
            period: Duration::from_secs(60),
            burst: 0,
        },
        cost: 1,
    };
    let limiter = dashboard.limiter.scoped(&Arc::from(SIGN_IN_LIMIT_NAMESPACE));
    let verdict = limiter.check(&[attempts], false, false).await?;
    if !verdict.allowed {
        tracing::warn!(%peer, "dashboard sign-in refused: too many attempts");
        return Err(Failure::TooMany(format!(
            "too many sign-in attempts from this address: try again in {}",
            span(verdict.retry_after)
        )));
    }
    let Some((identity, hash)) = dashboard.keys.identify(form.key.trim()) else {
        tracing::warn!("dashboard sign-in with an unknown key");
        let page = LoginPage { chrome: viewer.chrome("Sign in", "login"), failed: true, token: form.csrf };
        return Ok((StatusCode::UNAUTHORIZED, html(&page)?).into_response());
    };
    let id = crate::secret::random_hex(32);
    let ttl = SIGN_IN_TTL.as_millis() as u64;
    let store = Command::new("SET").arg(&sign_in_key(&id)).arg(&crate::secret::hex(&hash)).arg("PX").arg(ttl);
    dashboard.store.command::<()>("dashboard_sign_in", &store).await.map_err(Error::from)?;
    tracing::info!(key = %identity.name, admin = identity.admin, "dashboard sign-in");
    let cookie = Cookie::build((COOKIE, id)).path("/").http_only(true).same_site(SameSite::Strict).build();
    Ok((jar.add(cookie), Redirect::to("/queues")).into_response())
}

#[derive(Deserialize)]
struct Token {
    #[serde(default)]
    csrf: String,
}

/// Ends the sign-in for good: a copy of its cookie is worth nothing afterwards.
async fn sign_out(State(dashboard): State<Shared>, jar: CookieJar, viewer: Viewer, Form(form): Form<Token>) -> Page {
    if let Some(id) = &viewer.sign_in {
        if !same(&form.csrf, &viewer.csrf) {
            return Err(Failure::Forbidden("the form is stale: reload the page".into()));
        }
        dashboard
            .store
            .command::<i64>("dashboard_sign_out", &Command::new("DEL").arg(&sign_in_key(id)))
            .await
            .map_err(Error::from)?;
        if let Some(identity) = &viewer.identity {
            tracing::info!(key = %identity.name, "dashboard sign-out");
        }
    }
    Ok((jar.remove(Cookie::build(COOKIE).path("/")), Redirect::to("/queues")).into_response())
}

/// Constant-time equality of two tokens.
fn same(presented: &str, expected: &str) -> bool {
    presented.len() == expected.len()
        && presented.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

// ---- queues ----

async fn queues_page(State(dashboard): State<Shared>, viewer: Viewer, Query(notice): Query<Notice>) -> Page {
    let manager = dashboard.queues.scoped(&viewer.namespace);
    let now = now_micros();
    let mut rows = Vec::new();
    let (queues, total) = manager.queues(QUEUES_SHOWN).await?;
    for (name, stats) in queues {
        let rates = manager.rates(&name, now).await?;
        rows.push(QueueRow::new(name, &stats, rates));
    }
    let mut chrome = viewer.chrome("Queues", "queues");
    chrome.notice = notice.notice;
    html(&QueuesPage { chrome, queues: rows, total })
}

#[derive(Deserialize)]
struct JobsQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    page: usize,
    #[serde(default)]
    notice: String,
}

fn listed_state(name: &str) -> Option<JobState> {
    Some(match name {
        "" | "ready" => JobState::Ready,
        "scheduled" => JobState::Scheduled,
        "active" => JobState::Active,
        "succeeded" => JobState::Succeeded,
        "dead" => JobState::Dead,
        _ => return None,
    })
}

async fn queue_page(
    State(dashboard): State<Shared>,
    viewer: Viewer,
    Path(queue): Path<String>,
    Query(query): Query<JobsQuery>,
) -> Page {
    check_name("queue", &queue, &dashboard.limits)?;
    let state = listed_state(&query.state)
        .ok_or_else(|| Failure::BadRequest("state must be ready, scheduled, active, succeeded or dead".into()))?;
    let page = query.page.min(10_000);
    let queues = dashboard.queues.scoped(&viewer.namespace);
    let stats = queues.stats(&queue).await?;
    let rates = queues.rates(&queue, now_micros()).await?;
    let (jobs, more) = queues.list_jobs(&queue, state, page * JOBS_PER_PAGE, JOBS_PER_PAGE).await?;
    let groups = queues.groups(&queue, GROUPS_SHOWN).await?;
    let (schedules, _) = queues.list_schedules(&queue, "", 100).await?;
    let mut chrome = viewer.chrome(format!("Queue {queue}"), "queues");
    chrome.notice = query.notice;
    html(&QueuePage {
        chrome,
        path: format!("/queues/{}", encode(&queue)),
        stats: QueueRow::new(queue, &stats, rates),
        state: state_name(state),
        jobs: jobs.iter().map(JobRow::new).collect(),
        page,
        more,
        groups: groups.into_iter().map(|(name, ready, active)| GroupRow { name, ready, active }).collect(),
        schedules: schedules.iter().map(ScheduleRow::new).collect(),
    })
}

#[derive(Deserialize)]
struct DeadAction {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    job: Vec<String>,
    #[serde(default)]
    all: bool,
}

impl DeadAction {
    /// The chosen jobs, or none meaning all of them; refuses an empty selection.
    fn selection(&self) -> Result<&[String], Failure> {
        match (self.all, self.job.is_empty()) {
            (true, _) => Ok(&[]),
            (false, true) => Err(Failure::BadRequest("select at least one job".into())),
            (false, false) if self.job.len() > 1000 => Err(Failure::BadRequest("at most 1000 jobs at once".into())),
            (false, false) => Ok(&self.job),
        }
    }
}

/// Pause or resume: `/queues/{queue}/pause`, `/queues/{queue}/resume`.
async fn queue_action(
    State(dashboard): State<Shared>,
    viewer: Viewer,
    Path((queue, action)): Path<(String, String)>,
    Form(form): Form<Token>,
) -> Page {
    let admin = viewer.authorize(&form.csrf)?;
    check_name("queue", &queue, &dashboard.limits)?;
    let queues = dashboard.queues.scoped(&viewer.namespace);
    let done_as = match action.as_str() {
        "pause" => queues.pause(&queue).await.map(|()| "Queue paused")?,
        "resume" => queues.resume(&queue).await.map(|()| "Queue resumed")?,
        _ => return Err(Failure::NotFound("no such action".into())),
    };
    tracing::info!(key = %admin, tenant = %viewer.namespace, %queue, %action, "dashboard: queue {action}d");
    done(&format!("/queues/{}", encode(&queue)), done_as)
}

/// Retry or delete dead jobs: `/queues/{queue}/dead/retry`, `/queues/{queue}/dead/delete`.
async fn dead_action(
    State(dashboard): State<Shared>,
    viewer: Viewer,
    Path((queue, action)): Path<(String, String)>,
    Form(form): Form<DeadAction>,
) -> Page {
    let admin = viewer.authorize(&form.csrf)?;
    check_name("queue", &queue, &dashboard.limits)?;
    let queues = dashboard.queues.scoped(&viewer.namespace);
    let (count, verb) = match action.as_str() {
        "retry" => (queues.retry_dead(&queue, form.selection()?).await?, "Retried"),
        "delete" => (queues.delete_dead(&queue, form.selection()?).await?, "Deleted"),
        _ => return Err(Failure::NotFound("no such action".into())),
    };
    tracing::info!(key = %admin, tenant = %viewer.namespace, %queue, %action, count, all = form.all, "dashboard: dead jobs");
    done(&format!("/queues/{}?state=dead", encode(&queue)), &format!("{verb} {count} dead jobs"))
}

async fn job_page(
    State(dashboard): State<Shared>,
    viewer: Viewer,
    Path((queue, job_id)): Path<(String, String)>,
    Query(notice): Query<Notice>,
) -> Page {
    let job = dashboard
        .queues
        .scoped(&viewer.namespace)
        .get_job(&job_id)
        .await?
        .filter(|job| job.queue == queue)
        .ok_or_else(|| {
            Failure::NotFound(format!("no job {job_id:?} in this queue (it may have passed its retention)"))
        })?;
    let mut chrome = viewer.chrome(format!("Job {job_id}"), "queues");
    chrome.notice = notice.notice;
    html(&JobPage { chrome, queue_path: format!("/queues/{}", encode(&queue)), job: JobDetail::new(&job) })
}

async fn cancel_job(
    State(dashboard): State<Shared>,
    viewer: Viewer,
    Path((queue, job_id)): Path<(String, String)>,
    Form(form): Form<Token>,
) -> Page {
    let admin = viewer.authorize(&form.csrf)?;
    let queues = dashboard.queues.scoped(&viewer.namespace);
    if queues.get_job(&job_id).await?.is_none_or(|job| job.queue != queue) {
        return Err(Failure::NotFound(format!("no job {job_id:?} in this queue")));
    }
    let (cancelled, _) = queues.cancel(&job_id).await?;
    tracing::info!(key = %admin, tenant = %viewer.namespace, %queue, job = %job_id, cancelled, "dashboard: job cancelled");
    let notice = if cancelled { "Job cancelled" } else { "The job had already finished" };
    done(&format!("/queues/{}/jobs/{}", encode(&queue), encode(&job_id)), notice)
}

// ---- locks and elections ----

/// Names shown for one prefix lookup.
const LOOKUP_LIMIT: usize = 50;
/// SCAN steps (of 1,000 keys) one lookup may take.
const LOOKUP_ROUNDS: usize = 100;

#[derive(Deserialize)]
struct Lookup {
    #[serde(default)]
    prefix: String,
}

/// What a prefix lookup found: the names (the prefix itself first, as an exact name), and
/// how complete the search was.
struct Found {
    names: Vec<String>,
    note: String,
}

/// The names under `pattern` in `namespace` that start with `prefix` (their `part` key
/// exists), by SCAN where one walks every key; on a Cluster only the exact name.
async fn lookup(
    dashboard: &Dashboard,
    namespace: &Arc<str>,
    pattern: Pattern,
    prefix: &str,
    part: &str,
) -> Result<Found, Failure> {
    check_name("prefix", prefix, &dashboard.limits)?;
    let keys = KeyBuilder::new(namespace.clone());
    let mut names = vec![prefix.to_owned()];
    let mut note = String::new();
    match keys.units_starting_with(pattern, prefix, part) {
        None => note = "A name starting with a hash tag is looked up exactly.".into(),
        Some(glob) => match dashboard
            .store
            .scan("dashboard_lookup", &glob, LOOKUP_LIMIT, LOOKUP_ROUNDS)
            .await
            .map_err(Error::from)?
        {
            None => note = "On a Redis Cluster names are looked up exactly, not by prefix.".into(),
            Some((found, complete)) => {
                names.extend(
                    found.iter().filter_map(|key| keys.unit_of(pattern, key, part)).filter(|name| name != prefix),
                );
                if !complete || names.len() > LOOKUP_LIMIT {
                    note = format!(
                        "Showing the first names found; type more of the name to narrow it (at most {LOOKUP_LIMIT})."
                    );
                }
            }
        },
    }
    names.truncate(LOOKUP_LIMIT);
    Ok(Found { names, note })
}

async fn locks_page(State(dashboard): State<Shared>, viewer: Viewer, Query(lookup_query): Query<Lookup>) -> Page {
    let prefix = lookup_query.prefix.trim().to_owned();
    let mut rows = Vec::new();
    let mut note = String::new();
    if !prefix.is_empty() {
        let found = lookup(&dashboard, &viewer.namespace, Pattern::Lock, &prefix, "holders").await?;
        let locks = dashboard.locks.scoped(&viewer.namespace);
        for name in found.names {
            let holders = locks.describe(&name).await?;
            if holders.is_empty() {
                continue;
            }
            let waiting = locks.has_waiters(&name).await?;
            rows.extend(holders.iter().map(|holder| HolderRow::new(&name, holder, waiting)));
        }
        note = found.note;
    }
    html(&LocksPage { chrome: viewer.chrome("Locks", "locks"), searched: !prefix.is_empty(), prefix, rows, note })
}

async fn elections_page(State(dashboard): State<Shared>, viewer: Viewer, Query(lookup_query): Query<Lookup>) -> Page {
    let prefix = lookup_query.prefix.trim().to_owned();
    let mut rows = Vec::new();
    let mut note = String::new();
    if !prefix.is_empty() {
        let found = lookup(&dashboard, &viewer.namespace, Pattern::Election, &prefix, "state").await?;
        let elections = dashboard.elections.scoped(&viewer.namespace);
        for name in found.names {
            if let Some(leader) = elections.leader(&name).await? {
                rows.push(LeaderRow::new(&name, &leader));
            }
        }
        note = found.note;
    }
    html(&ElectionsPage {
        chrome: viewer.chrome("Elections", "elections"),
        searched: !prefix.is_empty(),
        prefix,
        rows,
        note,
    })
}

// ---- rate limits ----

#[derive(Deserialize)]
struct DryRun {
    #[serde(default)]
    policy: String,
    #[serde(default)]
    key: String,
}

async fn ratelimits_page(State(dashboard): State<Shared>, viewer: Viewer, Query(dry_run): Query<DryRun>) -> Page {
    let policies: Vec<PolicyRow> =
        dashboard.policies.iter().map(|(name, policy)| PolicyRow::new(name, policy)).collect();
    let domains: Vec<String> = dashboard.envoy.borrow().domain_names().map(str::to_owned).collect();
    let mut outcome = None;
    if !dry_run.key.is_empty() {
        check_name("key", &dry_run.key, &dashboard.limits)?;
        let policy = dashboard
            .policies
            .get(&dry_run.policy)
            .ok_or_else(|| Failure::BadRequest(format!("no policy named {:?}", dry_run.policy)))?;
        let check = LimitCheck { key: dry_run.key.clone(), spec: policy.spec, cost: 1 };
        let verdict = dashboard.limiter.scoped(&viewer.namespace).check(&[check], true, false).await?;
        outcome = verdict.outcomes.first().map(DryRunRow::new);
    }
    html(&RateLimitsPage {
        chrome: viewer.chrome("Rate limits", "ratelimits"),
        policies,
        domains,
        policy: dry_run.policy,
        key: dry_run.key,
        outcome,
    })
}

// ---- sessions ----

#[derive(Deserialize)]
struct SubjectQuery {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    notice: String,
}

async fn sessions_page(State(dashboard): State<Shared>, viewer: Viewer, Query(query): Query<SubjectQuery>) -> Page {
    let subject = query.subject.trim().to_owned();
    let mut sessions = Vec::new();
    if !subject.is_empty() {
        check_name("subject", &subject, &dashboard.limits)?;
        let found = dashboard.sessions.scoped(&viewer.namespace).list(&subject).await?;
        sessions = found.iter().map(SessionRow::new).collect();
    }
    let mut chrome = viewer.chrome("Sessions", "sessions");
    chrome.notice = query.notice;
    html(&SessionsPage { chrome, searched: !subject.is_empty(), subject, sessions })
}

#[derive(Deserialize)]
struct Revoke {
    #[serde(default)]
    csrf: String,
    subject: String,
    /// One session's handle; empty revokes them all.
    #[serde(default)]
    handle: String,
}

async fn revoke_sessions(State(dashboard): State<Shared>, viewer: Viewer, Form(form): Form<Revoke>) -> Page {
    let admin = viewer.authorize(&form.csrf)?;
    check_name("subject", &form.subject, &dashboard.limits)?;
    let handles: Vec<String> = if form.handle.is_empty() { Vec::new() } else { vec![form.handle.clone()] };
    let revoked = dashboard.sessions.scoped(&viewer.namespace).revoke(&form.subject, &handles, "").await?;
    tracing::info!(key = %admin, tenant = %viewer.namespace, subject = %form.subject, revoked, "dashboard: sessions revoked");
    done(&format!("/sessions?subject={}", encode(&form.subject)), &format!("Revoked {revoked} sessions"))
}

// ---- redis ----

async fn redis_page(State(dashboard): State<Shared>, viewer: Viewer) -> Page {
    let nodes = dashboard.store.info_by_node("dashboard_info", None).await.map_err(Error::from)?;
    let nodes: Vec<RedisNode> = nodes.iter().map(|(address, info)| RedisNode::parse(address, info)).collect();
    html(&RedisPage { chrome: viewer.chrome("Redis", "redis"), nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_text_and_binary_without_losing_the_size() {
        assert_eq!(preview(b"<script>"), "<script>");
        assert!(preview(&[0xff, 0x00, 0x01]).starts_with("(3 bytes, not text) ff 00 01"));
        let long = "é".repeat(PREVIEW_BYTES);
        let shown = preview(long.as_bytes());
        assert!(shown.ends_with(&format!("… {} more bytes", long.len() - PREVIEW_BYTES)), "{shown:.40}");
    }

    #[test]
    fn form_tokens_differ_per_key_and_encoding_keeps_separators_out() {
        assert_ne!(form_token("a"), form_token("b"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert_eq!(form_token("a").len(), 64);
        assert_eq!(encode("a/b c?d"), "a%2Fb%20c%3Fd");
        assert_eq!(span(Duration::from_secs(90)), "90 s");
        assert_eq!(span(Duration::from_secs(3 * 3600)), "3 h");
    }
}
