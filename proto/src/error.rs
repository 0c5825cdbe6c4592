//! The error codes of Sentinel's APIs, each with its HTTP status and gRPC code: the one
//! mapping the router's REST and gRPC answers and the nodes' gRPC refusals share. The
//! names are the `code` of the REST error body `{code, message, details}`.

use tonic::{Code, Status};

/// What went wrong, as the APIs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A query parameter (or a field of a gRPC request) is missing or malformed.
    InvalidParameters,
    /// A field of a request body or path is missing or malformed.
    InvalidFields,
    /// The body is not what the route takes.
    InvalidBody,
    /// No event of an ingestion request could be ingested.
    InvalidEvents,
    /// The request line or a header is malformed.
    InvalidRequest,
    /// No API key, or a wrong one.
    Unauthorized,
    /// The caller may not do this (another cluster's data, a replaced member).
    PermissionDenied,
    /// No such route, incident, silence, node or shard.
    NotFound,
    /// The route does not take this method.
    MethodNotAllowed,
    /// The request conflicts with the current state (a registry change refused, a node
    /// not ready to take a leadership).
    Conflict,
    /// The call reached a node that cannot serve it (not the shard's leader, not the
    /// member it was meant for); the answer may name the right one.
    WrongNode,
    /// The body is larger than allowed.
    PayloadTooLarge,
    /// The request holds more events than allowed.
    TooManyEvents,
    /// The body's content encoding is not supported.
    UnsupportedEncoding,
    /// The request URI is too long.
    UriTooLong,
    /// The request head is too large.
    HeadersTooLarge,
    /// The request took longer than allowed.
    Timeout,
    /// The service is starting or has no routing table yet.
    NotReady,
    /// A shard or node cannot be reached now; retrying may succeed.
    Unavailable,
    /// A node answered something unusable.
    NodeError,
    /// A fault of this process.
    Internal,
}

impl ErrorCode {
    /// The code's name: the `code` of the REST error body.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidParameters => "invalid_parameters",
            ErrorCode::InvalidFields => "invalid_fields",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidEvents => "invalid_events",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::WrongNode => "wrong_node",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManyEvents => "too_many_events",
            ErrorCode::UnsupportedEncoding => "unsupported_encoding",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NodeError => "node_error",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status answering it.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidParameters
            | ErrorCode::InvalidFields
            | ErrorCode::InvalidBody
            | ErrorCode::InvalidEvents
            | ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::WrongNode => 421,
            ErrorCode::PayloadTooLarge | ErrorCode::TooManyEvents => 413,
            ErrorCode::UriTooLong => 414,
            ErrorCode::UnsupportedEncoding => 415,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::Internal => 500,
            ErrorCode::NodeError => 502,
            ErrorCode::NotReady | ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }

    /// The gRPC status code answering it.
    pub fn grpc_code(self) -> Code {
        match self {
            ErrorCode::InvalidParameters
            | ErrorCode::InvalidFields
            | ErrorCode::InvalidBody
            | ErrorCode::InvalidEvents
            | ErrorCode::InvalidRequest
            | ErrorCode::UnsupportedEncoding => Code::InvalidArgument,
            ErrorCode::Unauthorized => Code::Unauthenticated,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::MethodNotAllowed => Code::Unimplemented,
            ErrorCode::Conflict | ErrorCode::WrongNode => Code::FailedPrecondition,
            ErrorCode::PayloadTooLarge
            | ErrorCode::TooManyEvents
            | ErrorCode::UriTooLong
            | ErrorCode::HeadersTooLarge => Code::ResourceExhausted,
            ErrorCode::Timeout => Code::DeadlineExceeded,
            ErrorCode::NotReady | ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::NodeError | ErrorCode::Internal => Code::Internal,
        }
    }

    /// A gRPC status of this code with `message`.
    pub fn status(self, message: impl Into<String>) -> Status {
        Status::new(self.grpc_code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_distinct_name_an_error_status_and_a_grpc_code() {
        use ErrorCode::*;
        let all = [
            InvalidParameters,
            InvalidFields,
            InvalidBody,
            InvalidEvents,
            InvalidRequest,
            Unauthorized,
            PermissionDenied,
            NotFound,
            MethodNotAllowed,
            Conflict,
            WrongNode,
            PayloadTooLarge,
            TooManyEvents,
            UnsupportedEncoding,
            UriTooLong,
            HeadersTooLarge,
            Timeout,
            NotReady,
            Unavailable,
            NodeError,
            Internal,
        ];
        let names: std::collections::BTreeSet<&str> = all.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), all.len());
        for code in all {
            assert!((400..600).contains(&code.http_status()), "{code:?}");
            assert_ne!(code.grpc_code(), Code::Ok, "{code:?}");
            assert_eq!(code.status("m").code(), code.grpc_code());
        }
        assert_eq!(InvalidParameters.grpc_code(), Code::InvalidArgument);
        assert_eq!(NodeError.http_status(), 502);
    }
}
