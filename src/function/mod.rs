//! `eds function`: a Crossplane composition function that composes an
//! `EventDrivenService` into the same four children as the controller.
//!
//! [`compose`] is the pure step; this file serves it over Crossplane's gRPC
//! contract, with mutual TLS as Crossplane's function runtime sets it up.
pub mod compose;
pub mod structs;
pub mod xrd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::{Error, Result};
use proto::function_runner_service_server::{FunctionRunnerService, FunctionRunnerServiceServer};
use proto::{RunFunctionRequest, RunFunctionResponse, Severity};

/// Generated from `proto/run_function.proto` (Crossplane's function contract).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    // `fn` is a Rust keyword, so prost names the file after `r#fn`.
    tonic::include_proto!("apiextensions.r#fn.proto.v1");
}

/// How `eds function` serves, from its flags (`cli::FunctionArgs`).
#[derive(Clone, Debug)]
pub struct FunctionConfig {
    pub address: SocketAddr,
    /// `None` serves plaintext (`--insecure`).
    pub tls_certs_dir: Option<PathBuf>,
}

/// The mutual TLS Crossplane's function runtime sets up: the function's
/// certificate and the CA that signed Crossplane's client certificate.
pub fn tls_config(dir: &Path) -> Result<ServerTlsConfig> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| Error::io(path.display().to_string(), e))
    };
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read("tls.crt")?, read("tls.key")?))
        .client_ca_root(Certificate::from_pem(read("ca.crt")?)))
}

/// Serves the function on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(Error::Tls)?;
    }
    builder
        .add_service(FunctionRunnerServiceServer::new(EdsFunction))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
        .map_err(Error::Grpc)
}

struct EdsFunction;

#[tonic::async_trait]
impl FunctionRunnerService for EdsFunction {
    async fn run_function(
        &self,
        request: Request<RunFunctionRequest>,
    ) -> std::result::Result<Response<RunFunctionResponse>, Status> {
        let request = request.into_inner();
        let response = compose::run_function(&request, Timestamp::now());
        let tag = response.meta.as_ref().map(|m| m.tag.as_str()).unwrap_or_default();
        for result in &response.results {
            if result.severity == Severity::Fatal as i32 {
                tracing::info!(tag, message = %result.message, "refused a composite");
            }
        }
        tracing::debug!(tag, "composed");
        Ok(Response::new(response))
    }
}
