//! From a domain error to a gRPC status, the same way for every service:
//! each error type names its code (an exhaustive `match` in its own module),
//! and the message carries the whole cause chain so the operator sees the
//! tool's own words.

use tonic::{Code, Status};

/// The gRPC code each error maps to.
pub trait RpcError: std::error::Error {
    fn code(&self) -> Code;
}

/// The status for an error: its code, and its message with every cause.
pub fn status<E: RpcError>(err: E) -> Status {
    Status::new(err.code(), chain(&err))
}

/// The error's message followed by each cause not already in it.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = cause.source();
    }
    msg
}
