//! EventDrivenService: NATS JetStream workers on Kubernetes, autoscaled by KEDA
//! on their real backlog.
//!
//! Dependencies point one way: [`cli`] -> [`runtime`] -> {[`controller`],
//! [`scaler`], [`function`]} -> {[`render`], [`trigger`], [`lag`]} -> {[`api`], [`nats`]},
//! with [`telemetry`] and [`error`] as leaves.
//!
//! - [`scaler`]: KEDA external scaler (gRPC) serving consumer lag.
//! - [`lag`]: reading, caching and watching JetStream consumer lag.
//! - [`trigger`]: the KEDA trigger metadata render writes and the scaler reads.
//! - [`drain`]: `drainWithin`'s estimator of arrival rate and replica capacity.
//! - [`api`], [`render`], [`controller`]: the `EventDrivenService` resource,
//!   the pure functions that render its children, and the kube-rs controller.
//! - [`health`]: whether more replicas can drain a consumer, and why not.
//! - [`function`]: the same children composed by Crossplane, as a
//!   composition function.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod consumer;
pub mod controller;
pub mod drain;
pub mod error;
pub mod function;
pub mod health;
pub mod lag;
pub mod nats;
pub mod quote;
pub mod render;
pub mod runtime;
pub mod scaler;
pub mod telemetry;
pub mod tenancy;
pub mod trigger;

pub use error::{Error, Result};

/// Generated from `proto/externalscaler.proto` (KEDA's wire contract).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("externalscaler");
}
