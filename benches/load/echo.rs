//! The floor every latency figure is compared with: a bare gRPC unary call on
//! loopback. The benchmark binary runs itself as a second process
//! (`--echo-server ADDR`) that serves the same `ExternalScaler` service with
//! tonic, as the scaler does, but answers every call with a constant and
//! touches nothing else: no NATS, no cache, no parsing of the metadata. The
//! same KEDA-shaped schedule then drives it, so the ratio of our latency to
//! this one is what the scaler adds on top of the transport, and does not
//! move with how busy the shared machine is.
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Command;
use std::time::Duration;

use eds::proto::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use eds::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use testkit::process::{Peer, free_port};

/// The argument that turns the benchmark binary into the echo server.
pub const FLAG: &str = "--echo-server";

/// Serves the echo service on `addr` until killed. Runs in the child process.
pub fn serve(addr: &str) {
    let addr: SocketAddr = addr.parse().expect("echo address");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tonic::transport::Server::builder()
            .add_service(ExternalScalerServer::new(Echo))
            .serve(addr)
            .await
            .expect("echo server")
    });
}

/// The echo server as its own process; stops when dropped.
pub struct EchoProcess {
    peer: Peer,
    pub grpc: SocketAddr,
}

impl EchoProcess {
    pub fn start(log: &std::path::Path) -> Self {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(std::env::current_exe().expect("benchmark binary"));
        command.args([FLAG, &grpc.to_string()]);
        let peer = Peer::spawn("echo server", command, log);
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(grpc).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the echo server did not listen on {grpc}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        EchoProcess { peer, grpc }
    }

    pub fn pid(&self) -> u32 {
        self.peer.pid().expect("echo server runs")
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        self.peer.terminate(Duration::from_secs(5));
    }
}

struct Echo;

type Never<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Echo {
    async fn is_active(&self, _: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, Status> {
        Ok(Response::new(IsActiveResponse { result: true }))
    }

    type StreamIsActiveStream = Never<IsActiveResponse>;

    async fn stream_is_active(
        &self,
        _: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        Err(Status::unimplemented("the echo floor answers unary calls only"))
    }

    async fn get_metric_spec(&self, _: Request<ScaledObjectRef>) -> Result<Response<GetMetricSpecResponse>, Status> {
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: "echo".into(),
                target_size: 5,
                target_size_float: 5.0,
            }],
        }))
    }

    async fn get_metrics(&self, request: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: request.into_inner().metric_name,
                metric_value: 10,
                metric_value_float: 10.0,
            }],
        }))
    }

    type StreamMetricSpecStream = Never<GetMetricSpecResponse>;

    async fn stream_metric_spec(
        &self,
        _: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        Err(Status::unimplemented("the echo floor answers unary calls only"))
    }
}
