//! Sessions: `GetSession` (with touch) against `HGETALL`.

use std::sync::Arc;

use baton::proto::v1::session_store_service_client::SessionStoreServiceClient;
use baton::proto::v1::{CreateSessionRequest, GetSessionRequest};

use super::Bench;
use crate::redis_baseline::redis_benchmark;

pub async fn run(bench: &mut Bench) {
    let (redis_port, d) = (bench.redis_port, bench.duration);
    let ids: Arc<Vec<String>> = {
        let mut sessions = SessionStoreServiceClient::new(bench.pool.get(0));
        let mut ids = Vec::new();
        for user in 0..1000 {
            let request = CreateSessionRequest { subject: format!("user:{user}"), ..Default::default() };
            ids.push(sessions.create_session(request).await.unwrap().into_inner().session_id);
        }
        Arc::new(ids)
    };
    let raw = |c| Some(redis_benchmark(redis_port, c, d, &["HGETALL", "session:__rand_int__"]));
    let pool = bench.pool.clone();
    bench
        .scenario("Session GetSession", raw, move |w, i| {
            let mut sessions = SessionStoreServiceClient::new(pool.get(w));
            let session_id = ids[((w as u64 * 31 + i) % ids.len() as u64) as usize].clone();
            async move {
                sessions.get_session(GetSessionRequest { session_id, no_touch: false }).await.expect("session");
            }
        })
        .await;
}
