//! Why a request was refused, with the gRPC code it is answered with:
//!
//! | code | when |
//! |---|---|
//! | `PERMISSION_DENIED` | policy: wrong role, not in the list, not approved, revoked, destroyed, bad signature, old list |
//! | `INVALID_ARGUMENT` | malformed input: sizes, encodings, a list that does not parse |
//! | `FAILED_PRECONDITION` | another host holds the read-write lease; a checkpoint that would go backwards |
//! | `NOT_FOUND` | unknown domain or lease (for Checkpoint and AppendAudit: no live lease of the caller) |
//! | `ALREADY_EXISTS` | a domain id registered before |
//! | `UNAUTHENTICATED` | no usable client certificate |
//! | `RESOURCE_EXHAUSTED` | too many outstanding leases; a domain's audit store is full (the audit cap) |
//! | `INTERNAL` | the registry failed; the details go to the log only |

use tonic::Code;

use crate::error::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    /// For the log, and (except for `INTERNAL`) for the caller.
    pub reason: String,
}

impl Refusal {
    pub fn new(code: Code, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }

    pub fn denied(reason: impl Into<String>) -> Refusal {
        Refusal::new(Code::PermissionDenied, reason)
    }

    pub fn invalid(reason: impl Into<String>) -> Refusal {
        Refusal::new(Code::InvalidArgument, reason)
    }

    pub fn not_found(reason: impl Into<String>) -> Refusal {
        Refusal::new(Code::NotFound, reason)
    }

    pub fn held(reason: impl Into<String>) -> Refusal {
        Refusal::new(Code::FailedPrecondition, reason)
    }

    pub fn internal(error: &Error) -> Refusal {
        Refusal::new(Code::Internal, error.to_string())
    }

    /// The code's name as the log writes it, e.g. `PERMISSION_DENIED`.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code)
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Refusal {
        Refusal::internal(&e)
    }
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> tonic::Status {
        match r.code {
            // Registry details (paths, corruption) are the operator's business.
            Code::Internal => tonic::Status::internal("internal error at the TTP (see its log)"),
            code => tonic::Status::new(code, r.reason),
        }
    }
}

pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
