//! What the controller and the node share about a volume: its ID, how it
//! is recorded in the GPT, and the mount options it may be mounted with.
//! Neither side imports the other; both import this.

pub mod block_header;
pub mod entry;
pub mod extents;
pub mod id;
pub mod mount_options;
pub mod snapshot;
