//! The ONNX messages the fleet reads: a model's metadata and, when its graph
//! is one `TreeEnsembleClassifier` from input to outputs (what XGBoost and LightGBM exports
//! are), that node, which the host runs with its own evaluator.
//!
//! Only the fields read are declared; prost skips the rest, and accepts repeated numbers packed
//! or not (ONNX is proto2, whose writers do either). Field numbers are those of `onnx.proto`.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<Opaque>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A message whose content is not read, only counted.
#[derive(Clone, PartialEq, Message)]
pub struct Opaque {}

impl ModelProto {
    /// Decodes a serialized model.
    pub fn parse(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        Self::decode(bytes)
    }

    /// The value of the metadata entry `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata_props
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }

    /// The graph's only node when it is a `TreeEnsembleClassifier` reading the graph's only
    /// input and producing every graph output.
    pub fn whole_graph_ensemble(&self) -> Option<&NodeProto> {
        let graph = self.graph.as_ref()?;
        let ([node], [input], []) = (&graph.node[..], &graph.input[..], &graph.initializer[..])
        else {
            return None;
        };
        let reads_input = node.input.len() == 1 && node.input[0] == input.name;
        let writes_outputs =
            !graph.output.is_empty() && graph.output.iter().all(|o| node.output.contains(&o.name));
        (node.op_type == "TreeEnsembleClassifier" && reads_input && writes_outputs).then_some(node)
    }
}

impl NodeProto {
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, input: &str, output: &str) -> NodeProto {
        NodeProto {
            input: vec![input.into()],
            output: vec!["label".into(), output.into()],
            name: op.to_lowercase(),
            op_type: op.into(),
            attribute: Vec::new(),
        }
    }

    fn model(nodes: Vec<NodeProto>, outputs: &[&str]) -> ModelProto {
        let value = |name: &str| ValueInfoProto { name: name.into() };
        let proto = ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                initializer: Vec::new(),
                input: vec![value("X")],
                output: outputs.iter().map(|o| value(o)).collect(),
            }),
            metadata_props: vec![StringStringEntryProto {
                key: "fleet.model_name".into(),
                value: "m".into(),
            }],
        };
        // Through the wire format, as a model file is read.
        ModelProto::parse(&proto.encode_to_vec()).unwrap()
    }

    #[test]
    fn only_a_graph_that_is_one_tree_ensemble_runs_without_tract() {
        let ensemble = || node("TreeEnsembleClassifier", "X", "probabilities");
        let whole = model(vec![ensemble()], &["label", "probabilities"]);
        assert_eq!(whole.meta("fleet.model_name"), Some("m"));
        assert_eq!(whole.whole_graph_ensemble(), Some(&ensemble()));

        let followed = model(
            vec![ensemble(), node("Identity", "probabilities", "p")],
            &["p"],
        );
        assert!(followed.whole_graph_ensemble().is_none());
        let elsewhere = model(vec![node("TreeEnsembleClassifier", "Y", "p")], &["p"]);
        assert!(elsewhere.whole_graph_ensemble().is_none());
        let other_op = model(vec![node("TreeEnsembleRegressor", "X", "p")], &["p"]);
        assert!(other_op.whole_graph_ensemble().is_none());
        let hidden_output = model(vec![ensemble()], &["probabilities", "extra"]);
        assert!(hidden_output.whole_graph_ensemble().is_none());
    }
}
