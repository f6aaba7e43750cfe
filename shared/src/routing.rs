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

/// Resource routes (URIs and template prefixes together) one session remembers, at
/// most. A listing past it is still answered whole; the routes beyond are not kept
/// (logged), and a read of such a URI is answered "unknown resource". Bounds what a
/// backend's listings can make the gateway hold per session.
pub const MAX_RESOURCE_ROUTES: usize = 65_536;

/// Resource URI → backend, learned from `resources/list` and
/// `resources/templates/list` answers. Each complete listing of a backend replaces
/// what was learned from that backend before (a URI it stopped listing is no longer
/// routed to it).
#[derive(Debug, Default, Clone)]
pub struct ResourceRoutes {
    exact: HashMap<String, String>,
    /// (literal prefix of a URI template, backend), longest first.
    templates: Vec<(String, String)>,
    /// A listing went past [`MAX_RESOURCE_ROUTES`] (logged once).
    warned_full: bool,
}

impl ResourceRoutes {
    /// Forgets the URIs learned from `backend` (before its new complete listing).
    pub fn forget_resources(&mut self, backend: &str) {
        self.exact.retain(|_, b| b != backend);
    }

    /// Forgets the template prefixes learned from `backend`.
    pub fn forget_templates(&mut self, backend: &str) {
        self.templates.retain(|(_, b)| b != backend);
    }

    fn has_room(&mut self) -> bool {
        if self.exact.len() + self.templates.len() < MAX_RESOURCE_ROUTES {
            return true;
        }
        if !self.warned_full {
            self.warned_full = true;
            log::warn!(
                "more than {MAX_RESOURCE_ROUTES} resources and templates listed in one session; the rest are not routed"
            );
        }
        false
    }

    /// Remembers the URIs of a `resources/list` answer. A URI another backend listed
    /// first stays with that one.
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
                if !self.has_room() {
                    return;
                }
                self.exact.insert(uri.into(), backend.into());
            }
        }
    }

    /// Remembers the templates of a `resources/templates/list` answer (one look-up
    /// per template, one sort per answer).
    pub fn learn_templates(&mut self, backend: &str, templates: &[Value]) {
        let mut known: std::collections::HashSet<String> =
            self.templates.iter().map(|(p, _)| p.clone()).collect();
        for t in templates {
            if let Some(tpl) = t.get("uriTemplate").and_then(Value::as_str) {
                let prefix = tpl.split('{').next().unwrap_or("");
                if prefix.is_empty() || known.contains(prefix) {
                    continue;
                }
                if !self.has_room() {
                    break;
                }
                known.insert(prefix.to_string());
                self.templates.push((prefix.to_string(), backend.into()));
            }
        }
        self.templates.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
    }

    /// Forgets everything learned from one backend.
    pub fn forget(&mut self, backend: &str) {
        self.forget_resources(backend);
        self.forget_templates(backend);
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

    #[test]
    fn a_new_listing_replaces_the_backends_routes_and_the_table_is_bounded() {
        let mut r = ResourceRoutes::default();
        r.learn_resources("a", &[json!({"uri":"x://u"}), json!({"uri":"x://v"})]);
        // `a` stops listing x://u and `b` starts: forgotten first, then learned.
        r.forget_resources("a");
        r.forget_resources("b");
        r.learn_resources("a", &[json!({"uri":"x://v"})]);
        r.learn_resources("b", &[json!({"uri":"x://u"})]);
        assert_eq!(r.route("x://u"), Ok("b"));
        assert_eq!(r.route("x://v"), Ok("a"));
        // Listings that keep naming new URIs do not grow the table past its bound.
        for round in 0..3 {
            let page: Vec<Value> = (0..MAX_RESOURCE_ROUTES)
                .map(|i| json!({"uri": format!("n://{round}/{i}")}))
                .collect();
            r.forget_resources("n");
            r.learn_resources("n", &page);
            assert!(r.exact.len() + r.templates.len() <= MAX_RESOURCE_ROUTES);
            assert_eq!(r.route(&format!("n://{round}/0")), Ok("n"));
        }
        let tpls: Vec<Value> = (0..MAX_RESOURCE_ROUTES)
            .map(|i| json!({"uriTemplate": format!("t://{i}/{{id}}")}))
            .collect();
        r.forget_templates("t");
        r.learn_templates("t", &tpls);
        assert!(r.exact.len() + r.templates.len() <= MAX_RESOURCE_ROUTES);
        // Duplicates within one answer are kept once.
        let mut d = ResourceRoutes::default();
        d.learn_templates(
            "t",
            &[
                json!({"uriTemplate":"d://{a}"}),
                json!({"uriTemplate":"d://{b}"}),
            ],
        );
        assert_eq!(d.templates.len(), 1);
    }
}
