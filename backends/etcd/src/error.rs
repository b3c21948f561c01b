//! Mapping `etcd-client` errors to quorate's error kinds.

use etcd_client::Error as EtcdError;
use quorate_core::{Error, ErrorKind};

/// etcd's message for an expired or revoked lease.
const LEASE_NOT_FOUND: &str = "requested lease not found";

/// Turn an etcd-client error of operation `op` into a quorate error with a
/// kind a caller can act on. The message never contains credentials.
pub(crate) fn map(op: &str, e: EtcdError) -> Error {
    let (kind, detail) = classify(&e);
    Error::new(kind, format!("etcd {op}: {detail}")).with_source(e)
}

fn classify(e: &EtcdError) -> (ErrorKind, String) {
    match e {
        EtcdError::GRpcStatus(status) => {
            use tonic::Code;
            let msg = status.message().to_owned();
            if is_tls_trust_message(&msg) {
                return (
                    ErrorKind::Unauthenticated,
                    format!(
                        "TLS: {msg} (the server's certificate is not signed by the `ca` given)"
                    ),
                );
            }
            let kind = match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Aborted => ErrorKind::Unavailable,
                Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Unauthenticated,
                Code::InvalidArgument if is_auth_message(&msg) => ErrorKind::Unauthenticated,
                Code::FailedPrecondition if is_auth_message(&msg) => ErrorKind::Unauthenticated,
                Code::NotFound if msg.contains(LEASE_NOT_FOUND) => ErrorKind::Lost,
                Code::Unknown if is_transient_message(&msg) => ErrorKind::Unavailable,
                // The connection broke under the request (a member died, or
                // a TLS server dropped a client without a certificate).
                Code::Unknown if msg.contains("transport error") => ErrorKind::Unavailable,
                _ => ErrorKind::Backend,
            };
            let detail = match kind {
                ErrorKind::Unauthenticated if status.code() == Code::PermissionDenied => format!(
                    "{msg} (the etcd user lacks a role with read/write permission on the namespace)"
                ),
                ErrorKind::Unauthenticated if msg.contains("user name is empty") => format!(
                    "{msg} (etcd has authentication enabled: give `user:password@` in the URL)"
                ),
                ErrorKind::Unauthenticated => {
                    format!("{msg} (check the user name and password in the URL)")
                }
                _ => msg,
            };
            (kind, detail)
        }
        EtcdError::TransportError(t) => (ErrorKind::Unavailable, format!("transport: {t}")),
        EtcdError::IoError(io) => (ErrorKind::Unavailable, format!("I/O: {io}")),
        EtcdError::LeaseKeepAliveError(m) if m.contains("lease not found") => (
            ErrorKind::Lost,
            "the lease was not found (expired or revoked)".into(),
        ),
        EtcdError::LeaseKeepAliveError(m) | EtcdError::WatchError(m) => {
            (ErrorKind::Unavailable, m.clone())
        }
        EtcdError::InvalidArgs(m) => (ErrorKind::InvalidConfig, m.clone()),
        EtcdError::InvalidUri(u) => (ErrorKind::InvalidConfig, format!("invalid endpoint: {u}")),
        other => (ErrorKind::Backend, other.to_string()),
    }
}

fn is_auth_message(msg: &str) -> bool {
    [
        "authentication failed",
        "user name is empty",
        "invalid auth token",
        "user name not found",
        "authentication is not enabled",
        "invalid auth management",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

fn is_tls_trust_message(msg: &str) -> bool {
    [
        "invalid peer certificate",
        "InvalidCertificate",
        "UnknownIssuer",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

fn is_transient_message(msg: &str) -> bool {
    [
        "leader changed",
        "no leader",
        "timed out",
        "not capable",
        "too many requests",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

/// Whether an etcd error says the lease no longer exists.
pub(crate) fn is_lease_gone(e: &Error) -> bool {
    e.kind() == ErrorKind::Lost
}

/// Whether the request surely never reached a server: the connection to
/// the endpoint could not be made. Such a request can be sent again
/// whatever it does.
pub(crate) fn never_sent(e: &EtcdError) -> bool {
    let text = match e {
        EtcdError::GRpcStatus(status) if status.code() == tonic::Code::Unavailable => {
            format!("{} {:?}", status.message(), status)
        }
        EtcdError::TransportError(t) => format!("{t} {t:?}"),
        _ => return false,
    };
    (text.contains("ConnectError") || text.contains("tcp connect error"))
        && !is_tls_trust_message(&text)
}

/// A short description of an error that kept a request from being sent:
/// the gRPC message and the innermost cause (`tcp connect error:
/// Connection refused (os error 111)`).
pub(crate) fn describe_unsent(e: &EtcdError) -> String {
    match e {
        EtcdError::GRpcStatus(status) => {
            let mut root: Option<&(dyn std::error::Error + 'static)> =
                std::error::Error::source(status);
            while let Some(next) = root.and_then(std::error::Error::source) {
                root = Some(next);
            }
            match root {
                Some(r) => format!("{}: {r}", status.message()),
                None => status.message().to_owned(),
            }
        }
        other => other.to_string(),
    }
}
