//! Field paths (`spec.operations[2].id`), semantic issues found at them, and finding
//! the line and column of a path in a document's text.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, Visitor};

use super::Position;

/// One step of a [`FieldPath`]: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// A path from a document's root, written the way serde_yaml writes paths in its own
/// errors (`spec.operations[2].id`), so that every message reads the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(Vec<PathSegment>);

impl FieldPath {
    /// A path of dot-separated keys, e.g. `FieldPath::new("spec.jwt")`.
    pub fn new(keys: &str) -> Self {
        Self(
            keys.split('.')
                .filter(|k| !k.is_empty())
                .map(|k| PathSegment::Key(k.to_owned()))
                .collect(),
        )
    }

    /// This path, then `key` (which may itself hold dots: `"limit.requests"`).
    pub fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.0.extend(FieldPath::new(key).0);
        path
    }

    /// This path, then the mapping key `name` exactly as written, dots included (a
    /// key the user chose, such as an argument name).
    pub fn member(&self, name: &str) -> Self {
        let mut path = self.clone();
        path.0.push(PathSegment::Key(name.to_owned()));
        path
    }

    /// This path, then the `index`-th element (0-based).
    pub fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(PathSegment::Index(index));
        path
    }

    pub fn parent(&self) -> Option<Self> {
        let (_, parent) = self.0.split_last()?;
        Some(Self(parent.to_vec()))
    }

    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => f.write_str(key)?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A problem that parsing alone cannot see (a duplicate, a missing companion field),
/// found by a check of a parsed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The field the message is about; the message is displayed after it.
    pub path: FieldPath,
    /// Where to point when that is not `path` itself (e.g. the `credentials` entry
    /// that makes a missing `jwt` block necessary).
    pub at: Option<FieldPath>,
    pub message: String,
}

impl Issue {
    /// The path to locate in the text.
    pub fn location(&self) -> &FieldPath {
        self.at.as_ref().unwrap_or(&self.path)
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects the issues of one document.
#[derive(Debug, Default)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn push(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(Issue {
            path,
            at: None,
            message: message.into(),
        });
    }

    /// An issue about `path`, pointed at `at`.
    pub fn push_at(&mut self, path: FieldPath, at: FieldPath, message: impl Into<String>) {
        self.0.push(Issue {
            path,
            at: Some(at),
            message: message.into(),
        });
    }

    /// Reports every item equal to an earlier one, e.g. duplicate operation ids.
    /// `path(i)` is the field of item `i`; the message names the first occurrence.
    pub fn duplicates<T: PartialEq + fmt::Display>(
        &mut self,
        items: &[T],
        what: &str,
        path: impl Fn(usize) -> FieldPath,
    ) {
        for (i, item) in items.iter().enumerate() {
            if let Some(first) = items[..i].iter().position(|earlier| earlier == item) {
                self.push(
                    path(i),
                    format!("duplicate {what} {item}, first listed at {}", path(first)),
                );
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Position of the value at `path` in document `index` (1-based) of `text`, e.g.
/// `spec.operations[1].id`. Used to point checks and cross-document errors at the field.
pub fn locate(text: &str, index: usize, path: &FieldPath) -> Option<Position> {
    let doc = serde_yaml::Deserializer::from_str(text).nth(index.checked_sub(1)?)?;
    // The probe fails on purpose at the target value; serde_yaml stamps that error with
    // the value's position, which is the only way to get positions out of serde_yaml.
    match Probe(path.segments()).deserialize(doc) {
        Err(err) if err.to_string().contains(PROBE) => err.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        }),
        _ => None,
    }
}

/// [`locate`], falling back to the nearest enclosing field that is written (a missing
/// field is reported where it should have been written).
pub fn locate_nearest(text: &str, index: usize, path: &FieldPath) -> Option<Position> {
    let mut path = path.clone();
    loop {
        if let Some(position) = locate(text, index, &path) {
            return Some(position);
        }
        path = path.parent()?;
    }
}

const PROBE: &str = "stoa-locate-probe";

struct Probe<'p>(&'p [PathSegment]);

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0.split_first() {
            None => d.deserialize_any(Hit),
            Some((PathSegment::Key(key), rest)) => d.deserialize_map(Walk { key, rest }),
            Some((PathSegment::Index(index), rest)) => d.deserialize_seq(WalkSeq {
                index: *index,
                rest,
            }),
        }
    }
}

/// Rejects every value (serde's default visitor methods fail with "expected {PROBE}").
struct Hit;

impl Visitor<'_> for Hit {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(PROBE)
    }
}

struct Walk<'p> {
    key: &'p str,
    rest: &'p [PathSegment],
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == self.key {
                return map.next_value_seed(Probe(self.rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

struct WalkSeq<'p> {
    index: usize,
    rest: &'p [PathSegment],
}

impl<'de> Visitor<'de> for WalkSeq<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for _ in 0..self.index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Probe(self.rest)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_display_like_serde_yaml() {
        let path = FieldPath::new("spec.operations").index(2).key("id");
        assert_eq!(path.to_string(), "spec.operations[2].id");
        assert_eq!(
            path.parent().unwrap().to_string(),
            "spec.operations[2]".to_owned()
        );
        assert_eq!(
            FieldPath::new("spec").key("limit.requests").to_string(),
            "spec.limit.requests"
        );
        assert!(FieldPath::new("").is_root());
        assert_eq!(
            FieldPath::new("spec.arguments")
                .member("a.b")
                .segments()
                .len(),
            3
        );
    }

    #[test]
    fn locates_keys_and_indices() {
        let text =
            "a: 1\n---\nspec:\n  ops:\n    - {id: x}\n    - id: y\n      m: GET\n  list: [p, q]\n";
        let at = |path: FieldPath| locate(text, 2, &path).map(|p| (p.line, p.column));
        let ops = FieldPath::new("spec.ops");
        assert_eq!(at(ops.index(0).key("id")), Some((5, 12)));
        assert_eq!(at(ops.index(1).key("m")), Some((7, 10)));
        assert_eq!(at(FieldPath::new("spec.list").index(1)), Some((8, 13)));
        assert_eq!(at(ops.index(2)), None);
        assert_eq!(at(ops.index(0).key("nope")), None);
        // An index into a mapping or a key into a sequence is simply not found.
        assert_eq!(at(FieldPath::new("spec").index(0)), None);
        assert_eq!(at(ops.key("id")), None);
        assert_eq!(
            locate_nearest(text, 2, &ops.index(0).key("nope")).map(|p| (p.line, p.column)),
            Some((5, 7))
        );
    }

    #[test]
    fn reports_duplicates_against_the_first() {
        let mut issues = Issues::default();
        issues.duplicates(&["a", "b", "a", "a"], "id", |i| {
            FieldPath::new("spec.ids").index(i)
        });
        let messages: Vec<String> = issues.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "spec.ids[2]: duplicate id a, first listed at spec.ids[0]",
                "spec.ids[3]: duplicate id a, first listed at spec.ids[0]",
            ]
        );
    }
}
