//! The reopen budget of a resumable stream: a setting of its policy that its history reports.
//!
//! In a file of its own so that the policy (which names the history's records in its hook) and
//! the history (which names the budget that was spent) do not import each other.

/// The bound on reopens over a stream's life: a token bucket that every reopen draws from and
/// that delivered messages refill.
///
/// The bucket holds [`reopens`](ReopenBudget::reopens) reopens and starts full. Each reopen
/// takes one; each message delivered to the caller gives back
/// `1 / `[`messages_per_reopen`](ReopenBudget::messages_per_reopen) of one, up to the
/// bucket's size, never beyond. So a stream that delivers at least `messages_per_reopen`
/// messages between cuts is reopened for as long as it lives, while a server that cuts it after
/// every message (or every few) empties the bucket after a bounded number of reopens: about
/// `reopens * messages_per_reopen / (messages_per_reopen - delivered_per_cut)`. The stream
/// then ends with the last error and a [`ResumeHistory`](crate::resume::ResumeHistory) whose
/// [`stop_reason`](crate::resume::ResumeHistory::stop_reason) is
/// [`StopReason::Throttled`](crate::StopReason::Throttled) and whose
/// [`reopen_budget_spent`](crate::resume::ResumeHistory::reopen_budget_spent) is true.
///
/// Counted in whole messages (integers): refilling costs one addition and one comparison per
/// message, no clock read. The budget is the stream's own; a
/// [`throttle`](crate::resume::ResumePolicyBuilder::throttle) shared with the layer and other streams applies as well (a reopen needs both), for the
/// outage that cuts every stream at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReopenBudget {
    pub(crate) reopens: u32,
    pub(crate) messages_per_reopen: u32,
}

impl ReopenBudget {
    /// The size of the bucket, in reopens.
    pub fn reopens(&self) -> u32 {
        self.reopens
    }

    /// How many delivered messages pay back one reopen.
    pub fn messages_per_reopen(&self) -> u32 {
        self.messages_per_reopen
    }

    /// The bucket's size in its unit, the message.
    pub(crate) fn capacity(&self) -> u64 {
        u64::from(self.reopens) * u64::from(self.messages_per_reopen)
    }

    /// What one reopen costs, in messages.
    pub(crate) fn cost(&self) -> u64 {
        u64::from(self.messages_per_reopen)
    }
}
