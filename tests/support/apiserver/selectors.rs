//! `labelSelector` (the full set-based syntax) and `fieldSelector` (`metadata.name`,
//! `metadata.namespace`, as every resource supports) for list and watch.

use serde_json::Value;

use super::status::ApiError;

#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector` plus `fieldSelector`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

/// Splits on commas outside parentheses: `a in (x,y),b` → [`a in (x,y)`, `b`].
fn split_terms(s: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' => {
                depth -= 1;
                current.push(c);
            }
            ',' if depth == 0 => terms.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    terms.push(current);
    terms
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

fn parse_term(term: &str, set_based: bool) -> Result<Requirement, ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {term:?}"));
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            k.trim().to_owned(),
            v.trim().to_owned(),
        ));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(
            k.trim().to_owned(),
            v.trim().to_owned(),
        ));
    }
    if !set_based {
        return Err(bad());
    }
    if let Some((k, rest)) = term.split_once(" notin ") {
        return Ok(Requirement::NotIn(
            k.trim().to_owned(),
            parse_set(rest).ok_or_else(bad)?,
        ));
    }
    if let Some((k, rest)) = term.split_once(" in ") {
        return Ok(Requirement::In(
            k.trim().to_owned(),
            parse_set(rest).ok_or_else(bad)?,
        ));
    }
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(k.trim().to_owned()));
    }
    if term.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(Requirement::Exists(term.to_owned()))
}

impl Selector {
    pub fn parse(
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, ApiError> {
        let labels = split_terms(label_selector.unwrap_or(""))
            .iter()
            .map(|t| parse_term(t, true))
            .collect::<Result<Vec<_>, _>>()?;
        let fields = split_terms(field_selector.unwrap_or(""))
            .iter()
            .map(|t| parse_term(t, false))
            .collect::<Result<Vec<_>, _>>()?;
        for f in &fields {
            let (Requirement::Equals(key, _) | Requirement::NotEquals(key, _)) = f else {
                continue;
            };
            if key != "metadata.name" && key != "metadata.namespace" {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {key} (the stand-in supports metadata.name and metadata.namespace)"
                )));
            }
        }
        Ok(Self { labels, fields })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let label = |key: &str| {
            object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(key))
                .and_then(Value::as_str)
        };
        let field = |key: &str| {
            let pointer = format!("/{}", key.replace('.', "/"));
            object
                .pointer(&pointer)
                .and_then(Value::as_str)
                .or(Some(""))
        };
        self.labels.iter().all(|r| holds(r, label)) && self.fields.iter().all(|r| holds(r, field))
    }
}

fn holds<'a>(requirement: &Requirement, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
    match requirement {
        Requirement::Equals(k, v) => lookup(k) == Some(v.as_str()),
        Requirement::NotEquals(k, v) => lookup(k) != Some(v.as_str()),
        Requirement::In(k, vs) => lookup(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => lookup(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Requirement::Exists(k) => lookup(k).is_some(),
        Requirement::DoesNotExist(k) => lookup(k).is_none(),
    }
}
