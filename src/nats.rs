//! NATS connection settings: servers, auth and TLS, for one default connection
//! (from flags) and any number of named connections (from a config file).
//!
//! The scaler only ever dials the servers listed here. Trigger metadata can
//! *pick* a connection by name; it can never supply a server or a credential.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use serde::Deserialize;
use tokio::sync::watch;

use crate::quote::quote;
use crate::telemetry::Metric;
use crate::tenancy::{Access, ConnectionRules, Patterns, ReadRule};
use crate::{Error, Result};

/// The name of the connection built from the `--nats-*` flags.
pub const DEFAULT_CONNECTION: &str = "default";

/// How long one NATS request may take unless configured otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);

/// Every NATS connection a process may use: the default one (from the
/// `--nats-*` flags) and the named ones of a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// The connection named [`DEFAULT_CONNECTION`].
    pub default: ConnectionSettings,
    /// YAML file of named connections (see docs/scaler.md). A connection named
    /// `default` there replaces the one above.
    pub config_file: Option<PathBuf>,
    /// How long one NATS request may take before it counts as failed.
    pub request_timeout: Duration,
}

/// `1 while the named NATS connection is up`, written on connection events.
pub const CONNECTED: Metric = Metric::gauge(
    "eds_nats_connected",
    &["connection"],
    "1 while the named NATS connection is up.",
);

/// One connection's settings, as written in the config file (camelCase).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionSettings {
    /// Server URL(s), comma separated.
    pub url: String,
    pub creds_file: Option<PathBuf>,
    pub nkey_seed_file: Option<PathBuf>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub tls: Option<TlsSettings>,
    /// The namespaces that may use this connection (names or `*` globs).
    /// Not written: none may. `["*"]`: every namespace.
    pub namespaces: Option<Patterns>,
    /// Narrower reads (domains, streams) for some of those namespaces.
    #[serde(default)]
    pub reads: Vec<ReadRule>,
}

impl ConnectionSettings {
    /// The tenancy rules this connection's settings hold.
    pub fn rules(&self) -> ConnectionRules {
        ConnectionRules {
            namespaces: self.namespaces.clone(),
            reads: self.reads.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSettings {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    connections: BTreeMap<String, ConnectionSettings>,
}

impl NatsConfig {
    /// The default connection at `url` and nothing else (tests, demo), open
    /// to every namespace: one team, one machine.
    pub fn for_url(url: impl Into<String>) -> Self {
        NatsConfig {
            default: ConnectionSettings {
                url: url.into(),
                namespaces: Some(Patterns::any()),
                ..Default::default()
            },
            config_file: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Every configured connection by name: the flags' one as `default`, then
    /// the config file's.
    pub fn connection_settings(&self) -> Result<BTreeMap<String, ConnectionSettings>> {
        let mut all = BTreeMap::from([(DEFAULT_CONNECTION.to_string(), self.default.clone())]);
        if let Some(path) = &self.config_file {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display().to_string(), e))?;
            all.extend(parse_config(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?);
        }
        Ok(all)
    }

    /// Who may use which connection, from the same settings.
    pub fn access(&self) -> Result<Access> {
        Ok(access_of(&self.connection_settings()?))
    }
}

fn access_of(settings: &BTreeMap<String, ConnectionSettings>) -> Access {
    Access::new(settings.iter().map(|(name, s)| (name.clone(), s.rules())).collect())
}

/// Parses the named-connections config file.
pub fn parse_config(text: &str) -> std::result::Result<BTreeMap<String, ConnectionSettings>, String> {
    let file: ConfigFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    for (name, settings) in &file.connections {
        if !is_connection_name(name) {
            return Err(format!(
                "connection name {}: use lowercase letters, digits and '-' (at most 63)",
                quote(name)
            ));
        }
        if settings.url.trim().is_empty() {
            return Err(format!("connections.{name}.url: must not be empty"));
        }
        if settings.token.is_some() && settings.token_file.is_some() {
            return Err(format!("connections.{name}: set token or tokenFile, not both"));
        }
        if settings.password.is_some() && settings.password_file.is_some() {
            return Err(format!("connections.{name}: set password or passwordFile, not both"));
        }
        if settings.reads.len() > crate::tenancy::MAX_READ_RULES {
            return Err(format!(
                "connections.{name}.reads: at most {} rules",
                crate::tenancy::MAX_READ_RULES
            ));
        }
    }
    Ok(file.connections)
}

/// Connection names follow Kubernetes DNS labels, so a claim can carry one.
pub fn is_connection_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// One live NATS connection and what the rest of the crate needs to know
/// about it.
#[derive(Clone, Debug)]
pub struct Connection {
    pub name: Arc<str>,
    pub client: Client,
    /// The servers it was configured with (for error messages).
    pub servers: Arc<str>,
    /// Bumped on every (re)connect, so watchers can re-check at once.
    pub connects: watch::Receiver<u64>,
    pub request_timeout: Duration,
    /// Set when we close it: the disconnect that follows is no news.
    closing: Arc<std::sync::atomic::AtomicBool>,
}

/// All configured connections, by name.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    by_name: Arc<BTreeMap<String, Connection>>,
    /// Who may use which of them. Empty (the default) allows no one.
    access: Arc<Access>,
}

impl Connections {
    /// Starts every configured connection. Connecting goes on in the
    /// background: a server that is down now is retried for ever, and requests
    /// on it fail fast until it is back.
    pub async fn connect(config: &NatsConfig, client_name: &str) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        let settings = config.connection_settings()?;
        let access = access_of(&settings);
        for name in access.closed_connections() {
            tracing::warn!(
                connection = name,
                "no namespace may use this NATS connection: its `namespaces` rule is not set"
            );
        }
        for (name, settings) in settings {
            let conn = connect_one(&name, &settings, client_name, config.request_timeout).await?;
            by_name.insert(name, conn);
        }
        Ok(Connections {
            by_name: Arc::new(by_name),
            access: Arc::new(access),
        })
    }

    /// Starts only the connection named `name` (a one-shot command needs no
    /// other, and must not dial the default one it was not asked for).
    pub async fn connect_only(config: &NatsConfig, client_name: &str, name: &str) -> Result<Self> {
        let settings = config
            .connection_settings()?
            .remove(name)
            .ok_or_else(|| Error::Config(format!("no NATS connection named {} is configured", quote(name))))?;
        let conn = connect_one(name, &settings, client_name, config.request_timeout).await?;
        Ok(Connections {
            by_name: Arc::new(BTreeMap::from([(name.to_string(), conn)])),
            access: Arc::new(Access::new(BTreeMap::from([(name.to_string(), settings.rules())]))),
        })
    }

    /// Drains and closes every connection: a process that stops its NATS
    /// servers (the demo, tests) then sees no disconnect to warn about.
    pub async fn close(&self) {
        for conn in self.by_name.values() {
            conn.closing.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = conn.client.drain().await;
        }
    }

    /// The same connections under other rules (tests, embedding).
    pub fn with_access(self, access: Access) -> Self {
        Connections {
            access: Arc::new(access),
            ..self
        }
    }

    /// Who may use which connection.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The connection trigger metadata named, or the default one.
    pub fn get(&self, name: Option<&str>) -> Option<&Connection> {
        self.by_name.get(name.unwrap_or(DEFAULT_CONNECTION))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// `Ok` when every connection is up; otherwise the names that are not.
    pub fn all_connected(&self) -> std::result::Result<(), String> {
        let down: Vec<&str> = self
            .by_name
            .values()
            .filter(|c| c.client.connection_state() != async_nats::connection::State::Connected)
            .map(|c| &*c.name)
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("NATS not connected: {}", down.join(", ")))
        }
    }
}

async fn connect_one(
    name: &str,
    settings: &ConnectionSettings,
    client_name: &str,
    request_timeout: Duration,
) -> Result<Connection> {
    let err = |message: String| Error::Nats {
        connection: name.to_string(),
        message,
    };
    let (connects_tx, connects) = watch::channel(0u64);
    let label = name.to_string();
    // Set once we drain: the disconnect that follows is our own doing.
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closing_flag = closing.clone();
    let mut opts = ConnectOptions::new()
        .name(format!("{client_name}/{name}"))
        // Cluster members advertise other servers; we dial only our own list.
        .ignore_discovered_servers()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(request_timeout))
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).min(2000)))
        .event_callback(move |event| {
            let label = label.clone();
            let connects_tx = connects_tx.clone();
            let closing = closing.clone();
            async move {
                use std::sync::atomic::Ordering::Relaxed;
                let gauge = metrics::gauge!(CONNECTED.name, "connection" => label.clone());
                match event {
                    Event::Connected => {
                        gauge.set(1.0);
                        connects_tx.send_modify(|n| *n += 1);
                        tracing::info!(connection = %label, "NATS connected");
                    }
                    Event::Disconnected if closing.load(Relaxed) => {
                        gauge.set(0.0);
                        tracing::debug!(connection = %label, "NATS disconnected (closing)");
                    }
                    Event::Disconnected => {
                        gauge.set(0.0);
                        tracing::warn!(connection = %label, "NATS disconnected");
                    }
                    // Our own shutdown, not a problem to report.
                    Event::Draining | Event::Closed => {
                        closing.store(true, Relaxed);
                        gauge.set(0.0);
                        tracing::debug!(connection = %label, event = %event_name(&event), "NATS event");
                    }
                    other => tracing::warn!(connection = %label, event = %other, "NATS event"),
                }
            }
        });
    if let Some(path) = &settings.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| err(format!("credentials file {}: {e}", path.display())))?;
    }
    if let Some(path) = &settings.nkey_seed_file {
        opts = opts.nkey(read_secret(path)?);
    }
    if let Some(token) = secret(&settings.token, &settings.token_file)? {
        opts = opts.token(token);
    }
    if let Some(user) = &settings.user {
        let password = secret(&settings.password, &settings.password_file)?.unwrap_or_default();
        opts = opts.user_and_password(user.clone(), password);
    }
    if let Some(tls) = &settings.tls {
        // The client reads these files only when it dials, and would retry a
        // missing one for ever: check each now, so start-up fails naming it.
        for (what, path) in [
            ("CA file", &tls.ca_file),
            ("client certificate", &tls.cert_file),
            ("client key", &tls.key_file),
        ] {
            if let Some(path) = path {
                check_pem(path).map_err(|e| err(format!("TLS {what} {}: {e}", path.display())))?;
            }
        }
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let servers: Vec<async_nats::ServerAddr> = settings
        .url
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| err(format!("server URL {:?}: {e}", settings.url)))?;
    let client = opts
        .connect(servers)
        .await
        .map_err(|e| err(format!("connecting to {}: {e}", settings.url)))?;
    Ok(Connection {
        name: name.into(),
        client,
        servers: settings.url.as_str().into(),
        connects,
        request_timeout,
        closing: closing_flag,
    })
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Draining => "draining",
        _ => "closed",
    }
}

/// Readable, and PEM: what the client will need when it dials.
fn check_pem(path: &Path) -> std::result::Result<(), String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    if text.windows(11).any(|w| w == b"-----BEGIN ") {
        Ok(())
    } else {
        Err("not a PEM file (no -----BEGIN line)".into())
    }
}

fn secret(inline: &Option<String>, file: &Option<PathBuf>) -> Result<Option<String>> {
    match (inline, file) {
        (Some(value), _) => Ok(Some(value.clone())),
        (None, Some(path)) => read_secret(path).map(Some),
        (None, None) => Ok(None),
    }
}

fn read_secret(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(path.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_names_connections() {
        let parsed = parse_config(
            "connections:\n  orders:\n    url: nats://a:4222,nats://b:4222\n    credsFile: /etc/eds/orders.creds\n    tls:\n      caFile: /etc/eds/ca.pem\n",
        )
        .unwrap();
        let orders = &parsed["orders"];
        assert_eq!(orders.url, "nats://a:4222,nats://b:4222");
        assert_eq!(orders.creds_file.as_deref(), Some(Path::new("/etc/eds/orders.creds")));
        assert_eq!(
            orders.tls.as_ref().unwrap().ca_file.as_deref(),
            Some(Path::new("/etc/eds/ca.pem"))
        );
    }

    #[test]
    fn config_file_holds_each_connections_rules() {
        let parsed = parse_config(
            "connections:\n  orders:\n    url: nats://a\n    namespaces: [team-*, billing]\n    reads:\n      - namespaces: [team-a]\n        domains: ['', hub]\n        streams: [ORDERS-*]\n  closed:\n    url: nats://b\n",
        )
        .unwrap();
        let access = access_of(&parsed);
        assert!(access.authorize("team-a", "orders", Some("hub"), "ORDERS-eu").is_ok());
        assert!(access.authorize("team-a", "orders", None, "PAYMENTS").is_err());
        assert!(access.authorize("billing", "orders", None, "PAYMENTS").is_ok());
        let denied = access.authorize("billing", "closed", None, "S").unwrap_err();
        assert!(
            denied.rule.contains("connections.closed.namespaces is not set"),
            "{denied}"
        );
        assert!(
            parse_config("connections:\n  a:\n    url: x\n    namespaces: ['a b']\n")
                .unwrap_err()
                .contains("whitespace")
        );
        assert!(
            parse_config("connections:\n  a:\n    url: x\n    reads: [{namespaces: [x], topics: [y]}]\n")
                .unwrap_err()
                .contains("topics")
        );
    }

    #[test]
    fn the_flags_connection_is_open_only_when_asked() {
        let open = NatsConfig::for_url("nats://a").access().unwrap();
        assert!(open.authorize("anyone", DEFAULT_CONNECTION, None, "S").is_ok());
        let mut config = NatsConfig::for_url("nats://a");
        config.default.namespaces = None;
        assert!(
            config
                .access()
                .unwrap()
                .authorize("anyone", DEFAULT_CONNECTION, None, "S")
                .is_err()
        );
    }

    #[test]
    fn config_file_refuses_bad_input() {
        assert!(
            parse_config("connections:\n  Bad_Name:\n    url: nats://a\n")
                .unwrap_err()
                .contains("Bad_Name")
        );
        assert!(
            parse_config("connections:\n  a:\n    url: ''\n")
                .unwrap_err()
                .contains("connections.a.url")
        );
        assert!(
            parse_config("connections:\n  a:\n    url: x\n    server: y\n")
                .unwrap_err()
                .contains("server")
        );
        assert!(
            parse_config("connections:\n  a:\n    url: x\n    token: t\n    tokenFile: /f\n")
                .unwrap_err()
                .contains("not both")
        );
    }
}
