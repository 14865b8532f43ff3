//! What a model says about itself in its metadata: name, version, input features, and, when
//! the training pipeline wrote them, what trained it and how it scored on held-out data.

use serde::Serialize;

use crate::proto::ModelProto;
use crate::{META_FEATURES, META_METRICS, META_NAME, META_TRAINING, META_VERSION};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub features: Vec<String>,
    /// `fleet.training` (JSON): the data and rows it was trained on.
    pub training: Option<serde_json::Value>,
    /// `fleet.metrics` (JSON): held-out metrics from its card.
    pub metrics: Option<serde_json::Value>,
}

impl ModelInfo {
    /// The metadata of a decoded model; a JSON entry that does not parse is kept as a string.
    pub fn of_proto(proto: &ModelProto) -> Self {
        let json = |key: &str| {
            proto.meta(key).map(|v| {
                serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()))
            })
        };
        Self {
            name: proto.meta(META_NAME).unwrap_or("unnamed").into(),
            version: proto.meta(META_VERSION).unwrap_or("unversioned").into(),
            features: proto
                .meta(META_FEATURES)
                .map(|f| f.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
            training: json(META_TRAINING),
            metrics: json(META_METRICS),
        }
    }

    /// `name@version`, as decisions name their model.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::StringStringEntryProto;

    #[test]
    fn metadata_is_read_and_json_entries_parsed() {
        let entry = |k: &str, v: &str| StringStringEntryProto {
            key: k.into(),
            value: v.into(),
        };
        let proto = ModelProto {
            graph: None,
            metadata_props: vec![
                entry(META_NAME, "late_risk"),
                entry(META_VERSION, "2.0.0"),
                entry(META_FEATURES, "a, b"),
                entry(META_METRICS, r#"{"auc":0.9}"#),
                entry(META_TRAINING, "not json"),
            ],
        };
        let info = ModelInfo::of_proto(&proto);
        assert_eq!(info.label(), "late_risk@2.0.0");
        assert_eq!(info.features, ["a", "b"]);
        assert_eq!(info.metrics.unwrap()["auc"], 0.9);
        assert_eq!(
            info.training,
            Some(serde_json::Value::String("not json".into()))
        );
        let bare = ModelInfo::of_proto(&ModelProto::default());
        assert_eq!(
            (bare.label().as_str(), bare.training),
            ("unnamed@unversioned", None)
        );
    }
}
