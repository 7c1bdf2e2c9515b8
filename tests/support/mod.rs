//! Shared harnesses for integration tests.
#![allow(dead_code)]

pub mod certs;
pub mod js;
pub mod keda;
pub mod kube;
pub mod nats;
pub mod process;
pub mod promql;
pub mod rig;
pub mod scaler;
