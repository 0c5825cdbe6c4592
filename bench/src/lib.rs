//! Sentinel's benchmarks and generators: the realistic LLM-traffic replay, the
//! false-alarm stream, NAB accuracy scoring, and the naive baseline the speed
//! benchmarks compare against.

pub mod cluster;
pub mod nab;
pub mod naive;
pub mod outcome;
pub mod pipeline;
pub mod replay;
pub mod rng;
pub mod storage;
pub mod stream;
