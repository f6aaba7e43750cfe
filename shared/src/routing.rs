//! Routing tables: which backend serves a tool, prompt, resource or completion.
//!
//! Tools and prompts are namespaced `<backend><separator><name>`; backend names are
//! validated never to contain the separator, so the first separator splits them
//! unambiguously. Resources keep their URIs: the gateway learns URI → backend from
//! listings ([`ResourceRoutes`]), and falls back to the longest matching literal prefix
//! of a resource template.

use serde_json::Value;
use std::collections::HashMap;

use crate::error::RouteError;

/// Default namespace separator between backend and tool/prompt name.
pub const DEFAULT_SEPARATOR: &str = ".";

/// Adds and strips backend prefixes.
#[derive(Clone, Debug)]
pub struct Namespace {
    sep: String,
}

impl Namespace {
    /// A namespace with the given separator.
    pub fn new(sep: &str) -> Self {
        Namespace { sep: sep.into() }
    }

    /// The separator.
    pub fn separator(&self) -> &str {
        &self.sep
    }

    /// `backend` + separator + `name`.
    pub fn prefix(&self, backend: &str, name: &str) -> String {
        let mut s = String::with_capacity(backend.len() + self.sep.len() + name.len());
        s.push_str(backend);
        s.push_str(&self.sep);
        s.push_str(name);
        s
    }

    /// Splits `full` into (backend, name) when it starts with a known backend's prefix.
    pub fn split<'a>(
        &self,
        full: &'a str,
        is_backend: impl Fn(&str) -> bool,
    ) -> Option<(&'a str, &'a str)> {
        let (backend, name) = full.split_once(self.sep.as_str())?;
        (is_backend(backend) && !name.is_empty()).then_some((backend, name))
    }

    /// Prefixes the `name` field of every object in `items` (a tools or prompts list).
    pub fn prefix_names(&self, backend: &str, items: &mut [Value]) {
        for item in items {
            if let Some(Value::String(name)) = item.get_mut("name") {
                *name = self.prefix(backend, name);
            }
        }
    }
}

/// Routes a tool name to (backend, name) or a typed error.
pub fn route_tool<'a>(
    ns: &Namespace,
    name: &'a str,
    is_backend: impl Fn(&str) -> bool,
) -> Result<(&'a str, &'a str), RouteError> {
    ns.split(name, is_backend)
        .ok_or_else(|| RouteError::UnknownTool(name.into()))
}

/// Routes a prompt name to (backend, name) or a typed error.
pub fn route_prompt<'a>(
    ns: &Namespace,
    name: &'a str,
    is_backend: impl Fn(&str) -> bool,
) -> Result<(&'a str, &'a str), RouteError> {
    ns.split(name, is_backend)
        .ok_or_else(|| RouteError::UnknownPrompt(name.into()))
}

/// Resource URI → backend, learned from `resources/list` and
/// `resources/templates/list` answers.
#[derive(Debug, Default, Clone)]
pub struct ResourceRoutes {
    exact: HashMap<String, String>,
    /// (literal prefix of a URI template, backend), longest first.
    templates: Vec<(String, String)>,
}

impl ResourceRoutes {
    /// Remembers the URIs of a `resources/list` page.
    pub fn learn_resources(&mut self, backend: &str, resources: &[Value]) {
        for r in resources {
            if let Some(uri) = r.get("uri").and_then(Value::as_str) {
                if let Some(prev) = self.exact.get(uri) {
                    if prev != backend {
                        log::warn!(
                            "resource {uri} is offered by backends {prev:?} and {backend:?}; routing it to {prev:?}"
                        );
                    }
                    continue;
                }
                self.exact.insert(uri.into(), backend.into());
            }
        }
    }

    /// Remembers the templates of a `resources/templates/list` page.
    pub fn learn_templates(&mut self, backend: &str, templates: &[Value]) {
        for t in templates {
            if let Some(tpl) = t.get("uriTemplate").and_then(Value::as_str) {
                let prefix = tpl.split('{').next().unwrap_or("").to_string();
                if prefix.is_empty() || self.templates.iter().any(|(p, _)| *p == prefix) {
                    continue;
                }
                self.templates.push((prefix, backend.into()));
            }
        }
        self.templates.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
    }

    /// Forgets everything learned from one backend (before it is listed again).
    pub fn forget(&mut self, backend: &str) {
        self.exact.retain(|_, b| b != backend);
        self.templates.retain(|(_, b)| b != backend);
    }

    /// The backend serving `uri`.
    pub fn route(&self, uri: &str) -> Result<&str, RouteError> {
        if let Some(b) = self.exact.get(uri) {
            return Ok(b);
        }
        self.templates
            .iter()
            .find(|(p, _)| uri.starts_with(p.as_str()))
            .map(|(_, b)| b.as_str())
            .ok_or_else(|| RouteError::UnknownResource(uri.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefixes_and_splits() {
        let ns = Namespace::new(".");
        let known = |b: &str| b == "fs" || b == "git";
        assert_eq!(ns.prefix("fs", "read"), "fs.read");
        assert_eq!(ns.split("fs.read.file", known), Some(("fs", "read.file")));
        assert_eq!(ns.split("db.query", known), None);
        assert_eq!(ns.split("fs.", known), None);
        assert_eq!(ns.split("plain", known), None);
        assert_eq!(
            route_tool(&ns, "nope.x", known),
            Err(RouteError::UnknownTool("nope.x".into()))
        );
        let ns2 = Namespace::new("__");
        assert_eq!(ns2.split("git__log", known), Some(("git", "log")));
    }

    #[test]
    fn prefixes_listed_names() {
        let ns = Namespace::new(".");
        let mut tools = vec![json!({"name":"echo","x":1}), json!({"noname":true})];
        ns.prefix_names("a", &mut tools);
        assert_eq!(tools[0]["name"], "a.echo");
        assert_eq!(tools[0]["x"], 1);
        assert_eq!(tools[1], json!({"noname":true}));
    }

    #[test]
    fn routes_resources_by_uri_then_template() {
        let mut r = ResourceRoutes::default();
        r.learn_resources("a", &[json!({"uri":"file:///x"}), json!({"uri":"mem://1"})]);
        r.learn_resources("b", &[json!({"uri":"mem://1"})]);
        r.learn_templates("b", &[json!({"uriTemplate":"db://rows/{id}"})]);
        r.learn_templates("c", &[json!({"uriTemplate":"db://{table}"})]);
        assert_eq!(r.route("file:///x"), Ok("a"));
        assert_eq!(r.route("mem://1"), Ok("a"), "first backend wins");
        assert_eq!(r.route("db://rows/7"), Ok("b"), "longest template prefix");
        assert_eq!(r.route("db://users"), Ok("c"));
        assert!(matches!(
            r.route("http://nope"),
            Err(RouteError::UnknownResource(_))
        ));
        r.forget("a");
        assert!(r.route("file:///x").is_err());
    }
}
