//! Sentinel on one machine, for `sentinel dev`, `sentinel produce` and the load
//! generators: a cluster in one process, the realistic replay traffic that feeds it, and
//! the scoreboard of the injected incidents it caught.

pub mod cluster;
pub mod replay;
pub mod rng;
pub mod scoreboard;
