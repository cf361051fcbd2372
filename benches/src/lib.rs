//! Shared workloads of the benches and `strata compare` (being written).
