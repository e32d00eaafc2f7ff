//! `labelSelector` and `fieldSelector` query parameters, as the API server
//! parses and applies them.

use serde_json::{Map, Value};

/// Why a selector was rejected (the API server answers 400 BadRequest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(String);

fn error(msg: impl Into<String>) -> SelectorError {
    SelectorError(msg.into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A label selector: every requirement must hold (comma = AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<(String, Op)>);

impl LabelSelector {
    /// Parses `a=b,c!=d,e,!f,g in (h,i),j notin (k)`; `==` is `=`.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let mut reqs = Vec::new();
        for term in split_terms(text)? {
            reqs.push(parse_requirement(term)?);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether an object with these `metadata.labels` is selected.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.0.iter().all(|(key, op)| {
            let value = labels.and_then(|l| l.get(key)).and_then(Value::as_str);
            match (op, value) {
                (Op::Exists, v) => v.is_some(),
                (Op::DoesNotExist, v) => v.is_none(),
                (Op::Equals(want), Some(v)) => v == want,
                (Op::In(set), Some(v)) => set.iter().any(|w| w == v),
                // A missing label is "not equal" and "not in".
                (Op::NotEquals(want), v) => v != Some(want.as_str()),
                (Op::NotIn(set), v) => v.is_none_or(|v| !set.iter().any(|w| w == v)),
                (Op::Equals(_) | Op::In(_), None) => false,
            }
        })
    }
}

/// Splits at commas outside parentheses; empty text is no requirement.
fn split_terms(text: &str) -> Result<Vec<&str>, SelectorError> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(error(format!(
                "unbalanced parentheses in selector {text:?}"
            )));
        }
    }
    if depth != 0 {
        return Err(error(format!(
            "unbalanced parentheses in selector {text:?}"
        )));
    }
    terms.push(&text[start..]);
    let terms: Vec<&str> = terms.into_iter().map(str::trim).collect();
    if terms == [""] {
        return Ok(Vec::new());
    }
    if terms.iter().any(|t| t.is_empty()) {
        return Err(error(format!("empty requirement in selector {text:?}")));
    }
    Ok(terms)
}

fn parse_requirement(term: &str) -> Result<(String, Op), SelectorError> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok((label_key(key.trim())?, Op::DoesNotExist));
    }
    if let Some(open) = term.find('(') {
        return parse_set(term, open);
    }
    for (sep, make) in [
        ("!=", Op::NotEquals as fn(String) -> Op),
        ("==", Op::Equals),
        ("=", Op::Equals),
    ] {
        if let Some((key, value)) = term.split_once(sep) {
            return Ok((label_key(key.trim())?, make(label_value(value.trim())?)));
        }
    }
    Ok((label_key(term)?, Op::Exists))
}

/// `key in (a,b)` or `key notin (a,b)`.
fn parse_set(term: &str, open: usize) -> Result<(String, Op), SelectorError> {
    let head: Vec<&str> = term[..open].split_whitespace().collect();
    let values = term[open + 1..]
        .strip_suffix(')')
        .ok_or_else(|| error(format!("expected ')' at the end of {term:?}")))?;
    let values = values
        .split(',')
        .map(|v| label_value(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    match head.as_slice() {
        [key, "in"] => Ok((label_key(key)?, Op::In(values))),
        [key, "notin"] => Ok((label_key(key)?, Op::NotIn(values))),
        _ => Err(error(format!(
            "expected 'KEY in (…)' or 'KEY notin (…)', got {term:?}"
        ))),
    }
}

/// A qualified name: optional DNS prefix and `/`, then ≤ 63 characters.
fn label_key(key: &str) -> Result<String, SelectorError> {
    let name = match key.split_once('/') {
        Some((prefix, name)) if !prefix.is_empty() && prefix.len() <= 253 => name,
        Some(_) => return Err(error(format!("invalid label key {key:?}"))),
        None => key,
    };
    if name.is_empty() || !label_chars(name) {
        return Err(error(format!("invalid label key {key:?}")));
    }
    Ok(key.to_string())
}

/// Empty, or ≤ 63 alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn label_value(value: &str) -> Result<String, SelectorError> {
    if value.is_empty() || label_chars(value) {
        Ok(value.to_string())
    } else {
        Err(error(format!("invalid label value {value:?}")))
    }
}

fn label_chars(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// A field selector on Node: `metadata.name` and `spec.unschedulable` (the
/// fields the API server supports for nodes), with `=`, `==` or `!=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, SelectorError> {
        let mut reqs = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(error(format!("invalid field selector: {term:?}")));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "spec.unschedulable") {
                return Err(error(format!("field label not supported: {field}")));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, node: &Value) -> bool {
        self.0.iter().all(|(field, equal, want)| {
            let value = match field.as_str() {
                "metadata.name" => node["metadata"]["name"].as_str().unwrap_or("").to_string(),
                _ => node["spec"]["unschedulable"]
                    .as_bool()
                    .unwrap_or(false)
                    .to_string(),
            };
            (value == *want) == *equal
        })
    }
}

/// A label and a field selector together, as a list or watch gets them.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selector {
    pub fn matches(&self, obj: &Value) -> bool {
        self.fields.matches(obj) && self.labels.matches(obj["metadata"]["labels"].as_object())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn selects(selector: &str, l: Value) -> bool {
        LabelSelector::parse(selector)
            .unwrap()
            .matches(Some(&labels(l)))
    }

    #[test]
    fn label_selector_operators() {
        let l = json!({"role": "worker", "zone": "a", "kubernetes.io/os": "linux"});
        assert!(selects("role=worker", l.clone()));
        assert!(selects("role==worker", l.clone()));
        assert!(!selects("role=master", l.clone()));
        assert!(selects("role!=master", l.clone()));
        assert!(
            selects("gpu!=yes", l.clone()),
            "missing label is 'not equal'"
        );
        assert!(selects("zone", l.clone()));
        assert!(!selects("!zone", l.clone()));
        assert!(selects("!gpu", l.clone()));
        assert!(selects("zone in (a, b)", l.clone()));
        assert!(!selects("zone notin (a,b)", l.clone()));
        assert!(selects("gpu notin (yes)", l.clone()));
        assert!(!selects("gpu in (yes)", l.clone()));
        assert!(selects(
            "kubernetes.io/os=linux,zone in (a),role",
            l.clone()
        ));
        assert!(!selects("kubernetes.io/os=linux,zone in (b)", l.clone()));
        assert!(selects("", l.clone()), "empty selector selects everything");
        assert!(selects("role=worker", json!({"role": "worker"})));
    }

    #[test]
    fn label_selector_without_labels() {
        let sel = LabelSelector::parse("a!=b,!c").unwrap();
        assert!(sel.matches(None));
        assert!(!LabelSelector::parse("a").unwrap().matches(None));
    }

    #[test]
    fn label_selector_rejects_bad_syntax() {
        for bad in [
            "a in (b",
            "a,,b",
            "a=b c",
            "in (a)",
            "a foo (b)",
            "-a=b",
            "a=(b)",
            "a/=b",
            "=b",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn field_selector_on_nodes() {
        let node = json!({"metadata": {"name": "n1"}, "spec": {}});
        let parse = |s| FieldSelector::parse(s).unwrap();
        assert!(parse("metadata.name=n1").matches(&node));
        assert!(parse("metadata.name==n1").matches(&node));
        assert!(!parse("metadata.name=n2").matches(&node));
        assert!(parse("metadata.name!=n2").matches(&node));
        assert!(parse("spec.unschedulable=false").matches(&node));
        assert!(parse("").matches(&node));
        let err = FieldSelector::parse("status.phase=Running").unwrap_err();
        assert_eq!(err.to_string(), "field label not supported: status.phase");
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
