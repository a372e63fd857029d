//! `AccessPolicy`: which subjects may (or may not) call which operations or tools.

use serde::Deserialize;

use super::fields::ObjectRef;
use super::http::OperationId;
use super::mcp::ToolPattern;
use super::path::{FieldPath, Issues};
use super::subject::{check_subjects, Subject};
use super::{Kind, Object, Spec};

/// `kind: AccessPolicy`.
pub type AccessPolicy = Object<AccessPolicySpec>;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessPolicySpec {
    pub subjects: Vec<Subject>,
    #[serde(default)]
    pub allow: Vec<Grant>,
    /// Wins over any allow, from this policy or another.
    #[serde(default)]
    pub deny: Vec<Grant>,
}

impl Spec for AccessPolicySpec {
    const KIND: Kind = Kind::AccessPolicy;

    fn check(&self, issues: &mut Issues) {
        let spec = FieldPath::new("spec");
        check_subjects(&self.subjects, &spec.key("subjects"), issues);
        if self.allow.is_empty() && self.deny.is_empty() {
            issues.push(spec.clone(), "needs at least one grant in allow or deny");
        }
        for (list, grants) in [("allow", &self.allow), ("deny", &self.deny)] {
            for (i, grant) in grants.iter().enumerate() {
                grant.check(&spec.key(list).index(i), issues);
            }
        }
    }
}

/// Operations (http) or tools (mcp) of one contract; neither means all of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Grant {
    /// `NAME` (in the policy's namespace) or `NAMESPACE/NAME` of an http or mcp
    /// ApiContract.
    pub contract: ObjectRef,
    /// Operation ids of an http contract; omitted means all of its requests.
    #[serde(default)]
    pub operations: Option<Vec<OperationId>>,
    /// Tool names or globs (`search_*`) of an mcp contract; omitted means all of it.
    #[serde(default)]
    pub tools: Option<Vec<ToolPattern>>,
}

impl Grant {
    fn check(&self, path: &FieldPath, issues: &mut Issues) {
        if let Some(operations) = &self.operations {
            let path = path.key("operations");
            if operations.is_empty() {
                issues.push(
                    path.clone(),
                    "must list at least one operation (omit the field for all of them)",
                );
            }
            issues.duplicates(operations, "operation", |i| path.index(i));
        }
        if let Some(tools) = &self.tools {
            let path = path.key("tools");
            if tools.is_empty() {
                issues.push(
                    path.clone(),
                    "must list at least one tool (omit the field for all of them)",
                );
            }
            issues.duplicates(tools, "tool", |i| path.index(i));
        }
    }

    pub fn operations(&self) -> &[OperationId] {
        self.operations.as_deref().unwrap_or_default()
    }

    pub fn tools(&self) -> &[ToolPattern] {
        self.tools.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use crate::test_fixtures::{assert_messages, doc, errors};

    fn policy(spec: &str) -> String {
        doc("AccessPolicy", "p", spec)
            + &doc(
                "ApiContract",
                "orders-api",
                "  protocol: http\n  address: 10.0.0.1:80\n  operations:\n    \
                 - {id: listOrders, method: GET, path: /orders}\n",
            )
    }

    #[test]
    fn needs_subjects_and_grants() {
        assert_messages(
            &errors(&policy("  subjects: []\n")),
            &[
                "spec: needs at least one grant in allow or deny",
                "spec.subjects: must list at least one subject",
            ],
        );
        assert_messages(
            &errors(&policy("  allow: [{contract: orders-api}]\n")),
            &["spec: missing field `subjects`"],
        );
        let only_deny = "  subjects: [{workload: {}}]\n  deny: [{contract: orders-api}]\n";
        assert!(errors(&policy(only_deny)).is_empty());
    }

    #[test]
    fn grant_operations() {
        let errs = errors(&policy(
            "  subjects: [{workload: {}}]\n  allow:\n    - {contract: orders-api, operations: []}\n  \
             deny:\n    - {contract: orders-api, operations: [listOrders, listOrders]}\n    \
             - {contract: orders-api, tool: x}\n",
        ));
        assert_messages(
            &errs,
            &[
                "spec.deny[1]: unknown field `tool`, expected one of `contract`, `operations`, \
               `tools`",
            ],
        );
        let errs = errors(&policy(
            "  subjects: [{workload: {}}]\n  allow:\n    - {contract: orders-api, operations: []}\n  \
             deny:\n    - {contract: orders-api, operations: [listOrders, listOrders]}\n",
        ));
        assert_messages(
            &errs,
            &[
                "spec.allow[0].operations: must list at least one operation (omit the field for \
                 all of them)",
                "spec.deny[0].operations[1]: duplicate operation listOrders, first listed at \
                 spec.deny[0].operations[0]",
            ],
        );
        assert_messages(
            &errors(&policy(
                "  subjects: [{workload: {}}]\n  allow: [{contract: Orders/api}]\n",
            )),
            &["spec.allow[0].contract: invalid reference \"Orders/api\": namespace \"Orders\" is \
               not a valid DNS label (lowercase letters, digits and '-', starting and ending \
               with a letter or digit)"],
        );
    }

    #[test]
    fn grant_tools() {
        let policy = |grants: &str| {
            doc(
                "AccessPolicy",
                "p",
                &format!("  subjects: [{{workload: {{}}}}]\n{grants}"),
            ) + &doc(
                "ApiContract",
                "crm",
                "  protocol: mcp\n  address: 10.0.0.1:80\n  mcp: {unlistedTools: allow}\n",
            )
        };
        assert!(errors(&policy(
            "  allow: [{contract: crm, tools: [\"search_*\", get]}]\n"
        ))
        .is_empty());
        let errs = errors(&policy(
            "  allow:\n    - {contract: crm, tools: []}\n  deny:\n    \
             - {contract: crm, tools: [\"*_admin\", get, \"*_admin\"]}\n",
        ));
        assert_messages(
            &errs,
            &[
                "spec.allow[0].tools: must list at least one tool (omit the field for all of \
                 them)",
                "spec.deny[0].tools[2]: duplicate tool *_admin, first listed at \
                 spec.deny[0].tools[0]",
            ],
        );
        assert_messages(
            &errors(&policy(
                "  allow: [{contract: crm, tools: [\"search customers\"]}]\n",
            )),
            &[
                "spec.allow[0].tools[0]: \"search customers\" is not a valid tool name or glob (1 \
               to 128 letters, digits, '_', '-', '.', '/', with '*' for any characters and '?' \
               for one)",
            ],
        );
    }
}
