//! A memory budget for request bodies held at once, across all requests. Without it, N
//! concurrent maximum-size bodies cost N × `max_body_bytes` before any signature is checked,
//! and anyone who can reach the webhook could exhaust memory.
//!
//! Room is taken as bytes arrive, never for what Content-Length declares: a client that
//! declares a large body and sends nothing holds nothing (and is dropped by the read timeouts
//! in `webhook.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::IntakeError;

/// The budget is counted in KiB so that it fits a semaphore's permit count.
const UNIT: usize = 1024;
/// How long a body waits for room before it is told to retry. A body waits while holding what
/// it already has; the wait is bounded, so two bodies waiting on each other end with 503 rather
/// than forever.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
}

/// Room held for one body; given back when dropped.
#[derive(Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            permits: Arc::new(Semaphore::new(units(bytes) as usize)),
        }
    }

    /// Grows `reservation` to cover `bytes` in all, waiting (a while) for others to finish.
    pub async fn hold(
        &self,
        reservation: &mut Reservation,
        bytes: usize,
    ) -> Result<(), IntakeError> {
        let held = reservation.permit.as_ref().map_or(0, |p| p.num_permits());
        let wanted = units(bytes) as usize;
        if wanted <= held {
            return Ok(());
        }
        let more = u32::try_from(wanted - held).unwrap_or(u32::MAX);
        let acquire = self.permits.clone().acquire_many_owned(more);
        let permit = match tokio::time::timeout(WAIT, acquire).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(IntakeError::Busy),
        };
        match &mut reservation.permit {
            Some(held) => held.merge(permit),
            None => reservation.permit = Some(permit),
        }
        Ok(())
    }

    /// Room held now, in bytes (rounded to the unit).
    #[cfg(test)]
    fn reserved(reservation: &Reservation) -> usize {
        reservation.permit.as_ref().map_or(0, |p| p.num_permits()) * UNIT
    }
}

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_fit_beside_the_others_is_refused_as_busy() {
        let budget = BodyBudget::new(10 * UNIT);
        let mut held = Reservation::default();
        budget.hold(&mut held, 8 * UNIT).await.unwrap();
        let mut small = Reservation::default();
        budget.hold(&mut small, UNIT).await.unwrap();

        assert!(budget.hold(&mut small, 3 * UNIT).await.is_err());
        drop(held);
        assert!(budget.hold(&mut small, 3 * UNIT).await.is_ok());
        assert_eq!(BodyBudget::reserved(&small), 3 * UNIT);
    }

    #[tokio::test]
    async fn room_is_taken_only_for_bytes_that_arrived() {
        let budget = BodyBudget::new(4 * UNIT);
        let mut growing = Reservation::default();

        budget.hold(&mut growing, UNIT + 1).await.unwrap();
        budget.hold(&mut growing, UNIT).await.unwrap();

        assert_eq!(BodyBudget::reserved(&growing), 2 * UNIT);
    }
}
