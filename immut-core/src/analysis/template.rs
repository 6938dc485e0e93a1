//! Query templates: a PromQL query with `{{placeholder}}`s that name the deployment. Double
//! braces, because single ones are PromQL's own label matchers.

use super::provider::AnalysisContext;

/// The placeholders a query may use.
pub const PLACEHOLDERS: [&str; 5] = ["service", "release", "version", "deployment", "instances"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Service,
    Release,
    Version,
    Deployment,
    Instances,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Placeholder(Placeholder),
}

/// What one side of a measurement renders: the release under analysis, or the stable one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Side<'a> {
    pub service: &'a str,
    pub release: Option<&'a str>,
    pub version: Option<&'a str>,
    pub deployment: Option<&'a str>,
    pub addresses: &'a [String],
    /// Which side, for the messages: `canary` or `stable`.
    pub name: &'static str,
}

impl<'a> Side<'a> {
    /// The release under analysis.
    pub fn canary(c: &'a AnalysisContext) -> Self {
        Side {
            service: &c.service,
            release: c.release.as_ref().map(|r| r.as_str()),
            version: c.version.as_deref(),
            deployment: c.deployment.as_ref().map(|d| d.as_str()),
            addresses: &c.addresses,
            name: "canary",
        }
    }

    /// The stable release, in the same deployment.
    pub fn stable(c: &'a AnalysisContext) -> Self {
        Side {
            service: &c.service,
            release: c.stable_release.as_ref().map(|r| r.as_str()),
            version: c.stable_version.as_deref(),
            deployment: c.deployment.as_ref().map(|d| d.as_str()),
            addresses: &c.stable_addresses,
            name: "stable",
        }
    }
}

/// A parsed query template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueryTemplate {
    parts: Vec<Part>,
}

impl QueryTemplate {
    /// Parses `text`; the error names the unknown or unclosed placeholder and lists the known ones.
    pub fn parse(text: &str) -> Result<Self, String> {
        let known = PLACEHOLDERS.map(|p| format!("{{{{{p}}}}}")).join(", ");
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| {
                format!("the placeholder at {:?} is not closed with }}}}; the known ones are {known}", &rest[start..])
            })?;
            let name = after[..end].trim();
            let placeholder = match name {
                "service" => Placeholder::Service,
                "release" => Placeholder::Release,
                "version" => Placeholder::Version,
                "deployment" => Placeholder::Deployment,
                "instances" => Placeholder::Instances,
                other => return Err(format!("unknown placeholder {{{{{other}}}}}; the known ones are {known}")),
            };
            parts.push(Part::Placeholder(placeholder));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(QueryTemplate { parts })
    }

    /// The query for `side`. Values are escaped for a double-quoted PromQL string, and
    /// `{{instances}}` is a regex alternation of the addresses with regex metacharacters escaped
    /// (for `instance=~"{{instances}}"`). A placeholder whose value is unknown is an error.
    pub fn render(&self, side: &Side<'_>) -> Result<String, String> {
        let mut query = String::new();
        for part in &self.parts {
            let missing = |what: &str| format!("the query needs the {} {what}, which is not known", side.name);
            match part {
                Part::Text(text) => query.push_str(text),
                Part::Placeholder(Placeholder::Service) => query.push_str(&quoted(side.service)),
                Part::Placeholder(Placeholder::Release) => {
                    query.push_str(&quoted(side.release.ok_or_else(|| missing("release id"))?))
                }
                Part::Placeholder(Placeholder::Version) => {
                    query.push_str(&quoted(side.version.ok_or_else(|| missing("artifact version"))?))
                }
                Part::Placeholder(Placeholder::Deployment) => {
                    query.push_str(&quoted(side.deployment.ok_or_else(|| missing("deployment id"))?))
                }
                Part::Placeholder(Placeholder::Instances) => {
                    if side.addresses.is_empty() {
                        return Err(missing("instances' addresses"));
                    }
                    let alternation: Vec<String> = side.addresses.iter().map(|a| regex_escaped(a)).collect();
                    query.push_str(&quoted(&alternation.join("|")));
                }
            }
        }
        Ok(query)
    }
}

/// Escapes RE2's metacharacters, so that an address matches only itself.
fn regex_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes what a double-quoted PromQL string would otherwise end or interpret.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(addresses: &[String]) -> Side<'_> {
        Side {
            service: "web",
            release: Some("r1"),
            version: Some("1.2.0"),
            deployment: None,
            addresses,
            name: "canary",
        }
    }

    #[test]
    fn placeholders_are_rendered_and_addresses_escaped_as_a_regex_in_a_promql_string() {
        let t = QueryTemplate::parse(
            r#"sum(rate(x{service="{{service}}",release="{{ release }}",v="{{version}}",instance=~"{{instances}}"}[1m]))"#,
        )
        .unwrap();
        let addresses = vec!["127.0.0.1:80".to_owned(), "[::1]:81".to_owned()];
        assert_eq!(
            t.render(&side(&addresses)).unwrap(),
            r#"sum(rate(x{service="web",release="r1",v="1.2.0",instance=~"127\\.0\\.0\\.1:80|\\[::1\\]:81"}[1m]))"#
        );
    }

    #[test]
    fn unknown_unclosed_or_unknowable_placeholders_are_errors() {
        let e = QueryTemplate::parse("up{job=\"{{job}}\"}").unwrap_err();
        assert!(e.contains("unknown placeholder {{job}}") && e.contains("{{instances}}"), "{e}");
        let e = QueryTemplate::parse("up{job=\"{{service\"}").unwrap_err();
        assert!(e.contains("not closed"), "{e}");
        let t = QueryTemplate::parse("x{d=\"{{deployment}}\"}").unwrap();
        assert!(t.render(&side(&[])).unwrap_err().contains("canary deployment id"));
        let t = QueryTemplate::parse("x{instance=~\"{{instances}}\"}").unwrap();
        assert!(t.render(&side(&[])).unwrap_err().contains("addresses"));
        assert_eq!(QueryTemplate::parse("vector(1)").unwrap().render(&side(&[])).unwrap(), "vector(1)");
    }

    #[test]
    fn a_quote_in_a_value_cannot_end_the_string() {
        let mut s = side(&[]);
        s.service = "we\"b\\";
        let t = QueryTemplate::parse("x{s=\"{{service}}\"}").unwrap();
        assert_eq!(t.render(&s).unwrap(), r#"x{s="we\"b\\"}"#);
    }
}
