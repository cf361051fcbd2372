//! The layer store of strata (filled by the store issue).
