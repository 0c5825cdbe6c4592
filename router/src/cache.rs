//! An optional cache of query answers in Redis, shared by every router, with a short TTL.
//!
//! The cache only ever saves work: when Redis is slow, down or unset, the answer is
//! computed from the cluster as if there were no cache (and the failure is counted).
//! Queries asking for `consistency=linearizable` explicitly always bypass it.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::Value;

use crate::metrics::RouterMetrics;
use crate::query::Query;

/// Where cached answers live and for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`; empty: no cache.
    pub redis_url: String,
    /// How long an answer is served from the cache.
    pub ttl_ms: u64,
    /// Longest wait for Redis before the cache is skipped for that request.
    pub timeout_ms: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            redis_url: String::new(),
            ttl_ms: 1_000,
            timeout_ms: 50,
        }
    }
}

/// Prefix of every cache key.
const KEY_PREFIX: &str = "sentinel:answer:";

/// The query-answer cache.
pub struct QueryCache {
    redis: Option<ConnectionManager>,
    ttl: Duration,
    timeout: Duration,
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
            ttl: Duration::from_millis(config.ttl_ms.max(1)),
            timeout,
            metrics,
        })
    }

    /// The answer of `query` on `route`: from the cache when it holds one, otherwise
    /// from `compute` (then cached when it succeeded).
    pub async fn answer<E>(
        &self,
        route: &str,
        query: &Query,
        compute: impl Future<Output = Result<Value, E>>,
    ) -> Result<Value, E> {
        let Some(redis) = self.redis.clone().filter(|_| cacheable(query)) else {
            return compute.await;
        };
        let key = cache_key(route, query);
        let mut connection = redis.clone();
        let cached: Option<Result<Option<Vec<u8>>, _>> =
            tokio::time::timeout(self.timeout, connection.get(&key))
                .await
                .ok();
        match cached {
            Some(Ok(Some(bytes))) => match serde_json::from_slice(&bytes) {
                Ok(answer) => {
                    self.count("hit");
                    return Ok(answer);
                }
                Err(_) => self.count("error"),
            },
            Some(Ok(None)) => self.count("miss"),
            Some(Err(_)) | None => self.count("error"),
        }
        let answer = compute.await?;
        let bytes = serde_json::to_vec(&answer).expect("answers serialize");
        let ttl_ms = self.ttl.as_millis() as u64;
        let (timeout, metrics) = (self.timeout, self.metrics.clone());
        tokio::spawn(async move {
            let mut connection = redis;
            let stored =
                tokio::time::timeout(timeout, connection.pset_ex::<_, _, ()>(key, bytes, ttl_ms))
                    .await;
            if !matches!(stored, Ok(Ok(()))) {
                metrics
                    .cache_lookups
                    .with_label_values(&["store_error"])
                    .inc();
            }
        });
        Ok(answer)
    }

    fn count(&self, result: &str) {
        self.metrics
            .cache_lookups
            .with_label_values(&[result])
            .inc();
    }
}

/// Whether an answer to `query` may come from the cache.
fn cacheable(query: &Query) -> bool {
    !query
        .0
        .iter()
        .any(|(name, value)| name == "consistency" && value.trim() == "linearizable")
}

/// The cache key of `query` on `route`: the same for the same parameters in any order.
fn cache_key(route: &str, query: &Query) -> String {
    let mut pairs = query.0.clone();
    pairs.sort();
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{KEY_PREFIX}{route}?{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Query {
        Query(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn keys_ignore_parameter_order_and_keep_values_apart() {
        let a = cache_key(
            "/api/v1/anomalies",
            &query(&[("limit", "5"), ("severity", "high")]),
        );
        let b = cache_key(
            "/api/v1/anomalies",
            &query(&[("severity", "high"), ("limit", "5")]),
        );
        assert_eq!(a, b);
        assert_eq!(a, "sentinel:answer:/api/v1/anomalies?limit=5&severity=high");
        let c = cache_key("/api/v1/anomalies", &query(&[("severity", "high&limit=5")]));
        assert_ne!(a, c);
        assert_ne!(
            a,
            cache_key(
                "/api/v1/baselines",
                &query(&[("limit", "5"), ("severity", "high")])
            )
        );
    }

    #[test]
    fn only_explicitly_linearizable_queries_bypass_the_cache() {
        assert!(cacheable(&query(&[])));
        assert!(cacheable(&query(&[("consistency", "stale")])));
        assert!(!cacheable(&query(&[("consistency", "linearizable")])));
    }

    #[tokio::test]
    async fn without_redis_every_answer_is_computed() {
        let cache =
            QueryCache::new(&CacheSection::default(), RouterMetrics::new().unwrap()).unwrap();
        let mut computed = 0;
        for _ in 0..2 {
            let answer: Result<Value, ()> = cache
                .answer("/api/v1/baselines", &query(&[]), async {
                    computed += 1;
                    Ok(Value::Null)
                })
                .await;
            assert_eq!(answer, Ok(Value::Null));
        }
        assert_eq!(computed, 2);
    }
}
