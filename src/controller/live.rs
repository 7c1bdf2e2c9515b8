//! A child as the controller keeps it between reconciles: what the watch
//! caches, and what an apply returns.
//!
//! The object is kept as compact JSON text and parsed when a reconcile reads
//! it; only the few metadata fields the caches themselves need stay parsed.
//! As a `DynamicObject` (a `serde_json::Value` tree and a full `ObjectMeta`)
//! a live Deployment takes about nine times its JSON size in memory (each
//! JSON object is a B-tree map with room for eleven entries), and the four
//! child caches held most of the controller's memory. A reconcile parses
//! each child once, a few microseconds each (docs/benchmarks.md, "The
//! controller at scale", has the sizes).

use std::borrow::Cow;

use kube::Resource;
use kube::api::{DynamicObject, ObjectMeta};
use kube::core::DynamicResourceScope;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::children::ChildKind;

/// A live child: the whole object but its managedFields, as JSON text; and,
/// parsed, the few metadata fields the caches and the controller's mapping
/// from child to claim read (name, namespace, uid, resourceVersion, owner
/// references).
#[derive(Clone, Debug, PartialEq)]
pub struct LiveChild {
    metadata: ObjectMeta,
    /// A JSON object, written by [`LiveChild::from`], so it always parses.
    text: Box<str>,
}

impl LiveChild {
    /// The whole object (without managedFields), parsed.
    pub fn object(&self) -> Value {
        match serde_json::from_str(&self.text) {
            Ok(object) => object,
            // Unreachable: the text is a JSON object serde_json wrote.
            Err(_) => Value::Object(Map::new()),
        }
    }

    /// One top-level field (`status`, say), parsed.
    pub fn field(&self, name: &str) -> Option<Value> {
        match self.object() {
            Value::Object(mut object) => object.remove(name),
            _ => None,
        }
    }

    /// How many bytes the object takes as text.
    #[cfg(test)]
    fn text_len(&self) -> usize {
        self.text.len()
    }
}

impl From<DynamicObject> for LiveChild {
    /// Drops managedFields (a reconcile never reads them; they are about a
    /// third of a child's JSON) and turns the object into text.
    fn from(mut object: DynamicObject) -> Self {
        object.metadata.managed_fields = None;
        let text = serde_json::to_string(&object).unwrap_or_else(|_| "{}".to_string());
        let ObjectMeta {
            name,
            namespace,
            uid,
            resource_version,
            owner_references,
            ..
        } = object.metadata;
        LiveChild {
            metadata: ObjectMeta {
                name,
                namespace,
                uid,
                resource_version,
                owner_references,
                ..ObjectMeta::default()
            },
            text: text.into_boxed_str(),
        }
    }
}

impl<'de> Deserialize<'de> for LiveChild {
    /// As a [`DynamicObject`], then compacted: the tree lives only while one
    /// object is read.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DynamicObject::deserialize(deserializer).map(LiveChild::from)
    }
}

/// A child's kind is its dynamic type: one byte in every cache key, where
/// an `ApiResource` is five strings of its own in each (about 280 bytes, or
/// 11 MiB over the four caches at 10,000 claims).
impl Resource for LiveChild {
    type DynamicType = ChildKind;
    type Scope = DynamicResourceScope;

    fn kind(kind: &ChildKind) -> Cow<'_, str> {
        kind.resource().kind.as_str().into()
    }

    fn group(kind: &ChildKind) -> Cow<'_, str> {
        kind.resource().group.as_str().into()
    }

    fn version(kind: &ChildKind) -> Cow<'_, str> {
        kind.resource().version.as_str().into()
    }

    fn api_version(kind: &ChildKind) -> Cow<'_, str> {
        kind.resource().api_version.as_str().into()
    }

    fn plural(kind: &ChildKind) -> Cow<'_, str> {
        kind.resource().plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_everything_a_reconcile_reads_and_drops_managed_fields() {
        let object = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "w", "namespace": "team-a", "uid": "u-2", "resourceVersion": "7",
                "labels": {"app": "w"},
                "managedFields": [{"manager": "eds-controller", "operation": "Apply"}],
                "ownerReferences": [{"apiVersion": "platform.bizmatters.io/v1alpha1",
                    "kind": "EventDrivenService", "name": "w", "uid": "u-1", "controller": true}]
            },
            "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "img:1"}]}}},
            "status": {"readyReplicas": 2}
        });
        let live: LiveChild = serde_json::from_value(object.clone()).unwrap();
        let meta = live.meta();
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref(), meta.uid.as_deref()),
            (Some("w"), Some("team-a"), Some("u-2"))
        );
        assert_eq!(meta.resource_version.as_deref(), Some("7"));
        assert_eq!(meta.owner_references.as_ref().map(Vec::len), Some(1));
        assert_eq!(meta.labels, None, "the rest of the metadata is in the text");
        let mut expected = object.clone();
        expected["metadata"].as_object_mut().unwrap().remove("managedFields");
        assert_eq!(live.object(), expected);
        assert_eq!(live.field("status"), Some(json!({"readyReplicas": 2})));
        assert_eq!(live.field("missing"), None);
        // Compact text: no managedFields, no whitespace.
        assert_eq!(live.text_len(), expected.to_string().len());

        let same = LiveChild::from(serde_json::from_value::<DynamicObject>(object).unwrap());
        assert_eq!(same, live, "from a DynamicObject or from JSON, the same child");
    }

    /// The kind names the API paths a watch and an apply use.
    #[test]
    fn a_childs_kind_names_its_resource() {
        assert_eq!(LiveChild::api_version(&ChildKind::Deployment), "apps/v1");
        assert_eq!(LiveChild::plural(&ChildKind::Deployment), "deployments");
        assert_eq!(LiveChild::group(&ChildKind::ServiceAccount), "");
        assert_eq!(LiveChild::version(&ChildKind::Service), "v1");
        assert_eq!(LiveChild::kind(&ChildKind::ScaledObject), "ScaledObject");
        assert_eq!(LiveChild::api_version(&ChildKind::ScaledObject), "keda.sh/v1alpha1");
        assert_eq!(LiveChild::plural(&ChildKind::ScaledObject), "scaledobjects");
    }
}
