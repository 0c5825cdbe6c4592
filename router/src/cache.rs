//! An optional cache of query answers, kept in this router's memory and in Redis (shared
//! by every router), with a short TTL.
//!
//! A lookup tries memory, then Redis, then the cluster; concurrent misses of one answer
//! compute it once. An answer taken from Redis is kept in memory only for the time it has
//! left there, so no answer is served older than the TTL. The cache only ever saves work:
//! when Redis is slow, down or unset, answers come from the cluster as if there were no
//! cache (and the failure is counted). Queries asking for `consistency=linearizable`
//! explicitly always bypass it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::metrics::RouterMetrics;
use crate::query::{explicitly_linearizable, QueryFields};

/// Where cached answers live and for how long.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`; empty: no cache.
    pub redis_url: String,
    /// How long an answer is served from the cache.
    pub ttl_ms: u64,
    /// Longest wait for Redis before the cache is skipped for that request.
    pub timeout_ms: u64,
    /// Most answers kept in this router's memory.
    pub local_entries: usize,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            redis_url: String::new(),
            ttl_ms: 1_000,
            timeout_ms: 50,
            local_entries: 1_024,
        }
    }
}

/// Prefix of every cache key.
const KEY_PREFIX: &str = "sentinel:answer:";

/// Answers in this router's memory, each until its deadline.
#[derive(Default)]
struct Local {
    answers: HashMap<String, (Instant, Bytes)>,
    /// One lock per answer being computed, so concurrent misses compute it once.
    computing: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// The query-answer cache.
pub struct QueryCache {
    redis: Option<ConnectionManager>,
    local: Mutex<Local>,
    ttl: Duration,
    timeout: Duration,
    capacity: usize,
    metrics: RouterMetrics,
}

impl QueryCache {
    /// A cache as `config` says (none when no URL is set); connects lazily, so a Redis
    /// that is down at start-up delays nothing.
    pub fn new(
        config: &CacheSection,
        metrics: RouterMetrics,
    ) -> Result<QueryCache, redis::RedisError> {
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let redis = match config.redis_url.trim() {
            "" => None,
            url => Some(ConnectionManager::new_lazy_with_config(
                redis::Client::open(url)?,
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1)),
            )?),
        };
        Ok(QueryCache {
            redis,
            local: Mutex::default(),
            ttl: Duration::from_millis(config.ttl_ms.max(1)),
            timeout,
            capacity: config.local_entries.max(1),
            metrics,
        })
    }

    /// An answer as JSON: from the cache under `key` when it holds one, otherwise from
    /// `compute` (then cached when it succeeded). No key: computed, never cached.
    pub async fn answer<E>(
        &self,
        key: Option<String>,
        compute: impl Future<Output = Result<Value, E>>,
    ) -> Result<Bytes, E> {
        let encode =
            |answer: Value| Bytes::from(serde_json::to_vec(&answer).expect("answers serialize"));
        let (Some(redis), Some(key)) = (self.redis.clone(), key) else {
            return compute.await.map(encode);
        };
        if let Some(answer) = self.remembered(&key) {
            self.count("local_hit");
            return Ok(answer);
        }
        let computing = self.lock_for(&key);
        let _only_one = computing.lock().await;
        if let Some(answer) = self.remembered(&key) {
            self.count("local_hit");
            return Ok(answer);
        }
        if let Some((answer, left)) = self.in_redis(redis.clone(), &key).await {
            self.count("hit");
            self.remember(&key, answer.clone(), left);
            return Ok(answer);
        }
        let answer = encode(compute.await?);
        self.remember(&key, answer.clone(), self.ttl);
        let (bytes, ttl_ms, timeout) = (answer.clone(), self.ttl.as_millis() as u64, self.timeout);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut connection = redis;
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(bytes.as_ref()).arg("PX").arg(ttl_ms);
            let store = set.query_async::<()>(&mut connection);
            if !matches!(tokio::time::timeout(timeout, store).await, Ok(Ok(()))) {
                metrics
                    .cache_lookups
                    .with_label_values(&["store_error"])
                    .inc();
            }
        });
        Ok(answer)
    }

    /// The answer in Redis under `key` and how long it has left there.
    async fn in_redis(&self, mut redis: ConnectionManager, key: &str) -> Option<(Bytes, Duration)> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let lookup = pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut redis);
        match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok((Some(bytes), left_ms))) if left_ms > 0 => {
                Some((Bytes::from(bytes), Duration::from_millis(left_ms as u64)))
            }
            Ok(Ok(_)) => {
                self.count("miss");
                None
            }
            Ok(Err(_)) | Err(_) => {
                self.count("error");
                None
            }
        }
    }

    fn remembered(&self, key: &str) -> Option<Bytes> {
        let local = self.local.lock().expect("cache lock");
        local
            .answers
            .get(key)
            .filter(|(deadline, _)| *deadline > Instant::now())
            .map(|(_, answer)| answer.clone())
    }

    fn remember(&self, key: &str, answer: Bytes, ttl: Duration) {
        let now = Instant::now();
        let mut local = self.local.lock().expect("cache lock");
        if local.answers.len() >= self.capacity {
            local.answers.retain(|_, (deadline, _)| *deadline > now);
            if local.answers.len() >= self.capacity {
                local.answers.clear();
            }
        }
        local.answers.insert(key.to_owned(), (now + ttl, answer));
    }

    /// The lock that lets one caller at a time compute the answer under `key`.
    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut local = self.local.lock().expect("cache lock");
        if local.computing.len() >= self.capacity {
            local
                .computing
                .retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        local.computing.entry(key.to_owned()).or_default().clone()
    }

    fn count(&self, result: &str) {
        self.metrics
            .cache_lookups
            .with_label_values(&[result])
            .inc();
    }
}

/// The cache key of a query on `route` given its typed fields (the same for the same
/// parameters in any order, through either API); none when its `consistency` asks
/// explicitly for linearizable reads, which always bypass the cache.
pub fn cache_key(route: &str, fields: &impl QueryFields, consistency: &str) -> Option<String> {
    let query = fields.canonical();
    (!explicitly_linearizable(consistency)).then(|| format!("{KEY_PREFIX}{route}?{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::query::fields_of;
    use sentinel_proto::v1::{AnomaliesQuery, BaselinesQuery};

    fn anomalies(query: &str) -> AnomaliesQuery {
        let (fields, problems) = fields_of(Some(query));
        assert!(problems.is_empty(), "{problems:?}");
        fields
    }

    #[test]
    fn keys_ignore_parameter_order_and_keep_values_apart() {
        let key = |route, query: &str| cache_key(route, &anomalies(query), "");
        let a = key("/api/v1/anomalies", "limit=5&severity=high");
        assert_eq!(a, key("/api/v1/anomalies", "severity=high&limit=5"));
        assert_eq!(
            a.as_deref(),
            Some("sentinel:answer:/api/v1/anomalies?severity=high&limit=5")
        );
        assert_eq!(a, key("/api/v1/anomalies", "limit=05&severity=high&hours="));
        assert_ne!(a, key("/api/v1/anomalies", "severity=high%26limit%3D5"));
        assert_ne!(a, key("/api/v1/anomalies", "severity=high&limit=6"));
        assert_ne!(a, key("/api/v1/baselines", "limit=5&severity=high"));
        let typed = AnomaliesQuery {
            severity: "high".into(),
            limit: Some(5),
            ..AnomaliesQuery::default()
        };
        assert_eq!(
            a,
            cache_key("/api/v1/anomalies", &typed, ""),
            "as gRPC asks"
        );
    }

    #[test]
    fn only_explicitly_linearizable_queries_bypass_the_cache() {
        let fields = BaselinesQuery::default();
        assert!(cache_key("/api/v1/baselines", &fields, "").is_some());
        assert!(cache_key("/api/v1/baselines", &fields, "stale").is_some());
        assert!(cache_key("/api/v1/baselines", &fields, "linearizable").is_none());
    }

    #[tokio::test]
    async fn without_redis_every_answer_is_computed() {
        let cache =
            QueryCache::new(&CacheSection::default(), RouterMetrics::new().unwrap()).unwrap();
        let mut computed = 0;
        for _ in 0..2 {
            let answer: Result<Bytes, ()> = cache
                .answer(Some("sentinel:answer:/api/v1/baselines?".into()), async {
                    computed += 1;
                    Ok(Value::Null)
                })
                .await;
            assert_eq!(answer, Ok(Bytes::from_static(b"null")));
        }
        assert_eq!(computed, 2);
    }
}
