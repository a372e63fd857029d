//! Subjects: who an `AccessPolicy` or a `Quota` applies to.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::fields::{
    deserialize_unique_map, Labels, Namespace, ObjectRef, ServiceAccountName, Text,
};
use super::path::{FieldPath, Issues};

/// Exactly one of `workload`, `consumer` or `jwt`, e.g. `{consumer: partner-portal}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Workload(WorkloadSelector),
    Consumer(ConsumerSelector),
    Jwt(JwtSelector),
}

/// Workloads by namespace, service account and labels; an omitted field matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub namespace: Option<Namespace>,
    #[serde(default)]
    pub service_account: Option<ServiceAccountName>,
    /// All of these identity labels must be present with these values.
    #[serde(default)]
    pub labels: Labels,
}

/// Consumers (callers identified by an API key) by name and labels. Written as a
/// name (`consumer: partner-portal`) or a mapping (`consumer: {labels: {tier: gold}}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerSelector {
    /// `NAME` (in the policy's namespace) or `NAMESPACE/NAME`; must exist.
    pub name: Option<ObjectRef>,
    /// All of these `metadata.labels` of the consumer must match.
    pub labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConsumerSelectorFields {
    #[serde(default)]
    name: Option<ObjectRef>,
    #[serde(default)]
    labels: Labels,
}

/// Callers with a valid JWT, by claims and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtSelector {
    /// Every claim listed must be a string equal to the value (`sub`, `azp`, ...).
    #[serde(default, deserialize_with = "deserialize_claims")]
    pub claims: BTreeMap<Text, Text>,
    /// The caller must be in at least one of these groups (omitted: any).
    #[serde(default)]
    pub groups: Option<Vec<Text>>,
}

fn deserialize_claims<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Text, Text>, D::Error> {
    let claims: BTreeMap<Text, ClaimValue> =
        deserialize_unique_map(d, "a mapping of claim names to string values", "claim")?;
    Ok(claims.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// A claim value: a string as written. YAML would read `true` or `42` as a string
/// where a string is asked for, but such a claim in a token is a JSON boolean or
/// number, which never equals a string: they must be quoted to be meant.
struct ClaimValue(Text);

impl<'de> Deserialize<'de> for ClaimValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ClaimVisitor;
        impl Visitor<'_> for ClaimVisitor {
            type Value = ClaimValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string claim value (quote numbers and booleans)")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ClaimValue, E> {
                Text::new(value).map(ClaimValue).map_err(E::custom)
            }
        }
        d.deserialize_any(ClaimVisitor)
    }
}

impl Subject {
    /// Checks what parsing cannot: a written but empty `groups` list, duplicates.
    pub fn check(&self, path: &FieldPath, issues: &mut Issues) {
        if let Subject::Jwt(JwtSelector {
            groups: Some(groups),
            ..
        }) = self
        {
            let path = path.key("jwt.groups");
            if groups.is_empty() {
                issues.push(
                    path.clone(),
                    "must list at least one group (omit the field to match any)",
                );
            }
            issues.duplicates(groups, "group", |i| path.index(i));
        }
    }
}

/// Checks a `subjects` list: not empty, each subject valid.
pub fn check_subjects(subjects: &[Subject], path: &FieldPath, issues: &mut Issues) {
    if subjects.is_empty() {
        issues.push(path.clone(), "must list at least one subject");
    }
    for (i, subject) in subjects.iter().enumerate() {
        subject.check(&path.index(i), issues);
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum SubjectField {
    Workload,
    Consumer,
    Jwt,
}

impl fmt::Display for SubjectField {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            SubjectField::Workload => "workload",
            SubjectField::Consumer => "consumer",
            SubjectField::Jwt => "jwt",
        })
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SubjectVisitor;
        impl<'de> Visitor<'de> for SubjectVisitor {
            type Value = Subject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a subject (a mapping with one of workload, consumer or jwt)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Subject, A::Error> {
                let mut found: Option<(SubjectField, Subject)> = None;
                while let Some(field) = map.next_key::<SubjectField>()? {
                    if let Some((first, _)) = &found {
                        return Err(de::Error::custom(format!(
                            "a subject has exactly one of workload, consumer or jwt, not both \
                             {first} and {field} (write two subjects)"
                        )));
                    }
                    let subject = match field {
                        SubjectField::Workload => Subject::Workload(map.next_value()?),
                        SubjectField::Consumer => Subject::Consumer(map.next_value()?),
                        SubjectField::Jwt => Subject::Jwt(map.next_value()?),
                    };
                    found = Some((field, subject));
                }
                found.map(|(_, subject)| subject).ok_or_else(|| {
                    de::Error::custom("a subject needs one of workload, consumer or jwt")
                })
            }
        }
        d.deserialize_map(SubjectVisitor)
    }
}

impl<'de> Deserialize<'de> for ConsumerSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ConsumerVisitor;
        impl<'de> Visitor<'de> for ConsumerVisitor {
            type Value = ConsumerSelector;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a consumer name, or a mapping with name and/or labels")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ConsumerSelector, E> {
                Ok(ConsumerSelector {
                    name: Some(ObjectRef::new(value).map_err(E::custom)?),
                    labels: Labels::default(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ConsumerSelector, A::Error> {
                let fields = ConsumerSelectorFields::deserialize(MapAccessDeserializer::new(map))?;
                Ok(ConsumerSelector {
                    name: fields.name,
                    labels: fields.labels,
                })
            }
        }
        d.deserialize_any(ConsumerVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{assert_messages, doc, errors, load, FULL};

    fn policy(subjects: &str) -> String {
        doc(
            "AccessPolicy",
            "p",
            &format!("  subjects:\n{subjects}  allow: [{{contract: orders-api}}]\n"),
        ) + &doc(
            "ApiContract",
            "orders-api",
            "  protocol: http\n  address: 10.0.0.1:80\n",
        ) + &doc("Consumer", "partner-portal", "  plan: gold\n")
    }

    #[test]
    fn parses_each_subject_form() {
        let set = load(FULL);
        let subjects = &set.access_policies().next().unwrap().spec.subjects;
        let Subject::Workload(w) = &subjects[0] else {
            panic!("{subjects:?}")
        };
        assert_eq!(w.namespace.as_ref().unwrap().as_str(), "finance");
        assert_eq!(
            w.service_account.as_ref().unwrap().as_str(),
            "billing-agent"
        );
        assert!(w.labels.is_empty());
        let Subject::Consumer(c) = &subjects[1] else {
            panic!("{subjects:?}")
        };
        assert_eq!(c.name.as_ref().unwrap().to_string(), "partner-portal");
        let Subject::Consumer(c) = &subjects[2] else {
            panic!("{subjects:?}")
        };
        assert!(c.name.is_none());
        assert_eq!(c.labels.iter().collect::<Vec<_>>(), [("tier", "gold")]);
        let Subject::Jwt(j) = &subjects[3] else {
            panic!("{subjects:?}")
        };
        assert_eq!(j.claims.len(), 1);
        assert_eq!(j.groups.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn exactly_one_kind() {
        let errs = errors(&policy(
            "    - workload: {namespace: finance}\n      consumer: x\n",
        ));
        assert_messages(
            &errs,
            &[
                "spec.subjects[0]: a subject has exactly one of workload, consumer or jwt, not \
               both workload and consumer (write two subjects)",
            ],
        );
        assert!(errs[0].starts_with("t.yaml:6:7: "), "{errs:#?}");
        assert_messages(
            &errors(&policy("    - {}\n")),
            &["spec.subjects[0]: a subject needs one of workload, consumer or jwt"],
        );
        assert_messages(
            &errors(&policy("    - team: x\n")),
            &[
                "spec.subjects[0]: unknown field `team`, expected one of `workload`, `consumer`, \
               `jwt`",
            ],
        );
        assert_messages(
            &errors(&policy("    - partner-portal\n")),
            &[
                "spec.subjects[0]: invalid type: string \"partner-portal\", expected a subject (a \
               mapping with one of workload, consumer or jwt)",
            ],
        );
    }

    #[test]
    fn selector_fields() {
        assert_messages(
            &errors(&policy(
                "    - consumer: {name: partner-portal, colour: red}\n",
            )),
            &["spec.subjects[0].consumer: unknown field `colour`, expected `name` or `labels`"],
        );
        assert_messages(
            &errors(&policy("    - consumer: Partner\n")),
            &["spec.subjects[0].consumer: invalid reference \"Partner\": name \"Partner\" is not \
               a valid DNS subdomain (dot-separated lowercase labels of letters, digits and '-')"],
        );
        assert_messages(
            &errors(&policy("    - workload: {namespace: finance, sa: x}\n")),
            &[
                "spec.subjects[0].workload: unknown field `sa`, expected one of `namespace`, \
               `serviceAccount`, `labels`",
            ],
        );
        assert_messages(
            &errors(&policy("    - jwt: {claims: {sub: a, sub: b}}\n")),
            &["spec.subjects[0].jwt.claims: duplicate claim \"sub\""],
        );
        assert_messages(
            &errors(&policy("    - jwt: {claims: {email_verified: true}}\n")),
            &[
                "spec.subjects[0].jwt.claims.email_verified: invalid type: boolean `true`, \
               expected a string claim value (quote numbers and booleans)",
            ],
        );
        assert!(errors(&policy("    - jwt: {claims: {email_verified: \"true\"}}\n")).is_empty());
        assert_messages(
            &errors(&policy(
                "    - jwt: {groups: []}\n    - jwt: {groups: [a, a]}\n",
            )),
            &[
                "spec.subjects[0].jwt.groups: must list at least one group (omit the field to \
                 match any)",
                "spec.subjects[1].jwt.groups[1]: duplicate group a, first listed at \
                 spec.subjects[1].jwt.groups[0]",
            ],
        );
        // Empty selectors match any caller of their kind.
        assert!(errors(&policy(
            "    - workload: {}\n    - consumer: {}\n    - jwt: {}\n"
        ))
        .is_empty());
    }
}
