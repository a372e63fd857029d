//! Checks that span documents: unique keys, addresses, cgroups, consumer names, API
//! key ids and hashes, and references between documents. A conflict is reported on
//! the later document and names where the earlier one is.

use std::collections::{HashMap, HashSet};

use super::{Located, Reporter};
use crate::policy::{
    ApiKeyHash, Document, FieldPath, Grant, Issue, Kind, Namespace, ObjectKey, Protocol, Subject,
};
use crate::refs::{Catalog, RefError};

pub(super) fn check(reporter: &mut Reporter, docs: &[Located], broken: &HashSet<(Kind, String)>) {
    unique(reporter, docs);
    references(reporter, docs, broken);
}

fn unique(reporter: &mut Reporter, docs: &[Located]) {
    let name = FieldPath::new("metadata.name");
    let mut keys: HashMap<ObjectKey, &Located> = HashMap::new();
    let mut addresses: HashMap<_, &Located> = HashMap::new();
    let mut cgroups: HashMap<_, &Located> = HashMap::new();
    let mut consumer_names: HashMap<_, &Located> = HashMap::new();
    let mut key_ids: HashMap<&str, (&Located, FieldPath)> = HashMap::new();
    let mut key_hashes: HashMap<ApiKeyHash, (&Located, FieldPath, &str)> = HashMap::new();
    for at in docs {
        let key = at.doc.key();
        if let Some(first) = keys.get(&key) {
            let message = format!(
                "duplicate {key}, first defined at {}",
                reporter.place(first, &name)
            );
            reporter.report(at, &name, message);
            continue;
        }
        keys.insert(key, at);
        match &at.doc {
            Document::ApiContract(c) => {
                if let Some(first) = addresses.get(&c.spec.address) {
                    let field = FieldPath::new("spec.address");
                    let message = format!(
                        "address {} is already used by {} at {}",
                        c.spec.address,
                        first_key(first),
                        reporter.place(first, &field)
                    );
                    reporter.report(at, &field, message);
                } else {
                    addresses.insert(c.spec.address, at);
                }
            }
            Document::Workload(w) => {
                if let Some(first) = cgroups.get(&w.spec.cgroup) {
                    let field = FieldPath::new("spec.cgroup");
                    let message = format!(
                        "cgroup {} is already used by {} at {}",
                        w.spec.cgroup,
                        first_key(first),
                        reporter.place(first, &field)
                    );
                    reporter.report(at, &field, message);
                } else {
                    cgroups.insert(w.spec.cgroup.clone(), at);
                }
            }
            Document::Consumer(c) => {
                // Snapshots select consumers by name alone, so a name must mean one
                // consumer whatever the namespace.
                if let Some(first) = consumer_names.get(&c.metadata.name) {
                    let message = format!(
                        "consumer name {} is already used by {} at {} (consumer names are \
                         unique across namespaces)",
                        c.metadata.name,
                        first_key(first),
                        reporter.place(first, &name)
                    );
                    reporter.report(at, &name, message);
                } else {
                    consumer_names.insert(c.metadata.name.clone(), at);
                }
                for (i, entry) in c.spec.api_keys.iter().enumerate() {
                    let entry_path = FieldPath::new("spec.apiKeys").index(i);
                    let id_path = entry_path.key("id");
                    if let Some((first, first_path)) = key_ids.get(entry.id.as_str()) {
                        let message = format!(
                            "API key id {} is already used by {} at {}",
                            entry.id,
                            first_key(first),
                            reporter.place(first, first_path)
                        );
                        reporter.report(at, &id_path, message);
                    } else {
                        key_ids.insert(entry.id.as_str(), (at, id_path));
                    }
                    let hash_path = entry_path.key("hash");
                    if let Some((first, first_path, first_id)) = key_hashes.get(&entry.hash) {
                        // Two entries for one key: the agent could not tell which
                        // consumer is calling.
                        let message = format!(
                            "the same key hash is already used by key {first_id} of {} at {}",
                            first_key(first),
                            reporter.place(first, first_path)
                        );
                        reporter.report(at, &hash_path, message);
                    } else {
                        key_hashes.insert(entry.hash, (at, hash_path, entry.id.as_str()));
                    }
                }
            }
            Document::AccessPolicy(_) | Document::Quota(_) => {}
        }
    }
}

fn first_key(at: &Located) -> ObjectKey {
    at.doc.key()
}

/// Reports references that do not resolve.
fn references(reporter: &mut Reporter, docs: &[Located], broken: &HashSet<(Kind, String)>) {
    let catalog = Catalog::new(docs.iter().map(|d| &d.doc));
    let mut report = |at: &Located, path: FieldPath, at_path: Option<FieldPath>, err: RefError| {
        // A reference to a document that failed to parse: that document's own error
        // says what is wrong.
        let (kind, name) = err.target();
        if broken.contains(&(kind, name.to_owned())) {
            return;
        }
        reporter.issue(
            at,
            &Issue {
                path,
                at: at_path,
                message: err.to_string(),
            },
        );
    };
    for at in docs {
        let namespace = &at.doc.metadata().namespace;
        match &at.doc {
            Document::AccessPolicy(p) => {
                subjects(
                    &catalog,
                    namespace,
                    &p.spec.subjects,
                    &mut |path, at_path, err| report(at, path, at_path, err),
                );
                for (list, grants) in [("allow", &p.spec.allow), ("deny", &p.spec.deny)] {
                    for (i, grant) in grants.iter().enumerate() {
                        let path = FieldPath::new("spec").key(list).index(i);
                        grant_refs(&catalog, namespace, grant, &path, &mut |path, err| {
                            report(at, path, None, err)
                        });
                    }
                }
            }
            Document::Quota(q) => {
                subjects(
                    &catalog,
                    namespace,
                    &q.spec.subjects,
                    &mut |path, at_path, err| report(at, path, at_path, err),
                );
                let scope = FieldPath::new("spec.scope");
                let contract = match catalog.governed_contract(namespace, &q.spec.scope.contract) {
                    Ok(contract) => contract,
                    Err(err) => {
                        report(at, scope.key("contract"), None, err);
                        continue;
                    }
                };
                if let Some(operation) = &q.spec.scope.operation {
                    let found = Catalog::expect_protocol(contract, Protocol::Http, "operations")
                        .and_then(|()| Catalog::operation(contract, operation).map(drop));
                    if let Err(err) = found {
                        report(at, scope.key("operation"), None, err);
                    }
                }
                if let Some(tool) = &q.spec.scope.tool {
                    let found = Catalog::expect_protocol(contract, Protocol::Mcp, "tools")
                        .and_then(|()| Catalog::tool(contract, tool).map(drop));
                    if let Err(err) = found {
                        report(at, scope.key("tool"), None, err);
                    }
                }
            }
            _ => {}
        }
    }
}

type SubjectReport<'r> = dyn FnMut(FieldPath, Option<FieldPath>, RefError) + 'r;

fn subjects(
    catalog: &Catalog,
    namespace: &Namespace,
    subjects: &[Subject],
    report: &mut SubjectReport,
) {
    for (i, subject) in subjects.iter().enumerate() {
        let Subject::Consumer(selector) = subject else {
            continue;
        };
        let Some(name) = &selector.name else {
            continue;
        };
        if let Err(err) = catalog.consumer(namespace, name) {
            let path = FieldPath::new("spec.subjects").index(i).key("consumer");
            // Written `consumer: NAME` or `consumer: {name: NAME}`: point at the name.
            let at_name = path.key("name");
            report(path, Some(at_name), err);
        }
    }
}

fn grant_refs(
    catalog: &Catalog,
    namespace: &Namespace,
    grant: &Grant,
    path: &FieldPath,
    report: &mut dyn FnMut(FieldPath, RefError),
) {
    let contract = match catalog.governed_contract(namespace, &grant.contract) {
        Ok(contract) => contract,
        Err(err) => return report(path.key("contract"), err),
    };
    if grant.operations.is_some() {
        match Catalog::expect_protocol(contract, Protocol::Http, "operations") {
            Ok(()) => {
                for (j, operation) in grant.operations().iter().enumerate() {
                    if let Err(err) = Catalog::operation(contract, operation) {
                        report(path.key("operations").index(j), err);
                    }
                }
            }
            Err(err) => report(path.key("operations"), err),
        }
    }
    if grant.tools.is_some() {
        match Catalog::expect_protocol(contract, Protocol::Mcp, "tools") {
            Ok(()) => {
                // A glob names no tool in particular: matching none is not an error.
                let names = grant
                    .tools()
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| !t.is_glob());
                for (j, tool) in names {
                    if let Err(err) = Catalog::tool(contract, tool) {
                        report(path.key("tools").index(j), err);
                    }
                }
            }
            Err(err) => report(path.key("tools"), err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::load::load_sources;
    use crate::test_fixtures::{assert_messages, doc, errors, load, FULL};

    const HASH_A: &str =
        "hmac-sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HASH_B: &str =
        "hmac-sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn consumer(name: &str, ns: &str, keys: &[(&str, &str)]) -> String {
        let mut text = format!(
            "apiVersion: gostoa.dev/v1alpha1\nkind: Consumer\n\
             metadata: {{name: {name}, namespace: {ns}}}\nspec:\n  apiKeys:\n"
        );
        for (id, hash) in keys {
            text.push_str(&format!("    - {{id: {id}, hash: \"{hash}\"}}\n"));
        }
        text + "---\n"
    }

    fn contracts() -> String {
        doc(
            "ApiContract",
            "orders-api",
            "  protocol: http\n  address: 10.0.0.1:80\n  operations:\n    \
             - {id: listOrders, method: GET, path: /orders}\n",
        ) + &doc(
            "ApiContract",
            "db",
            "  protocol: tcp\n  address: 10.0.0.2:5432\n",
        ) + &doc(
            "ApiContract",
            "bare",
            "  protocol: http\n  address: 10.0.0.3:80\n",
        )
    }

    fn mcp_contracts() -> String {
        doc(
            "ApiContract",
            "crm",
            "  protocol: mcp\n  address: 10.0.0.4:80\n  tools: [{name: search}, {name: get}]\n",
        ) + &doc(
            "ApiContract",
            "open",
            "  protocol: mcp\n  address: 10.0.0.5:80\n  mcp: {unlistedTools: allow}\n",
        ) + &doc(
            "ApiContract",
            "empty",
            "  protocol: mcp\n  address: 10.0.0.6:80\n",
        )
    }

    #[test]
    fn full_policy_is_valid() {
        let set = load(FULL);
        assert_eq!(set.documents.len(), 12);
    }

    #[test]
    fn grant_references() {
        let policy = doc(
            "AccessPolicy",
            "p",
            "  subjects: [{workload: {}}]\n  allow:\n    - {contract: missing}\n    \
             - {contract: db}\n    - {contract: orders-api, operations: [listOrders, getOrder]}\n    \
             - {contract: other/orders-api}\n    - {contract: bare, operations: [x]}\n  \
             deny:\n    - {contract: shop/orders-api}\n    - {contract: bare}\n",
        );
        let errs = errors(&(policy + &contracts()));
        assert_messages(
            &errs,
            &[
                "spec.allow[0].contract: unknown ApiContract shop/missing",
                "spec.allow[1].contract: ApiContract shop/db has protocol tcp: only http and \
                 mcp contracts have access rules and quotas",
                "spec.allow[2].operations[1]: ApiContract shop/orders-api has no operation \
                 \"getOrder\" (it has listOrders)",
                "spec.allow[3].contract: unknown ApiContract other/orders-api",
                "spec.allow[4].operations[0]: ApiContract shop/bare has no operation \"x\" (it \
                 declares no operations)",
            ],
        );
        // file:line:column of the reference itself.
        assert!(
            errs[0].starts_with("t.yaml:7:18: document 1 (AccessPolicy p): "),
            "{errs:#?}"
        );
        assert!(errs[2].starts_with("t.yaml:9:55: "), "{errs:#?}");
    }

    #[test]
    fn quota_references() {
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
        let text = quota("{contract: nope}")
            + &quota("{contract: db}").replace("name: q", "name: q2")
            + &quota("{contract: orders-api, operation: getOrder}").replace("name: q", "name: q3")
            + &quota("{contract: orders-api, operation: listOrders}")
                .replace("name: q", "name: q4")
            + &contracts();
        assert_messages(
            &errors(&text),
            &[
                "spec.scope.contract: unknown ApiContract shop/nope",
                "spec.scope.contract: ApiContract shop/db has protocol tcp: only http and mcp \
                 contracts have access rules and quotas",
                "spec.scope.operation: ApiContract shop/orders-api has no operation \
                 \"getOrder\" (it has listOrders)",
            ],
        );
    }

    #[test]
    fn consumer_references() {
        let subjects =
            "  subjects:\n    - consumer: nobody\n    - consumer: {name: other/pp}\n    \
                        - consumer: pp\n    - consumer: {name: shop/pp}\n    \
                        - consumer: {labels: {tier: gold}}\n  allow: [{contract: bare}]\n";
        let text = doc("AccessPolicy", "p", subjects)
            + &doc(
                "Quota",
                "q",
                "  subjects: [{consumer: ghost}]\n  scope: {contract: bare}\n  \
                 limit: {requests: 1, per: second}\n",
            )
            + &consumer("pp", "shop", &[])
            + &contracts();
        let errs = errors(&text);
        assert_messages(
            &errs,
            &[
                "spec.subjects[0].consumer: unknown Consumer shop/nobody",
                "spec.subjects[1].consumer: unknown Consumer other/pp",
                "spec.subjects[0].consumer: unknown Consumer shop/ghost",
            ],
        );
        // Pointed at the name, in both forms.
        assert!(errs[0].starts_with("t.yaml:6:17: "), "{errs:#?}");
        assert!(errs[1].starts_with("t.yaml:7:24: "), "{errs:#?}");
    }

    #[test]
    fn references_to_broken_documents_are_not_repeated() {
        let text = doc(
            "AccessPolicy",
            "p",
            "  subjects: [{consumer: pp}]\n  allow: [{contract: orders-api}]\n",
        ) + &doc(
            "ApiContract",
            "orders-api",
            "  protocol: http\n  address: 10.0.0.1\n",
        ) + &doc("Consumer", "pp", "  plan: Gold Plan\n");
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].contains("(ApiContract orders-api): spec.address:"),
            "{errs:#?}"
        );
        assert!(errs[1].contains("(Consumer pp): spec.plan:"), "{errs:#?}");
    }

    #[test]
    fn api_keys_are_unique_everywhere() {
        let a = consumer("alpha", "shop", &[("k1", HASH_A), ("k1", HASH_B)]);
        let b = consumer("beta", "other", &[("k2", HASH_A), ("k3", HASH_B)]);
        let errs = load_sources([(PathBuf::from("a.yaml"), a), (PathBuf::from("b.yaml"), b)])
            .unwrap_err()
            .to_string();
        let lines: Vec<&str> = errs.lines().collect();
        assert_eq!(
            lines,
            [
                "a.yaml:7:12: document 1 (Consumer alpha): spec.apiKeys[1].id: API key id k1 is \
                 already used by Consumer shop/alpha at a.yaml:6:12",
                "b.yaml:6:22: document 1 (Consumer beta): spec.apiKeys[0].hash: the same key \
                 hash is already used by key k1 of Consumer shop/alpha at a.yaml:6:22",
                "b.yaml:7:22: document 1 (Consumer beta): spec.apiKeys[1].hash: the same key \
                 hash is already used by key k1 of Consumer shop/alpha at a.yaml:7:22",
            ]
        );
    }

    #[test]
    fn consumer_names_are_unique_across_namespaces() {
        let text = consumer("pp", "shop", &[])
            + &consumer("pp", "other", &[])
            + &consumer("pp", "shop", &[]);
        assert_messages(
            &errors(&text),
            &[
                "metadata.name: consumer name pp is already used by Consumer shop/pp at \
                 t.yaml:3:18 (consumer names are unique across namespaces)",
                "metadata.name: duplicate Consumer shop/pp, first defined at t.yaml:3:18",
            ],
        );
    }

    #[test]
    fn invalid_hash_names_the_field() {
        let errs = errors(&consumer("pp", "shop", &[("k1", "sha256:abc")]));
        assert_eq!(
            errs,
            [
                "t.yaml:6:22: document 1 (Consumer pp): spec.apiKeys[0].hash: an API key hash \
                 must start with \"hmac-sha256:\" (compute it with `stoa keys hash`)"
            ]
        );
    }

    #[test]
    fn grant_tool_references() {
        let policy = doc(
            "AccessPolicy",
            "p",
            "  subjects: [{workload: {}}]\n  allow:\n    \
             - {contract: orders-api, tools: [listOrders]}\n    \
             - {contract: crm, operations: [listOrders]}\n    \
             - {contract: crm, tools: [search, delete, \"del*\", \"x?\"]}\n    \
             - {contract: open, tools: [anything]}\n    \
             - {contract: empty, tools: [anything, \"*\"]}\n    \
             - {contract: crm}\n    - {contract: empty}\n  \
             deny:\n    - {contract: db, tools: [x]}\n",
        );
        let errs = errors(&(policy + &contracts() + &mcp_contracts()));
        assert_messages(
            &errs,
            &[
                "spec.allow[0].tools: ApiContract shop/orders-api has protocol http: tools are \
                 only for mcp contracts",
                "spec.allow[1].operations: ApiContract shop/crm has protocol mcp: operations \
                 are only for http contracts",
                "spec.allow[2].tools[1]: ApiContract shop/crm has no tool \"delete\" (it has \
                 search, get); unlisted tools are denied",
                "spec.allow[4].tools[0]: ApiContract shop/empty has no tool \"anything\" (it \
                 lists no tools); unlisted tools are denied",
                "spec.deny[0].contract: ApiContract shop/db has protocol tcp: only http and mcp \
                 contracts have access rules and quotas",
            ],
        );
        assert!(errs[0].starts_with("t.yaml:7:37: "), "{errs:#?}");
        assert!(errs[2].starts_with("t.yaml:9:39: "), "{errs:#?}");
    }

    #[test]
    fn quota_tool_references() {
        let quota = |name: &str, scope: &str| {
            doc(
                "Quota",
                name,
                &format!(
                    "  subjects: [{{workload: {{}}}}]\n  scope: {scope}\n  \
                     limit: {{requests: 1, per: second}}\n"
                ),
            )
        };
        let text = quota("q1", "{contract: orders-api, tool: listOrders}")
            + &quota("q2", "{contract: crm, operation: search}")
            + &quota("q3", "{contract: crm, tool: delete}")
            + &quota("q4", "{contract: open, tool: anything}")
            + &quota("q5", "{contract: crm, tool: search}")
            + &quota("q6", "{contract: crm}")
            + &contracts()
            + &mcp_contracts();
        let errs = errors(&text);
        assert_messages(
            &errs,
            &[
                "spec.scope.tool: ApiContract shop/orders-api has protocol http: tools are only \
                 for mcp contracts",
                "spec.scope.operation: ApiContract shop/crm has protocol mcp: operations are \
                 only for http contracts",
                "spec.scope.tool: ApiContract shop/crm has no tool \"delete\" (it has search, \
                 get); unlisted tools are denied",
            ],
        );
        assert!(
            errs[2].starts_with("t.yaml:22:32: document 3 (Quota q3): "),
            "{errs:#?}"
        );
    }
}
