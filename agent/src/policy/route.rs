//! Route matching on method + path template, after the path has been decoded and
//! normalized so that `/orders/../admin`, `/orders/%2e%2e/admin` or `//admin` cannot
//! slip past a rule written for `/admin`.
use std::borrow::Cow;

use hyper::Method;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path holds an encoded '/', '\\\\' or NUL")]
    AmbiguousEncoding,
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
    #[error("the path is not valid UTF-8 once decoded")]
    NotUtf8,
}

/// The decoded, dot-segment-free segments of a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    pub segments: Vec<String>,
    pub trailing_slash: bool,
}

/// Characters to escape again when the normalized path is forwarded: controls,
/// space, and what would change the meaning of a path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'\\');

impl NormalizedPath {
    /// Decodes each segment, removes `.` and `..` (RFC 3986 §5.2.4) and empty
    /// segments. A decoded segment containing '/', '\' or NUL is refused: the
    /// upstream could split it differently from the route match.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
        let mut segments: Vec<String> = Vec::new();
        let mut trailing_slash = false;
        for raw_segment in rest.split('/') {
            let decoded: Cow<str> = percent_decode_str(raw_segment)
                .decode_utf8()
                .map_err(|_| PathError::NotUtf8)?;
            if decoded.contains(['/', '\\', '\0']) {
                return Err(PathError::AmbiguousEncoding);
            }
            trailing_slash = false;
            match decoded.as_ref() {
                "" | "." => trailing_slash = true,
                ".." => {
                    segments.pop().ok_or(PathError::AboveRoot)?;
                    trailing_slash = true;
                }
                _ => segments.push(decoded.into_owned()),
            }
        }
        Ok(Self {
            trailing_slash: trailing_slash && !segments.is_empty(),
            segments,
        })
    }

    /// The path to forward upstream: exactly what was matched, re-encoded.
    pub fn to_forward_path(&self) -> String {
        let mut path =
            String::with_capacity(self.segments.iter().map(|s| s.len() + 1).sum::<usize>() + 1);
        for segment in &self.segments {
            path.push('/');
            path.extend(utf8_percent_encode(segment, SEGMENT));
        }
        if path.is_empty() || self.trailing_slash {
            path.push('/');
        }
        path
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: exactly one segment.
    Param,
    /// `{name*}`: the rest of the path (one or more segments).
    Rest,
}

#[derive(Debug, Clone)]
struct Route {
    operation: usize,
    method: Option<Method>,
    segments: Vec<Segment>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("operation {0}: method {1:?} is not an HTTP method")]
    Method(String, String),
    #[error("operation {0}: path {1:?} is not a valid template")]
    Path(String, String),
}

/// Operations of one contract, ready to match.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// `operations`: (id, method or "*", path template); the index in this list is
    /// what `match_request` returns.
    pub fn new<'a>(
        operations: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Result<Self, TemplateError> {
        let mut routes = Vec::new();
        for (operation, (id, method, path)) in operations.into_iter().enumerate() {
            let method = match method {
                "*" => None,
                m => Some(
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| TemplateError::Method(id.into(), m.into()))?,
                ),
            };
            let segments =
                parse_template(path).ok_or_else(|| TemplateError::Path(id.into(), path.into()))?;
            routes.push(Route {
                operation,
                method,
                segments,
            });
        }
        Ok(Self { routes })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The index of the most specific operation matching, if any. Literal segments
    /// beat parameters, which beat a rest match; an exact method beats "*".
    pub fn match_request(&self, method: &Method, path: &NormalizedPath) -> Option<usize> {
        let mut best: Option<(u32, usize)> = None;
        for route in &self.routes {
            if route.method.as_ref().is_some_and(|m| m != method) {
                continue;
            }
            let Some(mut score) = match_segments(&route.segments, &path.segments) else {
                continue;
            };
            score = score * 2 + u32::from(route.method.is_some());
            if best.is_none_or(|(best_score, _)| score > best_score) {
                best = Some((score, route.operation));
            }
        }
        best.map(|(_, operation)| operation)
    }
}

fn parse_template(path: &str) -> Option<Vec<Segment>> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if name.ends_with('*') && i == parts.len() - 1 && name.len() > 1 => {
                Segment::Rest
            }
            Some(name) if !name.is_empty() && !name.contains(['*', '{', '}']) => Segment::Param,
            Some(_) => return None,
            None if part.is_empty() || *part == "." || *part == ".." => return None,
            None if part.contains(['{', '}']) => return None,
            None => Segment::Literal(percent_decode_str(part).decode_utf8().ok()?.into_owned()),
        };
        segments.push(segment);
    }
    Some(segments)
}

/// Some(specificity) when the template matches.
fn match_segments(template: &[Segment], path: &[String]) -> Option<u32> {
    let mut score = 0u32;
    for (i, segment) in template.iter().enumerate() {
        match segment {
            Segment::Rest => return (path.len() > i).then_some(score * 4),
            Segment::Param => {
                path.get(i)?;
                score = score * 4 + 2;
            }
            Segment::Literal(literal) => {
                if path.get(i)? != literal {
                    return None;
                }
                score = score * 4 + 3;
            }
        }
    }
    (template.len() == path.len()).then_some(score)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> NormalizedPath {
        NormalizedPath::parse(raw).unwrap()
    }

    #[test]
    fn dot_segments_and_encodings_are_normalized() {
        assert_eq!(path("/orders/../admin").segments, ["admin"]);
        assert_eq!(path("/orders/%2e%2e/admin").segments, ["admin"]);
        assert_eq!(path("/orders/%2E./admin").segments, ["admin"]);
        assert_eq!(path("//admin/./x/").segments, ["admin", "x"]);
        assert!(path("/a/b/").trailing_slash);
        assert_eq!(path("/a/b/").to_forward_path(), "/a/b/");
        assert_eq!(path("/").to_forward_path(), "/");
        assert_eq!(path("/a%20b/c").to_forward_path(), "/a%20b/c");
        assert_eq!(
            NormalizedPath::parse("/orders/%2F..%2Fadmin"),
            Err(PathError::AmbiguousEncoding)
        );
        assert_eq!(
            NormalizedPath::parse("/a%00"),
            Err(PathError::AmbiguousEncoding)
        );
        assert_eq!(NormalizedPath::parse("/.."), Err(PathError::AboveRoot));
        assert_eq!(NormalizedPath::parse("/%ff"), Err(PathError::NotUtf8));
        assert_eq!(NormalizedPath::parse("orders"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn most_specific_template_wins() {
        let table = RouteTable::new([
            ("getOrder", "GET", "/orders/{id}"),
            ("listOrders", "GET", "/orders"),
            ("openOrders", "GET", "/orders/open"),
            ("anyFile", "*", "/files/{path*}"),
            ("root", "GET", "/"),
        ])
        .unwrap();
        let get = Method::GET;
        assert_eq!(table.match_request(&get, &path("/orders")), Some(1));
        assert_eq!(table.match_request(&get, &path("/orders/42")), Some(0));
        assert_eq!(table.match_request(&get, &path("/orders/open")), Some(2));
        assert_eq!(table.match_request(&Method::POST, &path("/orders")), None);
        assert_eq!(table.match_request(&get, &path("/orders/42/items")), None);
        assert_eq!(
            table.match_request(&Method::PUT, &path("/files/a/b")),
            Some(3)
        );
        assert_eq!(table.match_request(&get, &path("/files")), None);
        assert_eq!(table.match_request(&get, &path("/")), Some(4));
        // A normalization bypass lands on the route it really names.
        assert_eq!(
            table.match_request(&get, &path("/orders/1/../../orders")),
            Some(1)
        );
    }

    #[test]
    fn invalid_templates_are_rejected() {
        for bad in ["orders", "/a/{b*}/c", "/a/{}", "/a/../b", "/a/{b", "/a//b"] {
            assert!(RouteTable::new([("x", "GET", bad)]).is_err(), "{bad}");
        }
        assert!(RouteTable::new([("x", "GE T", "/a")]).is_err());
    }
}
