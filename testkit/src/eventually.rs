//! Waiting for something to become true, the one way every test does it.
use std::fmt::Debug;
use std::time::Duration;

/// How often a probe runs.
const EVERY: Duration = Duration::from_millis(200);

/// Runs `probe` every 200 ms until it gives a value (`Some` or `Ok`), and
/// returns that value; after `timeout`, fails the test with `what` and the
/// last answer seen.
pub async fn eventually<O: Outcome>(what: &str, timeout: Duration, probe: impl AsyncFnMut() -> O) -> O::Value {
    eventually_every(EVERY, what, timeout, probe).await
}

/// As [`eventually`], probing every `every` (a test that times what it
/// waits for probes more often).
pub async fn eventually_every<O: Outcome>(
    every: Duration,
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> O,
) -> O::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await.into_result() {
            Ok(value) => return value,
            Err(last) if tokio::time::Instant::now() > deadline => {
                panic!("{what}: not within {timeout:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// What a probe answers: a value, or why not yet.
pub trait Outcome {
    type Value;
    fn into_result(self) -> Result<Self::Value, String>;
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "nothing yet".to_string())
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}
