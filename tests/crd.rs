//! The committed CRD and Crossplane XRD are the ones the code generates.
use std::path::Path;

#[test]
fn the_committed_crd_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(eds::api::CRD_FILE);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = eds::api::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "{} is out of date with src/api: regenerate it with scripts/gen-crd.sh (eds crd > {}) and commit it",
        eds::api::CRD_FILE,
        eds::api::CRD_FILE
    );
}

#[test]
fn the_committed_crossplane_xrd_is_up_to_date() {
    use eds::function::xrd::{XRD_FILE, xrd_yaml};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(XRD_FILE);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == xrd_yaml().unwrap(),
        "{XRD_FILE} is out of date with src/api: regenerate it with scripts/gen-crd.sh (eds xrd > {XRD_FILE}) and commit it"
    );
}
