//! The test kit of `eds`, for its tests, benchmarks and `scripts/rig.sh` only
//! (never a dependency of the product).
//!
//! Peers are real processes on loopback, built by `scripts/tools.sh` into
//! `.tools/bin`: [`nats`] (one nats-server or a cluster), [`control_plane`]
//! (etcd, kube-apiserver, kube-controller-manager), [`keda`] (KEDA's operator
//! and metrics adapter), [`kwok`] (kube-scheduler and KWOK: a fake node whose
//! pods turn Running and Ready, by simulation), and [`rig`], the whole
//! platform with the `eds` binaries. Every peer is a [`process::Peer`]: its output goes to a log file,
//! it dies with the test process, and its log is printed when a test fails.
//! A peer that exits by itself is reported as such, with its log.
//!
//! The helpers every test shares, one of each: [`eventually`], the loopback
//! HTTP client [`http`], the Prometheus text parser [`prometheus`], the Helm
//! chart's rendering [`chart`], JetStream fixtures [`js`], a throwaway PKI
//! [`certs`], and the scaler served in process [`scaler`].
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod certs;
pub mod chart;
pub mod control_plane;
pub mod http;
pub mod js;
pub mod keda;
pub mod kwok;
pub mod nats;
pub mod process;
pub mod prometheus;
pub mod promql;
pub mod repo;
pub mod rig;
pub mod scaler;
pub mod scenario;

mod eventually;
pub use eventually::{Outcome, eventually, eventually_every};
