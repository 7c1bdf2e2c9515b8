//! Which namespaces may use which NATS connection, and what they may read on
//! it. Pure: the rules come from the connection configuration (the
//! NATS connection settings); the scaler and the controller both ask [`Access`].
//!
//! One scaler serves every team's ScaledObjects, and KEDA hands it the
//! trigger metadata of hand-written ones too: without these rules any
//! namespace could read the lag of any stream on any configured connection.
//! A connection with no rule written allows no namespace, so "every
//! namespace" (`namespaces: ["*"]`) is always a choice someone wrote down.
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::quote::{clip, quote};

/// The longest pattern accepted, in bytes: longer than any name it can match
/// (namespaces are at most 63 bytes, streams at most 255).
pub const MAX_PATTERN_BYTES: usize = 255;
/// The most patterns one list may hold: matching stays cheap per request.
pub const MAX_PATTERNS: usize = 256;
/// The most `reads` rules one connection may hold.
pub const MAX_READ_RULES: usize = 256;

/// A name or a glob in which `*` stands for any run of characters (possibly
/// none), e.g. `team-*`. No other character is special.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Pattern(String);

impl Pattern {
    /// The empty pattern matches only the empty name: in `domains`, no
    /// domain.
    pub fn new(text: &str) -> Result<Self, String> {
        if text.len() > MAX_PATTERN_BYTES {
            return Err(format!("a pattern is at most {MAX_PATTERN_BYTES} bytes"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("pattern {text:?} holds whitespace"));
        }
        Ok(Pattern(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches. Greedy with one back-track point (the last
    /// `*`): at most pattern length x name length steps, both bounded.
    pub fn matches(&self, name: &str) -> bool {
        let (p, n) = (self.0.as_bytes(), name.as_bytes());
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ni));
                pi += 1;
            } else if pi < p.len() && p[pi] == n[ni] {
                pi += 1;
                ni += 1;
            } else if let Some((star_pi, star_ni)) = star {
                pi = star_pi + 1;
                ni = star_ni + 1;
                star = Some((star_pi, star_ni + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&b| b == b'*')
    }
}

impl TryFrom<String> for Pattern {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Pattern::new(&text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A list of patterns; a name is in it when any pattern matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<Pattern>")]
pub struct Patterns(Vec<Pattern>);

impl Patterns {
    pub fn new(patterns: &[&str]) -> Result<Self, String> {
        patterns
            .iter()
            .map(|p| Pattern::new(p))
            .collect::<Result<Vec<_>, _>>()
            .and_then(Self::try_from)
    }

    /// `["*"]`: every name.
    pub fn any() -> Self {
        Patterns(vec![Pattern("*".into())])
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(name))
    }
}

impl TryFrom<Vec<Pattern>> for Patterns {
    type Error = String;
    fn try_from(patterns: Vec<Pattern>) -> Result<Self, String> {
        if patterns.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} patterns"));
        }
        Ok(Patterns(patterns))
    }
}

impl fmt::Display for Patterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(Pattern::as_str).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

/// A narrower read rule: the namespaces it names may read, on this
/// connection, only the domains and streams it lists (a missing list allows
/// any). A domain of `""` is the account's own JetStream (no domain).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadRule {
    pub namespaces: Patterns,
    pub domains: Option<Patterns>,
    pub streams: Option<Patterns>,
}

impl ReadRule {
    fn allows(&self, domain: Option<&str>, stream: &str) -> bool {
        self.domains.as_ref().is_none_or(|d| d.matches(domain.unwrap_or("")))
            && self.streams.as_ref().is_none_or(|s| s.matches(stream))
    }
}

impl fmt::Display for ReadRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "namespaces {}", self.namespaces)?;
        if let Some(domains) = &self.domains {
            write!(f, ", domains {domains}")?;
        }
        if let Some(streams) = &self.streams {
            write!(f, ", streams {streams}")?;
        }
        Ok(())
    }
}

/// One connection's rules, as written in its configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionRules {
    /// Who may use the connection at all; `None` (nothing written) is nobody.
    pub namespaces: Option<Patterns>,
    /// Narrower reads for some of them; a namespace no rule names may read
    /// any stream the connection reaches.
    pub reads: Vec<ReadRule>,
}

impl ConnectionRules {
    /// `namespaces: ["*"]`, no read rules: the one-team choice.
    pub fn every_namespace() -> Self {
        ConnectionRules {
            namespaces: Some(Patterns::any()),
            reads: Vec::new(),
        }
    }
}

/// Every connection's rules, by connection name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    by_connection: BTreeMap<String, ConnectionRules>,
}

/// The most bytes of a rule a refusal quotes: the configuration may list
/// hundreds of patterns, and the message must stay well inside a gRPC
/// client's 16 KiB metadata limit.
pub const MAX_RULE_BYTES: usize = 1024;

/// Why a request was refused: the namespace, the connection and the rule.
/// The message quotes each name by at most a short prefix (they come from
/// the request, and a hostile one may be a megabyte long).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "namespace {} may not {} on NATS connection {}: {}",
    quote(.namespace),
    .what,
    quote(.connection),
    clip(.rule, MAX_RULE_BYTES)
)]
pub struct Denied {
    pub namespace: String,
    pub connection: String,
    /// What was asked: `use it`, or `read stream "S"` (with its domain).
    pub what: String,
    /// The rule that refused it, as the configuration spells it.
    pub rule: String,
}

impl Access {
    pub fn new(by_connection: BTreeMap<String, ConnectionRules>) -> Self {
        Access { by_connection }
    }

    /// Connections that allow no namespace (nothing written), to warn about
    /// at start-up.
    pub fn closed_connections(&self) -> impl Iterator<Item = &str> {
        self.by_connection
            .iter()
            .filter(|(_, rules)| rules.namespaces.is_none())
            .map(|(name, _)| name.as_str())
    }

    /// Whether `namespace` may read `stream` (in `domain`) on `connection`.
    pub fn authorize(
        &self,
        namespace: &str,
        connection: &str,
        domain: Option<&str>,
        stream: &str,
    ) -> Result<(), Denied> {
        let denied = |what: String, rule: String| Denied {
            namespace: namespace.to_string(),
            connection: connection.to_string(),
            what,
            rule,
        };
        let use_it = || "use it".to_string();
        let Some(rules) = self.by_connection.get(connection) else {
            return Err(denied(use_it(), "the connection is not configured".into()));
        };
        let Some(namespaces) = &rules.namespaces else {
            return Err(denied(
                use_it(),
                format!("connections.{connection}.namespaces is not set, so no namespace may"),
            ));
        };
        if !namespaces.matches(namespace) {
            return Err(denied(
                use_it(),
                format!("connections.{connection}.namespaces is {namespaces}"),
            ));
        }
        let mut naming = rules
            .reads
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.namespaces.matches(namespace))
            .peekable();
        if naming.peek().is_none() {
            return Ok(());
        }
        let mut refusing = Vec::new();
        for (index, rule) in naming {
            if rule.allows(domain, stream) {
                return Ok(());
            }
            refusing.push(format!("connections.{connection}.reads[{index}] allows {rule}"));
        }
        let what = match domain {
            Some(domain) => format!("read stream {} in domain {}", quote(stream), quote(domain)),
            None => format!("read stream {}", quote(stream)),
        };
        Err(denied(what, refusing.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> Pattern {
        Pattern::new(text).unwrap()
    }

    #[test]
    fn globs_match_names_and_stars_only() {
        for (p, name, matches) in [
            ("team-a", "team-a", true),
            ("team-a", "team-ab", false),
            ("team-*", "team-a", true),
            ("team-*", "team-", true),
            ("team-*", "team", false),
            ("*", "", true),
            ("*-prod", "orders-prod", true),
            ("*-prod", "orders-prod-2", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            ("?", "x", false),
            ("ORDERS.*", "ORDERS.x", true),
        ] {
            assert_eq!(pattern(p).matches(name), matches, "{p} vs {name}");
        }
    }

    #[test]
    fn patterns_are_bounded() {
        assert!(!pattern("").matches("a") && pattern("").matches(""));
        assert!(Pattern::new("a b").is_err());
        assert!(Pattern::new(&"a".repeat(MAX_PATTERN_BYTES)).is_ok());
        assert!(Pattern::new(&"a".repeat(MAX_PATTERN_BYTES + 1)).is_err());
        let many: Vec<Pattern> = (0..=MAX_PATTERNS).map(|i| pattern(&format!("n{i}"))).collect();
        assert!(Patterns::try_from(many).is_err());
    }

    fn access(rules: &[(&str, ConnectionRules)]) -> Access {
        Access::new(rules.iter().map(|(n, r)| (n.to_string(), r.clone())).collect())
    }

    fn patterns(list: &[&str]) -> Patterns {
        Patterns::new(list).unwrap()
    }

    #[test]
    fn a_connection_with_no_rule_allows_no_namespace() {
        let access = access(&[("default", ConnectionRules::default())]);
        let denied = access.authorize("team-a", "default", None, "S").unwrap_err();
        assert_eq!(
            (denied.namespace.as_str(), denied.connection.as_str()),
            ("team-a", "default")
        );
        assert!(
            denied.rule.contains("connections.default.namespaces is not set"),
            "{denied}"
        );
        let unknown = access.authorize("team-a", "orders", None, "S").unwrap_err();
        assert!(unknown.rule.contains("not configured"), "{unknown}");
        assert_eq!(access.closed_connections().collect::<Vec<_>>(), ["default"]);
    }

    #[test]
    fn namespaces_pick_who_may_use_a_connection() {
        let access = access(&[
            ("default", ConnectionRules::every_namespace()),
            (
                "orders",
                ConnectionRules {
                    namespaces: Some(patterns(&["team-*", "billing"])),
                    reads: Vec::new(),
                },
            ),
        ]);
        assert!(access.authorize("anyone", "default", None, "S").is_ok());
        assert!(access.authorize("team-a", "orders", None, "S").is_ok());
        assert!(access.authorize("billing", "orders", Some("hub"), "S").is_ok());
        let denied = access.authorize("payments", "orders", None, "S").unwrap_err();
        assert_eq!(
            denied.to_string(),
            "namespace \"payments\" may not use it on NATS connection \"orders\": \
             connections.orders.namespaces is [team-*, billing]"
        );
    }

    #[test]
    fn read_rules_narrow_the_streams_and_domains_of_the_namespaces_they_name() {
        let access = access(&[(
            "orders",
            ConnectionRules {
                namespaces: Some(Patterns::any()),
                reads: vec![
                    ReadRule {
                        namespaces: patterns(&["team-a"]),
                        domains: Some(patterns(&["", "hub"])),
                        streams: Some(patterns(&["ORDERS", "ORDERS-*"])),
                    },
                    ReadRule {
                        namespaces: patterns(&["team-*"]),
                        domains: None,
                        streams: Some(patterns(&["SHARED"])),
                    },
                ],
            },
        )]);
        assert!(access.authorize("team-a", "orders", None, "ORDERS").is_ok());
        assert!(access.authorize("team-a", "orders", Some("hub"), "ORDERS-eu").is_ok());
        assert!(
            access.authorize("team-a", "orders", Some("leaf"), "SHARED").is_ok(),
            "rule 1"
        );
        assert!(access.authorize("team-b", "orders", Some("leaf"), "SHARED").is_ok());
        assert!(
            access.authorize("ops", "orders", None, "ANYTHING").is_ok(),
            "named by no rule"
        );
        let denied = access
            .authorize("team-a", "orders", Some("leaf"), "ORDERS")
            .unwrap_err();
        assert_eq!(denied.what, "read stream \"ORDERS\" in domain \"leaf\"");
        assert!(
            denied
                .rule
                .contains("connections.orders.reads[0] allows namespaces [team-a], domains [, hub]")
        );
        assert!(
            denied
                .rule
                .contains("connections.orders.reads[1] allows namespaces [team-*], streams [SHARED]")
        );
        let denied = access.authorize("team-b", "orders", None, "ORDERS").unwrap_err();
        assert!(!denied.rule.contains("reads[0]"), "{denied}");
    }

    #[test]
    fn a_refusal_quotes_hostile_names_and_long_rules_by_a_prefix() {
        let many: Vec<String> = (0..MAX_PATTERNS).map(|i| format!("team-{i:0>200}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let access = access(&[(
            "orders",
            ConnectionRules {
                namespaces: Some(patterns(&many)),
                reads: Vec::new(),
            },
        )]);
        let huge = "n".repeat(1_000_000);
        let message = access.authorize(&huge, "orders", None, "S").unwrap_err().to_string();
        assert!(message.len() < 2 * MAX_RULE_BYTES, "{} bytes", message.len());
        assert!(message.starts_with(&format!("namespace \"{}\"... (1000000 bytes)", "n".repeat(64))));
        assert!(message.contains("connections.orders.namespaces is [team-"), "{message}");
        let unknown = access
            .authorize("team-a", &huge, Some(&huge), "S")
            .unwrap_err()
            .to_string();
        assert!(unknown.len() < 512, "{unknown}");
    }
}
