//! The crate's error type. Each variant names itself as a metric label.
use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    Lag(#[from] crate::lag::LagError),

    #[error("invalid claim: {0}")]
    InvalidClaim(String),

    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("{what}: {source}")]
    KubeCall {
        what: String,
        #[source]
        source: kube::Error,
    },

    #[error("{what}: no answer within {after:?}")]
    Timeout { what: String, after: std::time::Duration },

    #[error("leader election: {0}")]
    Leader(String),

    #[error("serializing: {0}")]
    Serialize(String),

    #[error("server: {0}")]
    Server(String),
}

impl Error {
    /// A short, stable label for metrics and events.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Io { .. } => "io",
            Error::Nats { .. } => "nats",
            Error::Lag(_) => "lag",
            Error::InvalidClaim(_) => "invalid_claim",
            Error::Kube(_) | Error::KubeCall { .. } => "kube",
            Error::Timeout { .. } => "timeout",
            Error::Leader(_) => "leader",
            Error::Serialize(_) => "serialize",
            Error::Server(_) => "server",
        }
    }

    pub(crate) fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
