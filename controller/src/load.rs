//! Loads a folder of policy files into a checked [`PolicySet`].
//!
//! Every error found is reported, each naming its file, line, column, document and
//! field, e.g.
//! `examples/bad.yaml:7:5: document 2 (ApiContract orders-api): spec.address: invalid IPv4 socket address "10.96.0.10"`.
//!
//! Three passes: parsing (types and scalars, [`policy::parse_documents`]), checks of
//! each parsed document ([`Document::check`]), and checks across documents
//! (`cross`: unique names and keys, references).

mod cross;

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::policy::{
    self, AccessPolicy, ApiContract, Consumer, Document, FieldPath, Issue, Kind, Position, Quota,
    Workload,
};

/// A checked set of policy documents, in file-name then document order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    pub documents: Vec<Document>,
}

impl PolicySet {
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.documents.iter().filter_map(|d| match d {
            Document::Workload(w) => Some(w),
            _ => None,
        })
    }

    pub fn contracts(&self) -> impl Iterator<Item = &ApiContract> {
        self.documents.iter().filter_map(|d| match d {
            Document::ApiContract(c) => Some(c),
            _ => None,
        })
    }

    pub fn consumers(&self) -> impl Iterator<Item = &Consumer> {
        self.documents.iter().filter_map(|d| match d {
            Document::Consumer(c) => Some(c),
            _ => None,
        })
    }

    pub fn access_policies(&self) -> impl Iterator<Item = &AccessPolicy> {
        self.documents.iter().filter_map(|d| match d {
            Document::AccessPolicy(p) => Some(p),
            _ => None,
        })
    }

    pub fn quotas(&self) -> impl Iterator<Item = &Quota> {
        self.documents.iter().filter_map(|d| match d {
            Document::Quota(q) => Some(q),
            _ => None,
        })
    }
}

/// Which document of a file an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRef {
    /// 1-based.
    pub index: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => write!(f, " ({kind} {name})"),
            (Some(kind), None) => write!(f, " ({kind})"),
            (None, Some(name)) => write!(f, " ({name})"),
            (None, None) => Ok(()),
        }
    }
}

/// One problem in the policy folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub position: Option<Position>,
    pub document: Option<DocumentRef>,
    /// Starts with the field path when there is one (`spec.address: ...`).
    pub message: String,
}

impl std::error::Error for PolicyError {}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        if let Some(doc) = &self.document {
            write!(f, ": {doc}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl PolicyError {
    fn file_error(file: &Path, message: String) -> Self {
        Self {
            file: file.to_owned(),
            position: None,
            document: None,
            message,
        }
    }
}

/// All the problems found in one load, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    pub fn errors(&self) -> &[PolicyError] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::error::Error for PolicyErrors {}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

/// Whether a directory entry is a policy file: `*.yaml` / `*.yml`, not hidden, not an
/// editor's backup or autosave file.
pub fn is_policy_file_name(name: &str) -> bool {
    let hidden_or_temp = name.starts_with('.') || name.starts_with('#') || name.ends_with('~');
    !hidden_or_temp && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The policy files of `dir` (not recursive), sorted by name.
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // fs::metadata follows symlinks (Kubernetes ConfigMap volumes are symlinks).
        if is_policy_file_name(&name) && fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Loads and checks every policy file of `dir`.
pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyErrors> {
    let files = policy_files(dir).map_err(|e| {
        PolicyErrors(vec![PolicyError::file_error(
            dir,
            format!("cannot read policy directory: {e}"),
        )])
    })?;
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match fs::read(&file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => sources.push((file, text)),
                Err(_) => errors.push(PolicyError::file_error(
                    &file,
                    "file is not valid UTF-8".to_owned(),
                )),
            },
            Err(e) => errors.push(PolicyError::file_error(&file, format!("cannot read: {e}"))),
        }
    }
    match load_sources(sources) {
        Ok(set) if errors.is_empty() => Ok(set),
        Ok(_) => Err(PolicyErrors(errors)),
        Err(PolicyErrors(more)) => {
            errors.extend(more);
            Err(PolicyErrors(errors))
        }
    }
}

/// A parsed document and where it came from.
struct Located {
    source: usize,
    index: usize,
    doc: Document,
}

/// Where an error sorts: reading order, whichever pass found it.
type Order = (usize, usize, Option<Position>);

/// Collects errors about parsed documents, locating the fields they name.
struct Reporter<'a> {
    sources: &'a [(PathBuf, String)],
    errors: Vec<(Order, PolicyError)>,
}

impl<'a> Reporter<'a> {
    fn new(sources: &'a [(PathBuf, String)]) -> Self {
        Self {
            sources,
            errors: Vec::new(),
        }
    }

    /// An error about field `path` of `at`, pointed at `path` or, if it is not
    /// written, at its nearest written ancestor.
    fn report(&mut self, at: &Located, path: &FieldPath, message: impl fmt::Display) {
        self.issue(
            at,
            &Issue {
                path: path.clone(),
                at: None,
                message: message.to_string(),
            },
        );
    }

    fn issue(&mut self, at: &Located, issue: &Issue) {
        let (file, text) = &self.sources[at.source];
        let position = policy::locate_nearest(text, at.index, issue.location());
        let meta = at.doc.metadata();
        self.errors.push((
            (at.source, at.index, position),
            PolicyError {
                file: file.clone(),
                position,
                document: Some(DocumentRef {
                    index: at.index,
                    kind: Some(at.doc.kind().to_string()),
                    name: Some(meta.name.to_string()),
                }),
                message: issue.to_string(),
            },
        ));
    }

    /// `file:line:column` of a field, to name the other side of a conflict.
    fn place(&self, at: &Located, path: &FieldPath) -> String {
        let (file, text) = &self.sources[at.source];
        match policy::locate_nearest(text, at.index, path) {
            Some(p) => format!("{}:{}:{}", file.display(), p.line, p.column),
            None => format!("{} document {}", file.display(), at.index),
        }
    }
}

/// Parses and checks `(file name, content)` pairs, in the given order.
pub fn load_sources(
    sources: impl IntoIterator<Item = (PathBuf, String)>,
) -> Result<PolicySet, PolicyErrors> {
    let sources: Vec<(PathBuf, String)> = sources.into_iter().collect();
    let mut errors = Vec::new();
    let mut docs = Vec::new();
    // Documents that failed to parse, by (kind, name): references to them are not
    // reported again as unknown.
    let mut broken: HashSet<(Kind, String)> = HashSet::new();
    for (source, (file, text)) in sources.iter().enumerate() {
        for parsed in policy::parse_documents(text) {
            match parsed.result {
                Ok(doc) => docs.push(Located {
                    source,
                    index: parsed.index,
                    doc,
                }),
                Err(err) => {
                    if let (Some(kind), Some(name)) = (&parsed.kind, &parsed.name) {
                        if let Some(kind) = Kind::from_name(kind) {
                            broken.insert((kind, name.clone()));
                        }
                    }
                    errors.push((
                        (source, parsed.index, err.position),
                        PolicyError {
                            file: file.clone(),
                            position: err.position,
                            document: Some(DocumentRef {
                                index: parsed.index,
                                kind: parsed.kind,
                                name: parsed.name,
                            }),
                            message: err.message,
                        },
                    ))
                }
            }
        }
    }
    let mut reporter = Reporter::new(&sources);
    for at in &docs {
        for issue in at.doc.check() {
            reporter.issue(at, &issue);
        }
    }
    cross::check(&mut reporter, &docs, &broken);
    errors.extend(reporter.errors);
    if errors.is_empty() {
        return Ok(PolicySet {
            documents: docs.into_iter().map(|d| d.doc).collect(),
        });
    }
    // Report in reading order, whichever check found the error.
    errors.sort_by_key(|(order, _)| *order);
    Err(PolicyErrors(errors.into_iter().map(|(_, e)| e).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Kind;

    fn workload(name: &str, cgroup: &str) -> String {
        format!(
            "apiVersion: gostoa.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\n  \
             namespace: finance\nspec:\n  cgroup: {cgroup}\n"
        )
    }

    fn contract(name: &str, address: &str) -> String {
        format!(
            "apiVersion: gostoa.dev/v1alpha1\nkind: ApiContract\nmetadata:\n  name: {name}\n  \
             namespace: shop\nspec:\n  protocol: http\n  address: {address}\n"
        )
    }

    fn load(files: &[(&str, String)]) -> Result<PolicySet, PolicyErrors> {
        load_sources(files.iter().map(|(n, t)| (PathBuf::from(n), t.clone())))
    }

    fn lines(errors: &PolicyErrors) -> Vec<String> {
        errors.to_string().lines().map(str::to_owned).collect()
    }

    #[test]
    fn bad_address_message_format() {
        let text = format!(
            "{}---\n{}",
            workload("w", "a/w"),
            contract("orders-api", "10.96.0.10")
        );
        let errs = load(&[("examples/bad.yaml", text)]).unwrap_err();
        assert_eq!(
            lines(&errs),
            [
                "examples/bad.yaml:16:12: document 2 (ApiContract orders-api): spec.address: \
              invalid IPv4 socket address \"10.96.0.10\" (expected IP:port, e.g. 10.96.0.10:80)"
            ]
        );
    }

    #[test]
    fn unknown_field_message_format() {
        let text = workload("w", "a/w").replace("spec:\n", "spec:\n  colour: blue\n");
        let errs = load(&[("p/w.yaml", text)]).unwrap_err();
        let line = &lines(&errs)[0];
        assert!(
            line.starts_with("p/w.yaml:7:3: document 1 (Workload w): spec: unknown field `colour`"),
            "{line}"
        );
    }

    #[test]
    fn reports_all_errors_in_order() {
        let a = format!(
            "{}---\n{}",
            workload("w1", "/abs"),
            contract("c1", "10.0.0.1:80").replace("protocol: http", "protocol: grpc")
        );
        let b = format!(
            "{}---\n{}",
            contract("c2", "10.0.0.2:80"),
            workload("w2", "x/../y")
        );
        let errs = load(&[("a.yaml", a), ("b.yaml", b)]).unwrap_err();
        let got = lines(&errs);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(
            got[0].starts_with("a.yaml:7:11: document 1 (Workload w1): spec.cgroup:"),
            "{got:#?}"
        );
        assert!(
            got[1].starts_with("a.yaml:15:13: document 2 (ApiContract c1): spec.protocol:"),
            "{got:#?}"
        );
        assert!(
            got[2].starts_with("b.yaml:16:11: document 2 (Workload w2): spec.cgroup:"),
            "{got:#?}"
        );
    }

    #[test]
    fn duplicates_across_files() {
        let a = format!(
            "{}---\n{}",
            workload("w", "a/w"),
            contract("c", "10.0.0.1:80")
        );
        let b = format!(
            "{}---\n{}---\n{}",
            workload("w", "a/other"),
            contract("d", "10.0.0.1:80"),
            workload("v", "a/w")
        );
        let errs = load(&[("a.yaml", a), ("b.yaml", b)]).unwrap_err();
        assert_eq!(
            lines(&errs),
            [
                "b.yaml:4:9: document 1 (Workload w): metadata.name: duplicate Workload \
                 finance/w, first defined at a.yaml:4:9",
                "b.yaml:16:12: document 2 (ApiContract d): spec.address: address 10.0.0.1:80 \
                 is already used by ApiContract shop/c at a.yaml:16:12",
                "b.yaml:24:11: document 3 (Workload v): spec.cgroup: cgroup a/w is already \
                 used by Workload finance/w at a.yaml:7:11",
            ]
        );
    }

    #[test]
    fn same_name_different_kind_or_namespace_is_fine() {
        let a = format!(
            "{}---\n{}---\n{}",
            workload("x", "a/1"),
            contract("x", "10.0.0.1:80"),
            workload("x", "a/2").replace("namespace: finance", "namespace: other")
        );
        let set = load(&[("a.yaml", a)]).unwrap();
        assert_eq!(set.workloads().count(), 2);
        assert_eq!(set.contracts().count(), 1);
    }

    #[test]
    fn file_name_filter() {
        for ok in ["a.yaml", "b.yml", "10-policy.yaml"] {
            assert!(is_policy_file_name(ok), "{ok}");
        }
        for ignored in [
            ".a.yaml",
            ".a.yaml.swp",
            "a.yaml~",
            "#a.yaml#",
            ".#a.yaml",
            "a.json",
            "a.yaml.bak",
        ] {
            assert!(!is_policy_file_name(ignored), "{ignored}");
        }
    }

    #[test]
    fn load_dir_reads_sorted_files_and_reports_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b.yaml"), contract("c", "10.0.0.1:80")).unwrap();
        fs::write(dir.path().join("a.yml"), workload("w", "a/w")).unwrap();
        fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
        fs::write(dir.path().join("notes.txt"), "garbage: [").unwrap();
        fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        let set = load_dir(dir.path()).unwrap();
        let kinds: Vec<_> = set.documents.iter().map(Document::kind).collect();
        assert_eq!(kinds, [Kind::Workload, Kind::ApiContract]);

        let errs = load_dir(&dir.path().join("missing")).unwrap_err();
        assert!(
            errs.to_string().contains("cannot read policy directory"),
            "{errs}"
        );
    }

    #[test]
    fn loads_example_folder() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy");
        let set = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        let w = set.workloads().next().expect("a workload");
        assert_eq!(w.metadata.name.as_str(), "billing-agent");
        assert_eq!(w.metadata.namespace.as_str(), "finance");
        assert_eq!(w.spec.cgroup.as_str(), "stoa.slice/billing-agent");
        let c = set
            .contracts()
            .find(|c| c.metadata.name.as_str() == "orders-api")
            .expect("the orders-api contract");
        assert_eq!(c.spec.address.to_string(), "10.96.0.10:80");
    }
}
