//! The shared disk: sector I/O on a LUN, its GUID partition table, the
//! kernel devices through which a byte range is reached (loop devices for
//! one range, device-mapper maps for a volume's extents); what a
//! device holds, by its signatures; which controller writes the table and
//! which cluster the LUN belongs to (two sectors of our own before 1 MiB);
//! how this host sees a LUN grow (`rescan`).

pub mod blocking;
pub mod dm;
pub mod gpt;
pub mod lease;
pub mod lun_io;
pub mod ownership;
pub mod region;
pub mod reopen;
pub mod rescan;
pub mod signatures;
