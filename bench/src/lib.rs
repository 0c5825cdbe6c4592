//! Sentinel's benchmarks and scorers: the false-alarm stream, NAB accuracy scoring,
//! detection on the replay without a cluster, and the naive baseline the speed
//! benchmarks compare against.

pub mod nab;
pub mod naive;
pub mod outcome;
pub mod pipeline;
pub mod storage;
pub mod stream;
