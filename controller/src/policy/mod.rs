//! Policy documents: the `gostoa.dev/v1alpha1` YAML dialect.
//!
//! Every document is `{apiVersion, kind, metadata, spec}`; `spec`'s type depends on
//! `kind`. All structs deny unknown fields and validate their scalars while
//! deserializing, so serde_yaml reports the line, column and field path of any mistake.
//!
//! What parsing cannot see within one document (duplicates, a field that needs
//! another) is found by [`Spec::check`]; what spans documents (references, unique
//! names) by the loader.
//!
//! Adding a kind: write its spec type in its own module, implement [`Spec`], add a
//! [`Kind`] variant and a [`Document`] variant, and one arm in `parse_typed`.

mod access;
mod consumer;
mod contract;
mod fields;
mod http;
mod mcp;
mod path;
mod quota;
mod subject;
mod workload;

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

pub use access::{AccessPolicy, AccessPolicySpec, Grant};
pub use consumer::{ApiKeyEntry, ApiKeyHash, ApiKeyId, Consumer, ConsumerSpec};
pub use contract::{
    ApiContract, ApiContractSpec, ApiKeySettings, CredentialKind, JwtSettings, Operation, Protocol,
    UnmatchedRoutes, DEFAULT_API_KEY_HEADER, DEFAULT_GROUPS_CLAIM,
};
pub use fields::{
    Address, CgroupPath, LabelKey, LabelValue, Labels, Name, Namespace, ObjectRef, PlanName,
    PositiveU64, ServiceAccountName, Text,
};
pub use http::{
    HeaderName, HttpMethod, HttpUrl, JwtAlgorithm, OperationId, PathTemplate, QueryParamName,
    TemplateSegment,
};
pub use mcp::{
    AllowedValue, ArgumentConstraint, ArgumentName, ArgumentPattern, Arguments, EndpointPath,
    McpSettings, OAuthScope, OAuthSettings, OtherMethods, Tool, ToolName, ToolPattern,
    UnlistedTools, DEFAULT_MCP_PATH, DEFAULT_SSE_PATH,
};
pub use path::{locate, locate_nearest, FieldPath, Issue, Issues, PathSegment};
pub use quota::{Limit, Period, Quota, QuotaMode, QuotaScope, QuotaSpec};
pub use subject::{ConsumerSelector, JwtSelector, Subject, WorkloadSelector};
pub use workload::{Workload, WorkloadSpec};

/// The only `apiVersion` understood so far.
pub const API_VERSION: &str = "gostoa.dev/v1alpha1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum ApiVersion {
    #[serde(rename = "gostoa.dev/v1alpha1")]
    V1Alpha1,
}

/// The document kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum Kind {
    Workload,
    ApiContract,
    Consumer,
    AccessPolicy,
    Quota,
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::Workload,
        Kind::ApiContract,
        Kind::Consumer,
        Kind::AccessPolicy,
        Kind::Quota,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Workload => "Workload",
            Kind::ApiContract => "ApiContract",
            Kind::Consumer => "Consumer",
            Kind::AccessPolicy => "AccessPolicy",
            Kind::Quota => "Quota",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind's `spec` type.
pub trait Spec: DeserializeOwned {
    const KIND: Kind;

    /// Reports what parsing cannot see within the spec; paths start at `spec`.
    fn check(&self, _issues: &mut Issues) {}
}

/// One policy document: the envelope shared by all kinds, with a kind-specific spec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a policy document (a mapping with apiVersion, kind, metadata and spec)"
)]
pub struct Object<S> {
    pub api_version: ApiVersion,
    pub kind: Kind,
    pub metadata: ObjectMeta,
    pub spec: S,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Name,
    #[serde(default)]
    pub namespace: Namespace,
    /// Labels of the object itself (for selecting objects), not identity labels.
    #[serde(default)]
    pub labels: Labels,
}

/// Any document, typed by its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Workload(Workload),
    ApiContract(ApiContract),
    Consumer(Consumer),
    AccessPolicy(AccessPolicy),
    Quota(Quota),
}

impl Document {
    pub fn kind(&self) -> Kind {
        match self {
            Document::Workload(_) => Kind::Workload,
            Document::ApiContract(_) => Kind::ApiContract,
            Document::Consumer(_) => Kind::Consumer,
            Document::AccessPolicy(_) => Kind::AccessPolicy,
            Document::Quota(_) => Kind::Quota,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Document::Workload(o) => &o.metadata,
            Document::ApiContract(o) => &o.metadata,
            Document::Consumer(o) => &o.metadata,
            Document::AccessPolicy(o) => &o.metadata,
            Document::Quota(o) => &o.metadata,
        }
    }

    /// The issues [`Spec::check`] finds in this document.
    pub fn check(&self) -> Vec<Issue> {
        let mut issues = Issues::default();
        match self {
            Document::Workload(o) => o.spec.check(&mut issues),
            Document::ApiContract(o) => o.spec.check(&mut issues),
            Document::Consumer(o) => o.spec.check(&mut issues),
            Document::AccessPolicy(o) => o.spec.check(&mut issues),
            Document::Quota(o) => o.spec.check(&mut issues),
        }
        issues.0
    }

    /// (kind, namespace, name): unique within a policy set.
    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        ObjectKey {
            kind: self.kind(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: Namespace,
    pub name: Name,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A 1-based line and column in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Why one document was rejected. `message` starts with the field path when there is
/// one (`spec.address: invalid ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    pub position: Option<Position>,
    pub message: String,
}

impl DocumentError {
    fn from_yaml(err: &serde_yaml::Error) -> Self {
        let position = err.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        });
        let mut message = err.to_string();
        // serde_yaml appends the location to its message; it goes in front instead.
        if let Some(p) = position {
            let suffix = format!(" at line {} column {}", p.line, p.column);
            if let Some(at) = message.find(&suffix) {
                message.replace_range(at..at + suffix.len(), "");
            }
        }
        Self { position, message }
    }
}

/// One document of a YAML stream, parsed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDocument {
    /// 1-based position of the document in its stream (empty documents count too).
    pub index: usize,
    /// `kind` and `metadata.name` as written, when readable, to name the document in errors.
    pub kind: Option<String>,
    pub name: Option<String>,
    pub result: Result<Document, DocumentError>,
}

/// Parses every document of a `---`-separated YAML stream. Empty documents are skipped.
/// A YAML syntax error ends the stream: nothing after it can be trusted.
pub fn parse_documents(text: &str) -> Vec<ParsedDocument> {
    // Pass 1, lenient: finds the kind (which selects the spec type) and the name (for
    // error messages) whatever the key order. It accepts any YAML, so its only errors
    // are syntax errors, after which the stream cannot be trusted.
    let mut headers = Vec::new();
    let mut parsed = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Loose::deserialize(doc) {
            Ok(value) => headers.push(value),
            Err(err) => {
                parsed.push(ParsedDocument {
                    index: i + 1,
                    kind: None,
                    name: None,
                    result: Err(DocumentError::from_yaml(&err)),
                });
                break;
            }
        }
    }

    // Pass 2, typed, straight from the YAML events so that errors keep their positions.
    let mut docs = serde_yaml::Deserializer::from_str(text);
    let mut typed = Vec::new();
    for (i, header) in headers.into_iter().enumerate() {
        let Some(doc) = docs.next() else { break };
        if matches!(header, Loose::Null) {
            continue;
        }
        let kind = header.get("kind").and_then(Loose::as_str);
        let name = header
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Loose::as_str);
        typed.push(ParsedDocument {
            index: i + 1,
            kind: kind.map(str::to_owned),
            name: name.map(str::to_owned),
            result: parse_typed(doc, kind.and_then(Kind::from_name))
                .map_err(|e| DocumentError::from_yaml(&e)),
        });
    }
    typed.extend(parsed);
    typed
}

/// Any YAML value, keeping only strings and mappings (for `kind` and `metadata.name`).
/// Unlike `serde_yaml::Value` it accepts duplicate keys: those are the typed pass's to
/// report, with the other errors of the document.
enum Loose {
    Null,
    Str(String),
    Map(Vec<(Loose, Loose)>),
    Other,
}

impl Loose {
    fn get(&self, key: &str) -> Option<&Loose> {
        match self {
            Loose::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Loose, E> {
        Ok(Loose::Str(v.to_owned()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Loose, E> {
        Ok(Loose::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Loose, E> {
        Ok(Loose::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Loose, E> {
        Ok(Loose::Other)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Loose, E> {
        Ok(Loose::Other)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Loose, E> {
        Ok(Loose::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Loose, E> {
        Ok(Loose::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Loose, D::Error> {
        Loose::deserialize(d)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::Other)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Loose, Loose>()? {
            entries.push(entry);
        }
        Ok(Loose::Map(entries))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Loose, A::Error> {
        // A tagged value (`!tag x`).
        de::VariantAccess::newtype_variant::<IgnoredAny>(data.variant::<IgnoredAny>()?.1)?;
        Ok(Loose::Other)
    }
}

fn parse_typed(doc: serde_yaml::Deserializer, kind: Option<Kind>) -> serde_yaml::Result<Document> {
    match kind {
        Some(Kind::Workload) => Workload::deserialize(doc).map(Document::Workload),
        Some(Kind::ApiContract) => ApiContract::deserialize(doc).map(Document::ApiContract),
        Some(Kind::Consumer) => Consumer::deserialize(doc).map(Document::Consumer),
        Some(Kind::AccessPolicy) => AccessPolicy::deserialize(doc).map(Document::AccessPolicy),
        Some(Kind::Quota) => Quota::deserialize(doc).map(Document::Quota),
        None => {
            // No usable kind: deserializing the envelope reports where and why (missing
            // field, unknown variant) along with any other envelope error.
            Object::<IgnoredAny>::deserialize(doc)?;
            Err(de::Error::custom("kind: unknown kind"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Document, DocumentError> {
        let mut docs = parse_documents(text);
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0).result
    }

    const WORKLOAD: &str = "\
apiVersion: gostoa.dev/v1alpha1
kind: Workload
metadata:
  name: billing-agent
  namespace: finance
spec:
  cgroup: stoa.slice/billing-agent
  serviceAccount: billing-agent
  labels:
    app: billing-agent
";

    #[test]
    fn parses_workload_with_defaults() {
        let Document::Workload(w) = one(WORKLOAD).unwrap() else {
            panic!("not a workload")
        };
        assert_eq!(w.metadata.namespace.as_str(), "finance");
        assert_eq!(w.spec.cgroup.as_str(), "stoa.slice/billing-agent");
        assert_eq!(
            w.spec.labels.iter().collect::<Vec<_>>(),
            [("app", "billing-agent")]
        );

        let minimal = "kind: Workload\napiVersion: gostoa.dev/v1alpha1\n\
                       metadata: {name: w}\nspec: {cgroup: a/b}\n";
        let Document::Workload(w) = one(minimal).unwrap() else {
            panic!("not a workload")
        };
        assert_eq!(w.metadata.namespace.as_str(), "default");
        assert_eq!(w.spec.service_account.as_str(), "default");
        assert!(w.spec.labels.is_empty());
    }

    #[test]
    fn parses_contract() {
        let text = "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\n\
                    metadata: {name: orders-api, namespace: shop}\n\
                    spec: {protocol: http, address: 10.96.0.10:80}\n";
        let Document::ApiContract(c) = one(text).unwrap() else {
            panic!("not a contract")
        };
        assert_eq!(c.spec.protocol, Protocol::Http);
        assert_eq!(c.spec.address.to_string(), "10.96.0.10:80");
    }

    #[test]
    fn unknown_field_names_field_and_position() {
        let text = WORKLOAD.replace("  serviceAccount:", "  serviceAcount:");
        let err = one(&text).unwrap_err();
        assert_eq!(err.position, Some(Position { line: 8, column: 3 }));
        assert!(
            err.message
                .starts_with("spec: unknown field `serviceAcount`"),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_value_points_at_value() {
        let text = WORKLOAD.replace("cgroup: stoa.slice", "cgroup: /stoa.slice");
        let err = one(&text).unwrap_err();
        assert_eq!(
            err.position,
            Some(Position {
                line: 7,
                column: 11
            })
        );
        assert!(
            err.message.starts_with("spec.cgroup: cgroup path"),
            "{err:?}"
        );
        assert!(err.message.contains("no leading '/'"), "{err:?}");
    }

    #[test]
    fn envelope_errors() {
        let err = one(
            "apiVersion: gostoa.dev/v1\nkind: Workload\nmetadata: {name: a}\nspec: {cgroup: a}\n",
        )
        .unwrap_err();
        assert!(
            err.message.starts_with("apiVersion: unknown variant"),
            "{err:?}"
        );

        let err =
            one("apiVersion: gostoa.dev/v1alpha1\nkind: Gadget\nmetadata: {name: a}\nspec: {}\n")
                .unwrap_err();
        assert_eq!(err.position, Some(Position { line: 2, column: 7 }));
        assert!(
            err.message.starts_with("kind: unknown variant `Gadget`"),
            "{err:?}"
        );

        let err =
            one("apiVersion: gostoa.dev/v1alpha1\nmetadata: {name: a}\nspec: {}\n").unwrap_err();
        assert!(err.message.contains("missing field `kind`"), "{err:?}");

        let err = one("- a\n- b\n").unwrap_err();
        assert!(
            err.message.contains("expected a policy document"),
            "{err:?}"
        );
    }

    #[test]
    fn multi_document_stream() {
        let text = format!(
            "---\n{WORKLOAD}---\n# only a comment\n---\n{}",
            WORKLOAD
                .replace("billing-agent\n  namespace", "other\n  namespace")
                .replace("cgroup: stoa.slice/billing-agent", "cgroup: 1/../2")
        );
        let docs = parse_documents(&text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].index, 1);
        assert!(docs[0].result.is_ok());
        assert_eq!(docs[1].index, 3);
        assert_eq!(docs[1].kind.as_deref(), Some("Workload"));
        assert_eq!(docs[1].name.as_deref(), Some("other"));
        let err = docs[1].result.as_ref().unwrap_err();
        // Positions are absolute in the stream, not relative to the document.
        assert_eq!(err.position.map(|p| p.line), Some(21));
    }

    #[test]
    fn syntax_error_stops_stream() {
        let text = format!("{WORKLOAD}---\nkind: [unclosed\n---\n{WORKLOAD}");
        let docs = parse_documents(&text);
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert!(docs[0].result.is_ok());
        assert_eq!(docs[1].index, 2);
        assert!(docs[1].result.as_ref().unwrap_err().position.is_some());
    }

    #[test]
    fn duplicate_keys_rejected() {
        let text = WORKLOAD.replace("    app: billing-agent", "    app: a\n    app: b");
        let err = one(&text).unwrap_err();
        assert_eq!(err.message, "spec.labels: duplicate label key \"app\"");
        assert_eq!(err.position.map(|p| p.line), Some(10));

        let text = WORKLOAD.replace("spec:\n", "spec:\n  cgroup: x/y\n");
        let err = one(&text).unwrap_err();
        assert!(
            err.message.starts_with("spec: duplicate field `cgroup`"),
            "{err:?}"
        );
    }

    #[test]
    fn errors_in_one_document_do_not_hide_the_next() {
        let dup = WORKLOAD.replace("    app: billing-agent", "    app: a\n    app: b");
        let text = format!("{dup}---\nkind: Workload\nmetadata: {{name: Bad_Name}}\nspec: {{}}\n");
        let docs = parse_documents(&text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].name.as_deref(), Some("billing-agent"));
        assert!(docs[0].result.is_err());
        assert_eq!(docs[1].kind.as_deref(), Some("Workload"));
        let err = docs[1].result.as_ref().unwrap_err();
        // serde stops at a document's first error: here the name, before apiVersion.
        assert!(
            err.message
                .starts_with("metadata.name: \"Bad_Name\" is not a valid"),
            "{err:?}"
        );
    }

    #[test]
    fn odd_yaml_does_not_break_the_header_pass() {
        let text = "!tagged {a: 1}\n---\n[1, 2]\n---\n123\n---\nkind: {x: 1}\nmetadata: 7\n";
        let docs = parse_documents(text);
        assert_eq!(docs.len(), 4, "{docs:?}");
        assert!(docs.iter().all(|d| d.result.is_err() && d.kind.is_none()));
    }

    #[test]
    fn locates_fields() {
        let text = format!("{WORKLOAD}---\n{WORKLOAD}");
        assert_eq!(
            locate(&text, 2, &FieldPath::new("metadata.name")),
            Some(Position {
                line: 15,
                column: 9
            })
        );
        assert_eq!(
            locate(&text, 1, &FieldPath::new("spec.cgroup")),
            Some(Position {
                line: 7,
                column: 11
            })
        );
        assert_eq!(locate(&text, 1, &FieldPath::new("spec.nope")), None);
        assert_eq!(locate(&text, 3, &FieldPath::new("spec")), None);
    }
}
