//! The node plugin. Joining the o2cb cluster, staging and publishing are the
//! node issue's work; until then the node mode serves Identity only and
//! reports itself ready, because it has no cluster to join yet.
