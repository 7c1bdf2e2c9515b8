//! The Crossplane CompositeResourceDefinition for `EventDrivenService`,
//! derived from the same Rust types (and so the same schema and CEL rules) as
//! the CRD: one API, defined once, served by either path.
use serde_json::{Map, Value, json};

use crate::{Error, Result};

/// Where the generated XRD is committed, relative to the repository root.
pub const XRD_FILE: &str = "apis/crossplane/definition.yaml";

/// Status fields Crossplane writes itself (`conditions`), or that only the
/// controller can fill (`lag` and `drain` need NATS; `observedGeneration`
/// describes the controller's reconcile). The function writes the rest.
const STATUS_NOT_FROM_THE_FUNCTION: [&str; 4] = ["conditions", "observedGeneration", "lag", "drain"];

/// Printer columns Crossplane adds its own of (`READY`, `AGE`), or that
/// show a field this path leaves empty.
const COLUMNS_NOT_ON_THIS_PATH: [&str; 3] = ["Ready", "Age", "Lag"];

/// The XRD: a namespaced Crossplane v2 composite resource of the CRD's group,
/// kind and version, with the CRD's spec schema and validation rules.
pub fn xrd() -> Result<Value> {
    let crd = crate::api::crd();
    let version = crd
        .spec
        .versions
        .first()
        .ok_or_else(|| Error::serialize("the XRD", "the CRD has no version"))?;
    let root = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or_else(|| Error::serialize("the XRD", "the CRD has no schema"))?;
    let root = serde_json::to_value(root).map_err(|e| Error::serialize("the CRD schema", e))?;

    let mut schema = Map::new();
    for key in ["description", "type", "x-kubernetes-validations"] {
        if let Some(value) = root.get(key) {
            schema.insert(key.into(), value.clone());
        }
    }
    let mut status = root["properties"]["status"].clone();
    if let Some(properties) = status.get_mut("properties").and_then(Value::as_object_mut) {
        properties.retain(|key, _| !STATUS_NOT_FROM_THE_FUNCTION.contains(&key.as_str()));
    }
    schema.insert(
        "properties".into(),
        json!({"spec": root["properties"]["spec"], "status": status}),
    );

    let columns: Vec<Value> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| !COLUMNS_NOT_ON_THIS_PATH.contains(&c.name.as_str()))
        .map(serde_json::to_value)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::serialize("the printer columns", e))?;
    let names = serde_json::to_value(&crd.spec.names).map_err(|e| Error::serialize("the CRD names", e))?;
    Ok(json!({
        "apiVersion": "apiextensions.crossplane.io/v2",
        "kind": "CompositeResourceDefinition",
        "metadata": {"name": crd.metadata.name},
        "spec": {
            "scope": "Namespaced",
            "group": crd.spec.group,
            "names": names,
            "versions": [{
                "name": version.name,
                "served": true,
                "referenceable": true,
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }))
}

/// The XRD as YAML, exactly as committed at [`XRD_FILE`].
pub fn xrd_yaml() -> Result<String> {
    let yaml = serde_yaml::to_string(&xrd()?).map_err(|e| Error::serialize("the XRD", e))?;
    Ok(format!(
        "# Generated from src/api by `eds xrd` (scripts/gen-crd.sh). Do not edit.\n{yaml}"
    ))
}

/// Prints the XRD as YAML.
pub fn print_xrd() -> Result<()> {
    print!("{}", xrd_yaml()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xrd_has_the_crds_spec_schema_and_rules() {
        let xrd = xrd().unwrap();
        let crd = serde_json::to_value(crate::api::crd()).unwrap();
        let crd_root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let root = &xrd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert_eq!(root["properties"]["spec"], crd_root["properties"]["spec"]);
        assert_eq!(root["x-kubernetes-validations"], crd_root["x-kubernetes-validations"]);
        assert_eq!(xrd["spec"]["group"], "platform.bizmatters.io");
        assert_eq!(xrd["spec"]["names"]["kind"], "EventDrivenService");
        assert_eq!(xrd["spec"]["scope"], "Namespaced");
    }

    #[test]
    fn the_status_leaves_conditions_to_crossplane() {
        let xrd = xrd().unwrap();
        let status = &xrd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        let keys: Vec<&str> = status.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["readyReplicas", "replicas"]);
    }
}
