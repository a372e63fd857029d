//! The L7 policy of a snapshot, compiled once per snapshot into the shapes the
//! request path reads without allocating: route tables, per-contract access rules,
//! quota rules, the API key index and workload attributes by identity.
pub mod mcp;
pub mod route;

use std::{
    collections::HashMap,
    net::SocketAddrV4,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use stoa_keys::KeyDigest;
use stoa_proto::v1::{self as pb, subject::Kind as SubjectKind};

use crate::{
    identity::{
        fnv1a,
        jwt::{parse_algorithms, JwksCache, JwtVerifier},
        ConsumerInfo, Principal, WorkloadInfo,
    },
    quota::Limit,
};
use mcp::{McpPolicy, ToolSet};
use route::RouteTable;

/// Request bodies larger than this are refused unless a contract says otherwise.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("contract {contract}: {reason}")]
    Contract { contract: String, reason: String },
    #[error("consumer {consumer}: API key {key_id}: {reason}")]
    ApiKey {
        consumer: String,
        key_id: String,
        reason: String,
    },
    #[error("{kind} {name}: {reason}")]
    Rule {
        kind: &'static str,
        name: String,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct ApiKeySource {
    pub header: Option<hyper::header::HeaderName>,
    pub query_param: Option<String>,
}

/// One operation set (by index into the contract's operations), or all of them.
#[derive(Debug, Clone)]
pub struct OperationSet {
    all: bool,
    members: Vec<bool>,
}

impl OperationSet {
    fn contains(&self, operation: usize) -> bool {
        self.all || self.members.get(operation).copied().unwrap_or(false)
    }
}

#[derive(Debug, Clone)]
pub enum SubjectMatcher {
    Workload {
        namespace: Option<String>,
        service_account: Option<String>,
        labels: Vec<(String, String)>,
    },
    Consumer {
        name: Option<String>,
        labels: Vec<(String, String)>,
    },
    Jwt {
        claims: Vec<(String, String)>,
        groups: Vec<String>,
    },
}

impl SubjectMatcher {
    pub fn matches(&self, principal: &Principal) -> bool {
        match self {
            SubjectMatcher::Workload {
                namespace,
                service_account,
                labels,
            } => principal.workload.as_ref().is_some_and(|workload| {
                namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == workload.namespace)
                    && service_account
                        .as_ref()
                        .is_none_or(|sa| *sa == workload.service_account)
                    && labels
                        .iter()
                        .all(|(k, v)| workload.labels.get(k) == Some(v))
            }),
            SubjectMatcher::Consumer { name, labels } => {
                principal.consumer.as_ref().is_some_and(|consumer| {
                    name.as_ref()
                        .is_none_or(|n| *n == consumer.name || *n == consumer.qualified)
                        && labels
                            .iter()
                            .all(|(k, v)| consumer.labels.get(k) == Some(v))
                })
            }
            SubjectMatcher::Jwt { claims, groups } => principal.jwt.as_ref().is_some_and(|jwt| {
                claims
                    .iter()
                    .all(|(claim, want)| match jwt.claims.get(claim) {
                        Some(serde_json::Value::String(have)) => have == want,
                        Some(serde_json::Value::Array(items)) => {
                            items.iter().any(|item| item.as_str() == Some(want))
                        }
                        // Numbers and booleans compare by their JSON text.
                        Some(other) => {
                            want.parse::<serde_json::Value>().ok().as_ref() == Some(other)
                        }
                        None => false,
                    })
                    && (groups.is_empty() || groups.iter().any(|g| jwt.groups.contains(g)))
            }),
        }
    }
}

fn any_subject_matches(subjects: &[SubjectMatcher], principal: &Principal) -> bool {
    subjects.iter().any(|subject| subject.matches(principal))
}

#[derive(Debug, Clone)]
pub struct AccessRule {
    pub policy: String,
    pub subjects: Vec<SubjectMatcher>,
    pub allow: Option<OperationSet>,
    pub deny: Option<OperationSet>,
    /// MCP contracts: the tools the policy grants or denies.
    pub allow_tools: Option<ToolSet>,
    pub deny_tools: Option<ToolSet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaMode {
    Enforce,
    ReportOnly,
}

#[derive(Debug, Clone)]
pub struct QuotaRule {
    /// `namespace/name`, also the policy name in the RateLimit headers.
    pub name: String,
    pub subjects: Vec<SubjectMatcher>,
    /// None: the whole contract.
    pub operation: Option<usize>,
    /// MCP contracts: None counts every tools/call, Some one tool's.
    pub tool: Option<String>,
    pub limit: Limit,
    pub mode: QuotaMode,
    /// Keys this rule's budgets; equal for an unchanged quota across snapshots.
    pub cell_id: u64,
}

impl QuotaRule {
    pub fn applies(&self, operation: Option<usize>, principal: &Principal) -> bool {
        (self.operation.is_none() || self.operation == operation)
            && any_subject_matches(&self.subjects, principal)
    }

    pub fn applies_to_tool(&self, tool: &str, principal: &Principal) -> bool {
        self.tool.as_deref().is_none_or(|t| t == tool)
            && any_subject_matches(&self.subjects, principal)
    }
}

enum RulesVerdict<'a> {
    Allowed,
    /// Denied by this AccessPolicy.
    DeniedBy(&'a str),
    NotAllowed,
}

#[derive(Debug)]
pub enum AccessDecision {
    Allowed,
    /// Denied, with the reason for the answer and the record.
    Denied(String),
}

/// What the proxy decided about one request; a label of the request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Forwarded,
    Unauthenticated,
    Denied,
    NotFound,
    RateLimited,
    Invalid,
    TooLarge,
    UpstreamError,
}

impl Decision {
    pub const ALL: [Decision; 8] = [
        Decision::Forwarded,
        Decision::Unauthenticated,
        Decision::Denied,
        Decision::NotFound,
        Decision::RateLimited,
        Decision::Invalid,
        Decision::TooLarge,
        Decision::UpstreamError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Forwarded => "forwarded",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Denied => "denied",
            Decision::NotFound => "not_found",
            Decision::RateLimited => "rate_limited",
            Decision::Invalid => "invalid",
            Decision::TooLarge => "too_large",
            Decision::UpstreamError => "upstream_error",
        }
    }
}

/// Metric handles registered once per contract, so a request only bumps atomics.
pub struct ContractMetrics {
    requests: [metrics::Counter; 8],
    pub duration: metrics::Histogram,
    pub quota_would_limit: metrics::Counter,
}

impl std::fmt::Debug for ContractMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContractMetrics")
    }
}

impl ContractMetrics {
    fn new(contract: &str) -> Self {
        let contract = contract.to_string();
        Self {
            requests: Decision::ALL.map(|decision| {
                metrics::counter!(
                    "stoa_http_requests_total",
                    "contract" => contract.clone(),
                    "decision" => decision.as_str()
                )
            }),
            duration: metrics::histogram!(
                "stoa_http_request_duration_seconds",
                "contract" => contract.clone()
            ),
            quota_would_limit: metrics::counter!(
                "stoa_quota_report_only_exceeded_total",
                "contract" => contract
            ),
        }
    }

    pub fn count(&self, decision: Decision) {
        let index = Decision::ALL
            .iter()
            .position(|d| *d == decision)
            .expect("every decision is listed");
        self.requests[index].increment(1);
    }
}

/// The governance of one http contract.
#[derive(Debug)]
pub struct ContractPolicy {
    pub metrics: ContractMetrics,
    pub service_id: u32,
    /// `namespace/name`.
    pub name: String,
    pub operations: Vec<String>,
    pub routes: RouteTable,
    pub pass_unmatched_routes: bool,
    pub max_request_body: u64,
    pub accepts_workload: bool,
    pub api_key: Option<ApiKeySource>,
    pub jwt: Option<JwtVerifier>,
    pub rules: Vec<AccessRule>,
    pub quotas: Vec<QuotaRule>,
    /// Set for protocol mcp.
    pub mcp: Option<McpPolicy>,
    /// Upstream endpoints behind the address; empty: the original destination.
    pub backends: Vec<SocketAddrV4>,
    next_backend: AtomicUsize,
}

impl ContractPolicy {
    /// Observe-only contracts (no operations, no credentials) forward everything.
    pub fn is_observe_only(&self) -> bool {
        self.routes.is_empty() && self.api_key.is_none() && self.jwt.is_none()
    }

    pub fn requires_credential(&self) -> bool {
        (self.api_key.is_some() || self.jwt.is_some()) && !self.accepts_workload
    }

    /// Deny wins; without an allow, access is denied.
    pub fn authorize(&self, operation: usize, principal: &Principal) -> AccessDecision {
        match self.evaluate_rules(
            principal,
            |rule| rule.deny.as_ref().is_some_and(|d| d.contains(operation)),
            |rule| rule.allow.as_ref().is_some_and(|a| a.contains(operation)),
        ) {
            RulesVerdict::Allowed => AccessDecision::Allowed,
            RulesVerdict::DeniedBy(policy) => {
                AccessDecision::Denied(format!("denied by AccessPolicy {policy}"))
            }
            RulesVerdict::NotAllowed => {
                AccessDecision::Denied("no AccessPolicy allows this operation".into())
            }
        }
    }

    /// Whether `principal` may call (and see) MCP tool `tool`: the contract must list
    /// it (unless unlisted tools are allowed), then deny wins and an allow is needed.
    pub fn authorize_tool(&self, tool: &str, principal: &Principal) -> AccessDecision {
        let Some(mcp) = &self.mcp else {
            return AccessDecision::Denied("the contract governs no MCP tools".into());
        };
        if !mcp.allow_unlisted_tools && mcp.tool(tool).is_none() {
            return AccessDecision::Denied(format!(
                "tool {tool:?} is not listed in contract {}",
                self.name
            ));
        }
        match self.evaluate_rules(
            principal,
            |rule| rule.deny_tools.as_ref().is_some_and(|d| d.contains(tool)),
            |rule| rule.allow_tools.as_ref().is_some_and(|a| a.contains(tool)),
        ) {
            RulesVerdict::Allowed => AccessDecision::Allowed,
            RulesVerdict::DeniedBy(policy) => {
                AccessDecision::Denied(format!("tool {tool:?} is denied by AccessPolicy {policy}"))
            }
            RulesVerdict::NotAllowed => {
                AccessDecision::Denied(format!("no AccessPolicy allows tool {tool:?}"))
            }
        }
    }

    /// The access rules matching `principal`: a deny wins, else an allow is needed.
    fn evaluate_rules(
        &self,
        principal: &Principal,
        denies: impl Fn(&AccessRule) -> bool,
        allows: impl Fn(&AccessRule) -> bool,
    ) -> RulesVerdict<'_> {
        let mut allowed = false;
        for rule in &self.rules {
            if !any_subject_matches(&rule.subjects, principal) {
                continue;
            }
            if denies(rule) {
                return RulesVerdict::DeniedBy(&rule.policy);
            }
            allowed |= allows(rule);
        }
        if allowed {
            RulesVerdict::Allowed
        } else {
            RulesVerdict::NotAllowed
        }
    }

    /// The upstream for a new exchange: the next backend in turn, or the address the
    /// client connected to.
    pub fn pick_upstream(&self, original_dst: SocketAddrV4) -> SocketAddrV4 {
        if self.backends.is_empty() {
            return original_dst;
        }
        let turn = self.next_backend.fetch_add(1, Ordering::Relaxed);
        self.backends[turn % self.backends.len()]
    }
}

/// Everything L7 of one snapshot.
#[derive(Debug, Default)]
pub struct CompiledPolicy {
    pub contracts: HashMap<u32, Arc<ContractPolicy>>,
    pub workloads: HashMap<u32, Arc<WorkloadInfo>>,
    /// API key digest → (consumer, key id).
    pub api_keys: HashMap<KeyDigest, (Arc<ConsumerInfo>, Arc<str>)>,
}

/// JWKS caches outlive snapshots, so keys are not refetched on every policy change.
pub struct JwksRegistry {
    http: reqwest::Client,
    caches: std::sync::Mutex<HashMap<String, Arc<JwksCache>>>,
}

impl JwksRegistry {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            caches: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self, uri: &str) -> Arc<JwksCache> {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches
            .entry(uri.to_string())
            .or_insert_with(|| Arc::new(JwksCache::new(uri.to_string(), self.http.clone())))
            .clone()
    }
}

impl CompiledPolicy {
    pub fn compile(snapshot: &pb::Snapshot, jwks: &JwksRegistry) -> Result<Self, PolicyError> {
        let mut policy = CompiledPolicy::default();
        for workload in &snapshot.workloads {
            policy
                .workloads
                .entry(workload.identity)
                .or_insert_with(|| {
                    Arc::new(WorkloadInfo {
                        name: workload.name.clone(),
                        namespace: workload.namespace.clone(),
                        service_account: workload.service_account.clone(),
                        labels: workload.labels.clone(),
                    })
                });
        }
        for consumer in &snapshot.consumers {
            let info = Arc::new(ConsumerInfo {
                name: consumer.name.clone(),
                namespace: consumer.namespace.clone(),
                qualified: format!("{}/{}", consumer.namespace, consumer.name),
                labels: consumer.labels.clone(),
                plan: consumer.plan.clone(),
            });
            for key in &consumer.api_keys {
                let digest = KeyDigest::parse(&key.hash).map_err(|err| PolicyError::ApiKey {
                    consumer: info.qualified.clone(),
                    key_id: key.id.clone(),
                    reason: err.to_string(),
                })?;
                policy
                    .api_keys
                    .insert(digest, (info.clone(), Arc::from(key.id.as_str())));
            }
        }
        for contract in &snapshot.contracts {
            let compiled = compile_contract(contract, snapshot, jwks)?;
            policy
                .contracts
                .insert(contract.service_id, Arc::new(compiled));
        }
        Ok(policy)
    }
}

fn compile_contract(
    contract: &pb::Contract,
    snapshot: &pb::Snapshot,
    jwks: &JwksRegistry,
) -> Result<ContractPolicy, PolicyError> {
    let name = format!("{}/{}", contract.namespace, contract.name);
    let fail = |reason: String| PolicyError::Contract {
        contract: name.clone(),
        reason,
    };
    let routes = RouteTable::new(
        contract
            .operations
            .iter()
            .map(|op| (op.id.as_str(), op.method.as_str(), op.path.as_str())),
    )
    .map_err(|err| fail(err.to_string()))?;
    let operations: Vec<String> = contract.operations.iter().map(|op| op.id.clone()).collect();
    let op_index = |id: &str| operations.iter().position(|op| op == id);

    let credentials = contract.credentials.clone().unwrap_or_default();
    let api_key = match &credentials.api_key {
        Some(source) => Some(ApiKeySource {
            header: match source.header.as_str() {
                "" => None,
                header => Some(
                    hyper::header::HeaderName::from_bytes(header.as_bytes())
                        .map_err(|_| fail(format!("invalid API key header {header:?}")))?,
                ),
            },
            query_param: (!source.query_param.is_empty()).then(|| source.query_param.clone()),
        }),
        None => None,
    };
    let jwt = match &credentials.jwt {
        Some(jwt) => Some(JwtVerifier {
            issuer: jwt.issuer.clone(),
            audiences: jwt.audiences.clone(),
            algorithms: parse_algorithms(&jwt.algorithms).map_err(fail)?,
            groups_claim: if jwt.groups_claim.is_empty() {
                "groups".into()
            } else {
                jwt.groups_claim.clone()
            },
            jwks: jwks.cache(&jwt.jwks_uri),
        }),
        None => None,
    };

    let operation_set = |ids: &[String], rule: &str| -> Result<OperationSet, PolicyError> {
        if ids.is_empty() {
            return Ok(OperationSet {
                all: true,
                members: Vec::new(),
            });
        }
        let mut members = vec![false; operations.len()];
        for id in ids {
            let index = op_index(id).ok_or_else(|| PolicyError::Rule {
                kind: "AccessPolicy",
                name: rule.to_string(),
                reason: format!("contract {name} has no operation {id:?}"),
            })?;
            members[index] = true;
        }
        Ok(OperationSet {
            all: false,
            members,
        })
    };

    let mut rules = Vec::new();
    for access in &snapshot.access_policies {
        let policy_name = format!("{}/{}", access.namespace, access.name);
        let merge_tools = |grants: &[pb::Grant]| -> Option<ToolSet> {
            grants
                .iter()
                .filter(|g| g.service_id == contract.service_id)
                .map(|g| ToolSet::of(&g.tools))
                .reduce(ToolSet::union)
        };
        let merge = |grants: &[pb::Grant]| -> Result<Option<OperationSet>, PolicyError> {
            let mut merged: Option<OperationSet> = None;
            for grant in grants
                .iter()
                .filter(|g| g.service_id == contract.service_id)
            {
                let set = operation_set(&grant.operations, &policy_name)?;
                merged = Some(match merged {
                    None => set,
                    Some(prev) => OperationSet {
                        all: prev.all || set.all,
                        members: (0..operations.len())
                            .map(|i| prev.contains(i) || set.contains(i))
                            .collect(),
                    },
                });
            }
            Ok(merged)
        };
        let allow = merge(&access.allow)?;
        let deny = merge(&access.deny)?;
        if allow.is_none() && deny.is_none() {
            continue;
        }
        rules.push(AccessRule {
            policy: policy_name.clone(),
            subjects: compile_subjects(&access.subjects),
            allow,
            deny,
            allow_tools: merge_tools(&access.allow),
            deny_tools: merge_tools(&access.deny),
        });
    }

    let mut quotas = Vec::new();
    for quota in snapshot
        .quotas
        .iter()
        .filter(|q| q.service_id == contract.service_id)
    {
        let quota_name = format!("{}/{}", quota.namespace, quota.name);
        let rule_error = |reason: String| PolicyError::Rule {
            kind: "Quota",
            name: quota_name.clone(),
            reason,
        };
        if quota.requests == 0 || quota.period_seconds == 0 {
            return Err(rule_error("requests and period must be positive".into()));
        }
        let operation =
            match quota.operation.as_str() {
                "" => None,
                id => Some(op_index(id).ok_or_else(|| {
                    rule_error(format!("contract {name} has no operation {id:?}"))
                })?),
            };
        let limit = Limit {
            requests: quota.requests,
            period: Duration::from_secs(quota.period_seconds),
            burst: if quota.burst == 0 {
                quota.requests
            } else {
                quota.burst
            },
        };
        let cell_id = fnv1a(
            quota_name.as_bytes(),
            format!(
                "{}|{}|{}|{}|{}|{}",
                contract.service_id,
                quota.operation,
                quota.tool,
                limit.requests,
                quota.period_seconds,
                limit.burst
            )
            .as_bytes(),
        );
        quotas.push(QuotaRule {
            name: quota_name,
            subjects: compile_subjects(&quota.subjects),
            operation,
            tool: non_empty(&quota.tool),
            limit,
            mode: if quota.mode == pb::QuotaMode::ReportOnly as i32 {
                QuotaMode::ReportOnly
            } else {
                QuotaMode::Enforce
            },
            cell_id,
        });
    }

    let mcp = match &contract.mcp {
        Some(settings) => Some(McpPolicy::compile(settings).map_err(fail)?),
        None => None,
    };
    let backends = contract
        .backends
        .iter()
        .map(|b| {
            b.parse()
                .map_err(|_| fail(format!("invalid backend {b:?} (expected IPv4:port)")))
        })
        .collect::<Result<_, _>>()?;
    Ok(ContractPolicy {
        metrics: ContractMetrics::new(&name),
        service_id: contract.service_id,
        name,
        operations,
        routes,
        pass_unmatched_routes: contract.pass_unmatched_routes,
        max_request_body: if contract.max_request_body_bytes == 0 {
            DEFAULT_MAX_REQUEST_BODY
        } else {
            contract.max_request_body_bytes
        },
        accepts_workload: credentials.workload
            || (credentials.api_key.is_none() && credentials.jwt.is_none()),
        api_key,
        jwt,
        rules,
        quotas,
        mcp,
        backends,
        next_backend: AtomicUsize::new(0),
    })
}

fn sorted_labels(labels: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.sort();
    labels
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

fn compile_subjects(subjects: &[pb::Subject]) -> Vec<SubjectMatcher> {
    subjects
        .iter()
        .filter_map(|subject| subject.kind.as_ref())
        .map(|kind| match kind {
            SubjectKind::Workload(w) => SubjectMatcher::Workload {
                namespace: non_empty(&w.namespace),
                service_account: non_empty(&w.service_account),
                labels: sorted_labels(&w.labels),
            },
            SubjectKind::Consumer(c) => SubjectMatcher::Consumer {
                name: non_empty(&c.name),
                labels: sorted_labels(&c.labels),
            },
            SubjectKind::Jwt(j) => SubjectMatcher::Jwt {
                claims: sorted_labels(&j.claims),
                groups: j.groups.clone(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload_subject(ns: &str, sa: &str) -> pb::Subject {
        pb::Subject {
            kind: Some(SubjectKind::Workload(pb::WorkloadSelector {
                namespace: ns.into(),
                service_account: sa.into(),
                labels: Default::default(),
            })),
        }
    }

    fn snapshot() -> pb::Snapshot {
        pb::Snapshot {
            version: 1,
            workloads: vec![pb::Workload {
                identity: 300,
                name: "billing".into(),
                namespace: "finance".into(),
                service_account: "billing-agent".into(),
                ..Default::default()
            }],
            contracts: vec![pb::Contract {
                service_id: 7,
                name: "orders-api".into(),
                namespace: "shop".into(),
                operations: vec![
                    pb::Operation {
                        id: "listOrders".into(),
                        method: "GET".into(),
                        path: "/orders".into(),
                    },
                    pb::Operation {
                        id: "deleteOrder".into(),
                        method: "DELETE".into(),
                        path: "/orders/{id}".into(),
                    },
                ],
                ..Default::default()
            }],
            access_policies: vec![
                pb::AccessPolicy {
                    name: "all".into(),
                    namespace: "shop".into(),
                    subjects: vec![workload_subject("finance", "")],
                    allow: vec![pb::Grant {
                        service_id: 7,
                        operations: vec![],
                        tools: vec![],
                    }],
                    deny: vec![],
                },
                pb::AccessPolicy {
                    name: "no-delete".into(),
                    namespace: "shop".into(),
                    subjects: vec![workload_subject("finance", "billing-agent")],
                    allow: vec![],
                    deny: vec![pb::Grant {
                        service_id: 7,
                        operations: vec!["deleteOrder".into()],
                        tools: vec![],
                    }],
                },
            ],
            quotas: vec![pb::Quota {
                name: "q".into(),
                namespace: "shop".into(),
                subjects: vec![workload_subject("finance", "")],
                service_id: 7,
                operation: "listOrders".into(),
                requests: 10,
                period_seconds: 60,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn principal(policy: &CompiledPolicy, identity: u32) -> Principal {
        Principal {
            identity,
            workload: policy.workloads.get(&identity).cloned(),
            ..Default::default()
        }
    }

    #[test]
    fn deny_wins_and_unknown_callers_are_denied() {
        let policy = CompiledPolicy::compile(
            &snapshot(),
            &JwksRegistry::new(crate::identity::jwt::jwks_http_client().unwrap()),
        )
        .unwrap();
        let contract = &policy.contracts[&7];
        let billing = principal(&policy, 300);
        assert!(matches!(
            contract.authorize(0, &billing),
            AccessDecision::Allowed
        ));
        assert!(matches!(
            contract.authorize(1, &billing),
            AccessDecision::Denied(reason) if reason.contains("no-delete")
        ));
        let stranger = principal(&policy, 999);
        assert!(matches!(
            contract.authorize(0, &stranger),
            AccessDecision::Denied(_)
        ));
        let applying = |op, who| {
            contract
                .quotas
                .iter()
                .filter(|q| q.applies(op, who))
                .count()
        };
        assert_eq!(applying(Some(0), &billing), 1);
        assert_eq!(applying(Some(1), &billing), 0);
        assert_eq!(applying(Some(0), &stranger), 0);
    }

    #[test]
    fn quota_cells_survive_recompilation_but_not_a_changed_limit() {
        let registry = JwksRegistry::new(crate::identity::jwt::jwks_http_client().unwrap());
        let first = CompiledPolicy::compile(&snapshot(), &registry).unwrap();
        let again = CompiledPolicy::compile(&snapshot(), &registry).unwrap();
        let id = |p: &CompiledPolicy| p.contracts[&7].quotas[0].cell_id;
        assert_eq!(id(&first), id(&again));
        let mut changed = snapshot();
        changed.quotas[0].requests = 11;
        let changed = CompiledPolicy::compile(&changed, &registry).unwrap();
        assert_ne!(id(&first), id(&changed));
    }

    #[test]
    fn unknown_operations_and_bad_hashes_are_rejected() {
        let registry = JwksRegistry::new(crate::identity::jwt::jwks_http_client().unwrap());
        let mut bad = snapshot();
        bad.access_policies[1].deny[0].operations = vec!["nope".into()];
        assert!(CompiledPolicy::compile(&bad, &registry).is_err());
        let mut bad = snapshot();
        bad.consumers.push(pb::Consumer {
            name: "c".into(),
            namespace: "shop".into(),
            api_keys: vec![pb::ApiKey {
                id: "k".into(),
                hash: "plain".into(),
            }],
            ..Default::default()
        });
        assert!(CompiledPolicy::compile(&bad, &registry).is_err());
    }
}
