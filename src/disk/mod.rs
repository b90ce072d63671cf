//! The shared disk: sector I/O on a LUN, its GUID partition table, and the
//! kernel devices through which a partition's byte range is reached, and
//! keeping this host's kernel partitions in step with the table; what a
//! device holds, by its signatures; which controller writes the table and
//! which cluster the LUN belongs to (two sectors of our own before 1 MiB).

pub mod blocking;
pub mod gpt;
pub mod kernel_partitions;
pub mod lease;
pub mod lun_io;
pub mod ownership;
pub mod partition_sync;
pub mod region;
pub mod reopen;
pub mod signatures;
