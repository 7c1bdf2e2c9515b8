//! A throwaway PKI for TLS tests: one CA, and leaf certificates it signs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: PathBuf,
}

/// A certificate and its key, as PEM files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_pem,
        }
    }

    /// A server certificate for loopback.
    pub fn server(&self, name: &str) -> Leaf {
        self.leaf(name, &[ExtendedKeyUsagePurpose::ServerAuth], &[], Some(&[]))
    }

    /// A client certificate with CommonName `cn` and optional Organizations.
    pub fn client(&self, cn: &str, organizations: &[&str]) -> Leaf {
        self.leaf(cn, &[ExtendedKeyUsagePurpose::ClientAuth], organizations, None)
    }

    /// One certificate to serve and to dial with, for loopback and the extra
    /// `dns_names` (KEDA's operator and adapter share one for their mutual-TLS
    /// link, and the adapter serves the API server's aggregator with it).
    pub fn server_and_client(&self, name: &str, dns_names: &[&str]) -> Leaf {
        let usages = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(name, &usages, &[], Some(dns_names))
    }

    /// `loopback`: serve on loopback, plus these DNS names.
    fn leaf(&self, cn: &str, usages: &[ExtendedKeyUsagePurpose], orgs: &[&str], loopback: Option<&[&str]>) -> Leaf {
        let sans: Vec<String> = match loopback {
            Some(names) => std::iter::once("localhost")
                .chain(names.iter().copied())
                .map(String::from)
                .collect(),
            None => Vec::new(),
        };
        let mut params = CertificateParams::new(sans).unwrap();
        if loopback.is_some() {
            params
                .subject_alt_names
                .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        for org in orgs {
            params.distinguished_name.push(DnType::OrganizationName, *org);
        }
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let file = cn.replace([':', '/'], "-");
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}
