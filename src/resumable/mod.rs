//! Resumable streams: a streaming call that reopens itself after a mid-stream transport failure
//! and resumes after the last message the caller received.
//!
//! One file a job: [`stream`] is the state machine, [`policy`] its configuration (with the
//! reopen budget in [`budget`]), [`classify`] decides which endings reopen the call, and
//! [`history`] is what the caller learns when it gives up.

mod budget;
mod classify;
mod history;
mod policy;
mod stream;
#[cfg(test)]
mod tests;

pub use self::budget::ReopenBudget;
pub use self::history::{ReopenRecord, ResumeHistory};
pub use self::policy::{
    DEFAULT_MAX_FAILED_REOPENS, DEFAULT_MESSAGES_PER_REOPEN, DEFAULT_REOPEN_BUDGET, ReopenThrottle,
    ResumePolicy, ResumePolicyBuilder,
};
pub use self::stream::{OpenedStream, ResumableStream};
