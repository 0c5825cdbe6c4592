//! Key → shard mapping: which shard owns the baselines of a (service, model) pair.

/// The shard that owns `service`/`model` among `shards` shards (`shards` ≥ 1).
///
/// It is FNV-1a (64 bit) over `service ‖ 0xFF ‖ model`, modulo `shards`. 0xFF never
/// occurs in UTF-8, so distinct pairs never hash the same bytes. This mapping is part
/// of the on-disk and wire contract: it must never change.
pub fn shard_of(service: &str, model: &str, shards: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let bytes = service
        .as_bytes()
        .iter()
        .chain(&[0xff])
        .chain(model.as_bytes());
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    (h % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_stable() {
        // Pinned values: a change here moves every key of every deployed cluster.
        assert_eq!(shard_of("chat-api", "gpt-4o", 32), PINNED[0]);
        assert_eq!(
            shard_of("code-assistant", "claude-3-5-sonnet", 32),
            PINNED[1]
        );
        assert_eq!(shard_of("", "", 32), PINNED[2]);
    }

    const PINNED: [u32; 3] = [10, 22, 14];

    #[test]
    fn separator_keeps_pairs_apart() {
        assert_ne!(shard_of("ab", "c", u32::MAX), shard_of("a", "bc", u32::MAX));
    }

    #[test]
    fn keys_spread_evenly() {
        let mut counts = [0u32; 32];
        for s in 0..100 {
            for m in 0..40 {
                counts[shard_of(&format!("svc-{s}"), &format!("model-{m}"), 32) as usize] += 1;
            }
        }
        // 4000 keys over 32 shards: 125 expected per shard
        assert!(
            counts.iter().all(|&c| (85..=165).contains(&c)),
            "{counts:?}"
        );
    }
}
