//! A memory budget for request bodies held at once, across all requests. Without it, N
//! concurrent maximum-size bodies cost N × `max_body_bytes` before any signature is checked,
//! and anyone who can reach the webhook could exhaust memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::IntakeError;

/// The budget is counted in KiB so that it fits a semaphore's permit count.
const UNIT: usize = 1024;
/// How long a request with a declared length waits for room before it is told to retry.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
}

/// Room reserved for one body; given back when dropped.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            permits: Arc::new(Semaphore::new(units(bytes) as usize)),
        }
    }

    /// Reserves room for a body of `bytes`, waiting (a while) for others to finish.
    pub async fn reserve(&self, bytes: usize) -> Result<Reservation, IntakeError> {
        let acquire = self.permits.clone().acquire_many_owned(units(bytes));
        match tokio::time::timeout(WAIT, acquire).await {
            Ok(Ok(permit)) => Ok(Reservation { permit }),
            _ => Err(IntakeError::Busy),
        }
    }

    /// Grows a reservation by `bytes` without waiting (for bodies of unknown length: waiting
    /// here while holding room could deadlock with other such bodies).
    pub fn grow(&self, reservation: &mut Reservation, bytes: usize) -> Result<(), IntakeError> {
        let more = self
            .permits
            .clone()
            .try_acquire_many_owned(units(bytes))
            .map_err(|_| IntakeError::Busy)?;
        reservation.permit.merge(more);
        Ok(())
    }

    /// Room held now, in bytes (rounded to the unit).
    pub fn reserved(reservation: &Reservation) -> usize {
        reservation.permit.num_permits() * UNIT
    }
}

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_that_does_not_fit_beside_the_others_is_refused_as_busy() {
        let budget = BodyBudget::new(10 * UNIT);
        let held = budget.reserve(8 * UNIT).await.unwrap();
        let mut small = budget.reserve(UNIT).await.unwrap();
        assert!(budget.grow(&mut small, 2 * UNIT).is_err());
        drop(held);
        assert!(budget.grow(&mut small, 2 * UNIT).is_ok());
        assert_eq!(BodyBudget::reserved(&small), 3 * UNIT);
    }
}
