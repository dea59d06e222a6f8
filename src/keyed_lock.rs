//! One async lock per key (a project's git mirror, a Deployment): work on the same key waits its
//! turn, work on different keys runs side by side. Locks are made on first use and kept (the
//! keys are configured projects and Deployments: a small, bounded set).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

pub struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K: Eq + Hash> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash> KeyedLocks<K> {
    /// Waits until nobody else holds `key`'s lock; held until the guard drops.
    pub async fn lock(&self, key: K) -> OwnedMutexGuard<()> {
        let lock = {
            // Poisoning would mean a panic while inserting into a map; the map is still sound.
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }
}
