//! `Quota`: how many requests (or MCP tool calls) each matching caller may make in a
//! window.

use serde::Deserialize;

use super::fields::{ObjectRef, PositiveU64};
use super::http::OperationId;
use super::mcp::ToolName;
use super::path::{FieldPath, Issues};
use super::subject::{check_subjects, Subject};
use super::{Kind, Object, Spec};

/// `kind: Quota`.
pub type Quota = Object<QuotaSpec>;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Each caller matching one of these gets a budget of its own.
    pub subjects: Vec<Subject>,
    pub scope: QuotaScope,
    pub limit: Limit,
    #[serde(default)]
    pub mode: QuotaMode,
}

impl Spec for QuotaSpec {
    const KIND: Kind = Kind::Quota;

    fn check(&self, issues: &mut Issues) {
        check_subjects(&self.subjects, &FieldPath::new("spec.subjects"), issues);
    }
}

/// What the budget covers: a whole contract, one operation of an http contract or one
/// tool of an mcp contract.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QuotaScope {
    /// `NAME` (in the quota's namespace) or `NAMESPACE/NAME` of an http or mcp
    /// ApiContract.
    pub contract: ObjectRef,
    #[serde(default)]
    pub operation: Option<OperationId>,
    /// For an mcp contract: calls of this tool (omitted: every `tools/call`).
    #[serde(default)]
    pub tool: Option<ToolName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limit {
    /// Requests per window.
    pub requests: PositiveU64,
    pub per: Period,
    /// Requests allowed at once; omitted means `requests`.
    #[serde(default)]
    pub burst: Option<PositiveU64>,
}

/// A quota window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    /// 30 days: a fixed length, so that a budget means the same in every month.
    Month,
}

impl Period {
    pub fn seconds(self) -> u64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3_600,
            Period::Day => 86_400,
            Period::Month => 30 * 86_400,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum QuotaMode {
    /// Requests over the budget are answered 429.
    #[default]
    Enforce,
    /// Requests over the budget are counted and logged, never blocked.
    ReportOnly,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{assert_messages, doc, errors, load, FULL};

    fn quota(spec: &str) -> String {
        doc("Quota", "q", spec)
            + &doc(
                "ApiContract",
                "orders-api",
                "  protocol: http\n  address: 10.0.0.1:80\n",
            )
    }

    #[test]
    fn parses_limits_and_modes() {
        let set = load(FULL);
        let by_name = |name: &str| {
            set.quotas()
                .find(|q| q.metadata.name.as_str() == name)
                .unwrap()
        };
        let monthly = &by_name("partner-monthly").spec;
        assert_eq!(monthly.limit.per, Period::Month);
        assert_eq!(monthly.limit.burst, None);
        assert_eq!(monthly.mode, QuotaMode::ReportOnly);
        let agent = &by_name("agent-list-orders").spec;
        assert_eq!(agent.mode, QuotaMode::Enforce);
        assert_eq!(agent.limit.burst.unwrap().get(), 2);
        assert_eq!(
            agent.scope.operation.as_ref().unwrap().as_str(),
            "listOrders"
        );
        assert_eq!(agent.scope.tool, None);
        let crm = &by_name("crm-search").spec;
        assert_eq!(crm.scope.operation, None);
        assert_eq!(
            crm.scope.tool.as_ref().unwrap().as_str(),
            "search_customers"
        );
        let seconds: Vec<u64> = [
            Period::Second,
            Period::Minute,
            Period::Hour,
            Period::Day,
            Period::Month,
        ]
        .iter()
        .map(|p| p.seconds())
        .collect();
        assert_eq!(seconds, [1, 60, 3_600, 86_400, 2_592_000]);
    }

    #[test]
    fn invalid_limits() {
        let scope = "  subjects: [{workload: {}}]\n  scope: {contract: orders-api}\n";
        let errs = errors(&quota(&format!(
            "{scope}  limit: {{requests: 0, per: minute}}\n"
        )));
        assert_messages(
            &errs,
            &["spec.limit.requests: must be an integer greater than 0, not 0"],
        );
        assert!(errs[0].starts_with("t.yaml:7:21: "), "{errs:#?}");
        assert_messages(
            &errors(&quota(&format!(
                "{scope}  limit: {{requests: 5, per: week}}\n"
            ))),
            &[
                "spec.limit.per: unknown variant `week`, expected one of `second`, `minute`, \
               `hour`, `day`, `month`",
            ],
        );
        assert_messages(
            &errors(&quota(&format!(
                "{scope}  limit: {{requests: 5, per: day, burst: -1}}\n"
            ))),
            &["spec.limit.burst: invalid type: integer `-1`, expected an integer greater than 0"],
        );
        assert_messages(
            &errors(&quota(&format!(
                "{scope}  limit: {{requests: 5, per: day}}\n  mode: dryRun\n"
            ))),
            &["spec.mode: unknown variant `dryRun`, expected `enforce` or `reportOnly`"],
        );
        assert_messages(
            &errors(&quota("  subjects: []\n  scope: {contract: orders-api}\n  limit: {requests: 1, per: day}\n")),
            &["spec.subjects: must list at least one subject"],
        );
    }

    #[test]
    fn tool_scope() {
        let quota = |scope: &str| {
            doc(
                "Quota",
                "q",
                &format!(
                    "  subjects: [{{workload: {{}}}}]\n  scope: {scope}\n  \
                     limit: {{requests: 1, per: second}}\n"
                ),
            )
        };
        assert_messages(
            &errors(&quota("{contract: crm, tool: \"search_*\"}")),
            &[
                "spec.scope.tool: \"search_*\" is not a valid tool name (1 to 128 letters, \
               digits, '_', '-', '.', '/')",
            ],
        );
        assert_messages(
            &errors(&quota("{contract: crm, tools: [a]}")),
            &[
                "spec.scope: unknown field `tools`, expected one of `contract`, `operation`, \
               `tool`",
            ],
        );
    }
}
