//! The MCP part of a contract: which tools exist, what their arguments may hold, who
//! may call them, and how the endpoint is laid out.
use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;
use stoa_proto::v1 as pb;

/// Every tool, or the tools matching one of a list of names and globs.
#[derive(Debug, Clone)]
pub struct ToolSet {
    all: bool,
    patterns: Vec<String>,
}

impl ToolSet {
    pub fn all() -> Self {
        Self {
            all: true,
            patterns: Vec::new(),
        }
    }

    pub fn of(patterns: &[String]) -> Self {
        if patterns.is_empty() {
            return Self::all();
        }
        Self {
            all: false,
            patterns: patterns.to_vec(),
        }
    }

    pub fn contains(&self, tool: &str) -> bool {
        self.all || self.patterns.iter().any(|p| glob_matches(p, tool))
    }

    pub fn union(self, other: ToolSet) -> ToolSet {
        if self.all || other.all {
            return ToolSet::all();
        }
        let mut patterns = self.patterns;
        patterns.extend(other.patterns);
        ToolSet {
            all: false,
            patterns,
        }
    }
}

/// `*` matches any run of characters, `?` one character; everything else literally.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Iterative matcher with single-star backtracking: linear in practice, no recursion.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// What one argument of a tool may hold.
#[derive(Debug, Clone)]
pub struct ArgumentRule {
    pub allowed_values: Vec<String>,
    pub pattern: Option<Regex>,
    pub max_length: Option<u64>,
}

impl ArgumentRule {
    /// Why `value` breaks the rule, if it does.
    fn violation(&self, argument: &str, value: &Value) -> Option<String> {
        // Strings are checked as written; other JSON values by their JSON text.
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !self.allowed_values.is_empty() && !self.allowed_values.contains(&text) {
            return Some(format!(
                "argument {argument:?} must be one of {}",
                self.allowed_values.join(", ")
            ));
        }
        if let Some(max) = self.max_length {
            let length = text.chars().count() as u64;
            if length > max {
                return Some(format!(
                    "argument {argument:?} is {length} characters long, at most {max} allowed"
                ));
            }
        }
        if let Some(pattern) = &self.pattern {
            if !pattern.is_match(&text) {
                return Some(format!(
                    "argument {argument:?} does not match the pattern {}",
                    pattern.as_str()
                ));
            }
        }
        None
    }
}

#[derive(Debug, Clone)]
pub struct ToolRule {
    pub name: String,
    pub arguments: HashMap<String, ArgumentRule>,
    pub secret_arguments: Vec<String>,
}

impl ToolRule {
    /// The first constraint `arguments` breaks. Absent arguments break none: whether
    /// an argument is required is the server's schema to enforce.
    pub fn violation(&self, arguments: Option<&Value>) -> Option<String> {
        let arguments = arguments.and_then(Value::as_object)?;
        let mut names: Vec<&String> = self.arguments.keys().collect();
        names.sort();
        names.into_iter().find_map(|name| {
            let value = arguments.get(name.as_str())?;
            self.arguments[name].violation(name, value)
        })
    }
}

/// The RFC 9728 protected resource the gateway answers for.
#[derive(Debug, Clone)]
pub struct OAuthResource {
    pub resource: String,
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct McpPolicy {
    pub path: String,
    pub sse_path: String,
    pub allow_unlisted_tools: bool,
    pub deny_other_methods: bool,
    pub tools: Vec<ToolRule>,
    pub oauth: Option<OAuthResource>,
}

impl McpPolicy {
    pub fn compile(settings: &pb::McpSettings) -> Result<Self, String> {
        let mut tools = Vec::new();
        for tool in &settings.tools {
            let mut arguments = HashMap::new();
            for (name, constraint) in &tool.arguments {
                let pattern = match constraint.pattern.as_str() {
                    "" => None,
                    // Anchored: the whole value must match, not a substring of it.
                    pattern => Some(Regex::new(&format!("^(?:{pattern})$")).map_err(|err| {
                        format!("tool {}: argument {name}: bad pattern: {err}", tool.name)
                    })?),
                };
                arguments.insert(
                    name.clone(),
                    ArgumentRule {
                        allowed_values: constraint.allowed_values.clone(),
                        pattern,
                        max_length: (constraint.max_length > 0).then_some(constraint.max_length),
                    },
                );
            }
            tools.push(ToolRule {
                name: tool.name.clone(),
                arguments,
                secret_arguments: tool.secret_arguments.clone(),
            });
        }
        let or_default = |value: &str, default: &str| {
            if value.is_empty() {
                default.to_string()
            } else {
                value.to_string()
            }
        };
        Ok(Self {
            path: or_default(&settings.path, "/mcp"),
            sse_path: or_default(&settings.sse_path, "/sse"),
            allow_unlisted_tools: settings.allow_unlisted_tools,
            deny_other_methods: settings.deny_other_methods,
            tools,
            oauth: settings.oauth.as_ref().map(|o| OAuthResource {
                resource: o.resource.clone(),
                authorization_servers: o.authorization_servers.clone(),
                scopes_supported: o.scopes_supported.clone(),
            }),
        })
    }

    pub fn tool(&self, name: &str) -> Option<&ToolRule> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// Methods a session cannot work without; never denied by `otherMethods: deny`.
    pub fn is_essential_method(method: &str) -> bool {
        matches!(
            method,
            "initialize"
                | "ping"
                | "tools/list"
                | "subscriptions/listen"
                | "notifications/initialized"
                | "notifications/cancelled"
                | "notifications/progress"
        )
    }

    /// Whether a method other than tools/call may pass.
    pub fn allows_method(&self, method: &str) -> bool {
        !self.deny_other_methods || Self::is_essential_method(method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_matches("search_*", "search_customers"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a?c", "abc"));
        assert!(glob_matches("*_customer*", "delete_customer"));
        assert!(!glob_matches("search_*", "delete_customer"));
        assert!(!glob_matches("echo", "echo2"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn tool_sets() {
        let set = ToolSet::of(&["search_*".into(), "echo".into()]);
        assert!(set.contains("search_x") && set.contains("echo"));
        assert!(!set.contains("delete_customer"));
        assert!(ToolSet::of(&[]).contains("anything"));
        assert!(set
            .union(ToolSet::of(&["delete_*".into()]))
            .contains("delete_customer"));
    }

    fn settings() -> pb::McpSettings {
        pb::McpSettings {
            tools: vec![pb::Tool {
                name: "search_customers".into(),
                arguments: [
                    (
                        "query".to_string(),
                        pb::ArgumentConstraint {
                            pattern: "[a-z ]+".into(),
                            max_length: 10,
                            ..Default::default()
                        },
                    ),
                    (
                        "region".to_string(),
                        pb::ArgumentConstraint {
                            allowed_values: vec!["eu".into(), "us".into()],
                            ..Default::default()
                        },
                    ),
                ]
                .into(),
                secret_arguments: vec![],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn argument_constraints() {
        let policy = McpPolicy::compile(&settings()).unwrap();
        assert_eq!(policy.path, "/mcp");
        assert_eq!(policy.sse_path, "/sse");
        let tool = policy.tool("search_customers").unwrap();
        assert_eq!(
            tool.violation(Some(&json!({"query": "acme", "region": "eu"}))),
            None
        );
        assert_eq!(tool.violation(None), None);
        let long = tool
            .violation(Some(&json!({"query": "abcdefghijkl"})))
            .unwrap();
        assert!(long.contains("at most 10"), "{long}");
        // The pattern is anchored: a matching substring is not enough.
        let pattern = tool
            .violation(Some(&json!({"query": "acme;drop"})))
            .unwrap();
        assert!(pattern.contains("pattern"), "{pattern}");
        let region = tool.violation(Some(&json!({"region": "apac"}))).unwrap();
        assert!(region.contains("one of eu, us"), "{region}");
        assert!(tool.violation(Some(&json!({"region": 5}))).is_some());
    }

    #[test]
    fn essential_methods_survive_other_methods_deny() {
        let mut s = settings();
        s.deny_other_methods = true;
        let policy = McpPolicy::compile(&s).unwrap();
        assert!(policy.allows_method("initialize"));
        assert!(policy.allows_method("tools/list"));
        assert!(!policy.allows_method("resources/read"));
        assert!(McpPolicy::compile(&settings())
            .unwrap()
            .allows_method("prompts/get"));
    }
}
