//! Shared harnesses for integration tests.
#![allow(dead_code)]

pub mod kube;
pub mod nats;
pub mod process;
