//! Operations in flight, keyed by partition GUID: a second call for a volume
//! that is already being created, deleted or expanded gets Aborted, as the
//! CSI spec asks, instead of racing the first.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

#[derive(Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<Uuid>>>,
}

/// Held while the operation runs; dropping it frees the key.
pub struct Guard {
    keys: Arc<Mutex<HashSet<Uuid>>>,
    key: Uuid,
}

impl InFlight {
    pub fn try_begin(&self, key: Uuid) -> Option<Guard> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.insert(key).then(|| Guard {
            keys: self.keys.clone(),
            key,
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_begin_waits_for_the_first_to_end() {
        let f = InFlight::default();
        let k = Uuid::new_v4();
        let g = f.try_begin(k).unwrap();
        assert!(f.try_begin(k).is_none());
        assert!(f.try_begin(Uuid::new_v4()).is_some());
        drop(g);
        assert!(f.try_begin(k).is_some());
    }
}
