//! CPU and memory by size, with the claim's single-value overrides.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::{ResourceAmounts, Resources, Size};

/// `(cpu request, cpu limit, memory request, memory limit)`. Written in the
/// API server's canonical form ("2", not "2000m"), so a comparison of desired
/// and stored objects sees no false difference.
fn size_table(size: Size) -> [&'static str; 4] {
    match size {
        Size::Micro => ["100m", "500m", "256Mi", "1Gi"],
        Size::Small => ["250m", "1", "512Mi", "2Gi"],
        Size::Medium => ["500m", "2", "1Gi", "4Gi"],
        Size::Large => ["1", "4", "2Gi", "8Gi"],
    }
}

/// A request the merged resources put above its limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("spec.resources: the {resource} request {request} is above its limit {limit} (size {size})")]
pub struct ResourceError {
    pub resource: &'static str,
    pub request: String,
    pub limit: String,
    pub size: String,
}

/// The size's requests and limits, each replaced by the claim's override
/// where it gives one.
pub fn size_resources(size: Size, overrides: Option<&Resources>) -> Result<ResourceRequirements, ResourceError> {
    let [cpu_request, cpu_limit, memory_request, memory_limit] = size_table(size);
    let pick = |amounts: Option<&ResourceAmounts>, cpu: &str, memory: &str| {
        let amounts = amounts.cloned().unwrap_or_default();
        (
            amounts.cpu.unwrap_or_else(|| Quantity(cpu.into())),
            amounts.memory.unwrap_or_else(|| Quantity(memory.into())),
        )
    };
    let (request_cpu, request_memory) = pick(overrides.and_then(|r| r.requests.as_ref()), cpu_request, memory_request);
    let (limit_cpu, limit_memory) = pick(overrides.and_then(|r| r.limits.as_ref()), cpu_limit, memory_limit);
    for (resource, request, limit) in [
        ("cpu", &request_cpu, &limit_cpu),
        ("memory", &request_memory, &limit_memory),
    ] {
        // Both parse: the CRD's rules accept only quantities.
        if let (Some(r), Some(l)) = (quantity_value(&request.0), quantity_value(&limit.0))
            && r > l
        {
            return Err(ResourceError {
                resource,
                request: request.0.clone(),
                limit: limit.0.clone(),
                size: size.to_string(),
            });
        }
    }
    Ok(ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), request_cpu),
            ("memory".to_string(), request_memory),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), limit_cpu),
            ("memory".to_string(), limit_memory),
        ])),
        ..ResourceRequirements::default()
    })
}

/// A quantity's value, close enough to compare two of them (`2000m` equals
/// the `2` the API server stores it as).
pub fn quantity_value(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => 10f64.powi(exponent.strip_prefix(['e', 'E'])?.parse().ok()?),
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(list: &Option<BTreeMap<String, Quantity>>, key: &str) -> String {
        list.as_ref().unwrap()[key].0.clone()
    }

    /// `(cpu request, cpu limit, memory request, memory limit)`.
    fn rendered(size: Size, overrides: Option<&Resources>) -> [String; 4] {
        let r = size_resources(size, overrides).unwrap();
        [
            text(&r.requests, "cpu"),
            text(&r.limits, "cpu"),
            text(&r.requests, "memory"),
            text(&r.limits, "memory"),
        ]
    }

    #[test]
    fn sizes_give_the_documented_requests_and_limits() {
        // The table, with CPU in millicores.
        let table = [
            (Size::Micro, [100.0, 500.0], ["256Mi", "1Gi"]),
            (Size::Small, [250.0, 1000.0], ["512Mi", "2Gi"]),
            (Size::Medium, [500.0, 2000.0], ["1Gi", "4Gi"]),
            (Size::Large, [1000.0, 4000.0], ["2Gi", "8Gi"]),
        ];
        for (size, millicores, memory) in table {
            let [cpu_request, cpu_limit, memory_request, memory_limit] = rendered(size, None);
            assert_eq!(quantity_value(&cpu_request).unwrap() * 1000.0, millicores[0], "{size}");
            assert_eq!(quantity_value(&cpu_limit).unwrap() * 1000.0, millicores[1], "{size}");
            assert_eq!([memory_request.as_str(), memory_limit.as_str()], memory, "{size}");
        }
    }

    #[test]
    fn an_override_replaces_single_values() {
        let overrides = Resources {
            requests: Some(ResourceAmounts {
                cpu: None,
                memory: Some(Quantity("3Gi".into())),
            }),
            limits: Some(ResourceAmounts {
                cpu: Some(Quantity("6".into())),
                memory: None,
            }),
        };
        assert_eq!(rendered(Size::Large, Some(&overrides)), ["1", "6", "3Gi", "8Gi"]);
    }

    #[test]
    fn a_request_above_the_limit_is_refused() {
        let overrides = Resources {
            requests: Some(ResourceAmounts {
                cpu: None,
                memory: Some(Quantity("5Gi".into())),
            }),
            limits: None,
        };
        let err = size_resources(Size::Medium, Some(&overrides)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.resources: the memory request 5Gi is above its limit 4Gi (size medium)"
        );
    }

    #[test]
    fn quantities_compare_across_suffixes() {
        for (a, b) in [
            ("1500m", "2"),
            ("1Gi", "1100M"),
            ("999Mi", "1Gi"),
            ("1e3", "1k1"),
            ("0.5", "501m"),
        ] {
            let (a, b) = (quantity_value(a), quantity_value(b));
            match (a, b) {
                (Some(a), Some(b)) => assert!(a < b, "{a} < {b}"),
                // "1k1" is not a quantity
                (Some(_), None) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(quantity_value("2Ki"), Some(2048.0));
        assert_eq!(quantity_value("lots"), None);
    }
}
