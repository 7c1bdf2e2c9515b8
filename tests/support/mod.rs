//! Shared harnesses for integration tests.
#![allow(dead_code)]

pub mod nats;
pub mod process;
