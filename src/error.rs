//! The crate's error type. Each variant names itself as a metric label, and
//! keeps the error it came from as its source.
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::api::InvalidClaim;
use crate::lag::LagError;
use crate::render::ResourceError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error, kept as the source of ours (serializers, YAML parsers).
pub type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),

    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("NATS connection {connection:?}: {message}")]
    Nats { connection: String, message: String },

    #[error(transparent)]
    Lag(#[from] LagError),

    /// The claim's own consumer could not be read, created, updated or deleted.
    #[error(transparent)]
    Consumer(#[from] crate::consumer::ConsumerError),

    /// A claim the CRD's schema or rules refuse, with every field named.
    #[error("invalid claim: {0}")]
    InvalidClaim(#[from] InvalidClaim),

    /// Every claim of an input that the CRD refuses (`eds render`).
    #[error("invalid claim: {}", lines(.0))]
    InvalidClaims(Vec<InvalidClaim>),

    /// The claim's namespace may not use the NATS connection (or read the
    /// stream) it names, under the connection's tenancy rules.
    #[error(transparent)]
    NotAllowed(#[from] crate::tenancy::Denied),

    /// A claim the schema accepts but that cannot be rendered.
    #[error("invalid claim: {claim}: {source}")]
    Unrenderable {
        claim: String,
        #[source]
        source: ResourceError,
    },

    #[error("invalid claim: document {document}: not YAML: {source}")]
    NotYaml {
        document: usize,
        #[source]
        source: Source,
    },

    #[error("invalid claim: no EventDrivenService in the input")]
    NoClaim,

    /// An input over one of `eds render`'s limits, which it names.
    #[error("invalid claim: {what} is over the limit: {limit}")]
    OverLimit { what: String, limit: String },

    /// Two claims of one input with one namespace and name.
    #[error("invalid claim: EventDrivenService {claim} is given twice (documents {first} and {second})")]
    DuplicateClaim { claim: String, first: usize, second: usize },

    /// A render failure for each of several claims.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<Error>),

    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("{what}: {source}")]
    KubeCall {
        what: String,
        #[source]
        source: kube::Error,
    },

    #[error("{what}: no answer within {after:?}")]
    Timeout { what: String, after: Duration },

    #[error("the {kind} watch stopped: {source}")]
    WatchStopped {
        kind: String,
        #[source]
        source: kube::runtime::reflector::store::WriterDropped,
    },

    #[error("leader election: {0}")]
    Leader(String),

    #[error("serializing {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: Source,
    },

    #[error("binding the {server} listener on {addr}: {source}")]
    Bind {
        server: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("gRPC TLS: {0}")]
    Tls(#[source] tonic::transport::Error),

    #[error("gRPC server: {0}")]
    Grpc(#[source] tonic::transport::Error),

    #[error("HTTP server: {0}")]
    Http(#[source] std::io::Error),

    #[error("a server task ended: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    /// A short, stable label for metrics and events.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Io { .. } => "io",
            Error::Nats { .. } => "nats",
            Error::Lag(_) => "lag",
            Error::Consumer(_) => "consumer",
            Error::InvalidClaim(_)
            | Error::InvalidClaims(_)
            | Error::Unrenderable { .. }
            | Error::NotYaml { .. }
            | Error::NoClaim
            | Error::OverLimit { .. }
            | Error::DuplicateClaim { .. }
            | Error::Several(_) => "invalid_claim",
            Error::NotAllowed(_) => "not_allowed",
            Error::Kube(_) | Error::KubeCall { .. } => "kube",
            Error::Timeout { .. } => "timeout",
            Error::WatchStopped { .. } => "watch",
            Error::Leader(_) => "leader",
            Error::Serialize { .. } => "serialize",
            Error::Bind { .. } => "bind",
            Error::Tls(_) => "tls",
            Error::Grpc(_) | Error::Http(_) | Error::Join(_) => "server",
        }
    }

    pub(crate) fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn serialize(what: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::Serialize {
            what: what.into(),
            source: source.into(),
        }
    }
}

fn lines(claims: &[InvalidClaim]) -> String {
    claims.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}
