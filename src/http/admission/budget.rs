//! The in-flight memory budget of requests the service must hold whole (`POST /v1/media/resolve`):
//! a process-wide count of bytes, charged as a body arrives — its `Content-Length` at once, a
//! chunked body chunk by chunk — and given back when the request ends. A request that would pass
//! the budget is answered 503 `busy` with `Retry-After` at once (it never waits holding memory),
//! so a flood of large payloads costs at most the budget, whatever the concurrency.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::error::ApiError;
use crate::telemetry::metrics::names;

/// Bytes that buffered requests may hold at once.
pub struct MemoryBudget {
    bytes: Arc<Semaphore>,
}

impl MemoryBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Self { bytes: Arc::new(Semaphore::new(bytes)) }
    }

    /// An empty charge against the budget, grown with [`Charge::grow`].
    pub fn charge(&self) -> Charge {
        Charge { bytes: self.bytes.clone(), held: None }
    }

    /// Bytes not charged now (tests, metrics).
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// Bytes one request holds; given back when dropped.
pub struct Charge {
    bytes: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl Charge {
    /// Charges `bytes` more, or 503 `busy` when the budget does not have them now.
    pub fn grow(&mut self, bytes: u64) -> Result<(), ApiError> {
        let Ok(wanted) = u32::try_from(bytes) else { return Err(busy()) };
        match self.bytes.clone().try_acquire_many_owned(wanted) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                Ok(())
            }
            Err(_) => Err(busy()),
        }
    }
}

fn busy() -> ApiError {
    metrics::counter!(names::RESOLVE_REJECTIONS, "reason" => "busy").increment(1);
    ApiError::Unavailable {
        code: "busy",
        message: "the service holds too many large payloads at once; retry shortly".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_past_the_budget_and_given_back_when_dropped() {
        let budget = MemoryBudget::new(1000);
        let mut first = budget.charge();
        first.grow(600).unwrap();
        first.grow(300).unwrap();
        let mut second = budget.charge();
        let err = second.grow(200).unwrap_err();
        assert_eq!((err.status().as_u16(), err.code()), (503, "busy"));
        second.grow(100).unwrap();
        assert_eq!(budget.available(), 0);
        drop(first);
        assert_eq!(budget.available(), 900, "the first charge came back whole");
        assert!(budget.charge().grow(u64::MAX).is_err(), "a charge past u32 is refused, not wrapped");
    }
}
