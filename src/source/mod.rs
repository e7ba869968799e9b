//! Event sources: where lastcall learns that this instance is being terminated. [`sqs`] is the
//! queue the group shares; [`metadata`] reads this instance's own instance metadata (`[imds]`).

pub mod metadata;
pub mod sqs;
