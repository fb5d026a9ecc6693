//! Cache `Get` and `Set` of 100-byte values against `GET` and `SET`.

use std::time::Duration;

use baton::proto::duration_to_proto;
use baton::proto::v1::cache_service_client::CacheServiceClient;
use baton::proto::v1::{GetRequest, SetRequest};

use super::Bench;
use crate::redis_baseline::redis_benchmark;

pub async fn run(bench: &mut Bench) {
    let (redis_port, d) = (bench.redis_port, bench.duration);
    {
        let mut cache = CacheServiceClient::new(bench.pool.get(0));
        for key in 0..10_000 {
            cache
                .set(SetRequest {
                    key: format!("user:{key}"),
                    value: vec![b'x'; 100],
                    ttl: Some(duration_to_proto(Duration::from_secs(600))),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    let raw = |c| Some(redis_benchmark(redis_port, c, d, &["GET", "user:__rand_int__"]));
    let pool = bench.pool.clone();
    bench
        .scenario("Cache Get (hit, 100 B)", raw, move |w, i| {
            let mut cache = CacheServiceClient::new(pool.get(w));
            let key = format!("user:{}", (w as u64 * 7919 + i) % 10_000);
            async move {
                cache.get(GetRequest { key }).await.expect("get");
            }
        })
        .await;
    let value = "y".repeat(100);
    let raw = |c| Some(redis_benchmark(redis_port, c, d, &["SET", "user:__rand_int__", &value]));
    let pool = bench.pool.clone();
    bench
        .scenario("Cache Set (100 B)", raw, move |w, i| {
            let mut cache = CacheServiceClient::new(pool.get(w));
            let key = format!("user:{}", (w as u64 * 7919 + i) % 10_000);
            async move {
                let request = SetRequest {
                    key,
                    value: vec![b'y'; 100],
                    ttl: Some(duration_to_proto(Duration::from_secs(600))),
                    ..Default::default()
                };
                cache.set(request).await.expect("set");
            }
        })
        .await;
}
