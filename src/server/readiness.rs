//! Whether a plugin can serve yet, for Probe: the controller once it has
//! opened its LUNs, the node once it has joined its cluster. The two
//! domain objects answer it themselves; the Identity service asks.

pub trait Readiness: Send + Sync {
    fn is_ready(&self) -> bool;
}
