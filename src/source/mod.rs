//! Event sources: where lastcall learns that this instance is being terminated.

pub mod imds;
pub mod sqs;
