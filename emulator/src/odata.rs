//! The OData pieces Graph lookups use: string literals (`'O''Brien'`: a doubled quote is one quote
//! of data) and `$filter` clauses of the form `property eq 'literal' [and ...]`. Anything else is
//! refused the way Graph refuses it, with the position of the problem.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    pub property: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A 400 `BadRequest` "Invalid filter clause: ...".
    #[error("{0}")]
    Syntax(String),
    /// A 400 `Request_UnsupportedQuery`: valid OData that Graph does not serve without advanced
    /// query parameters.
    #[error("{0}")]
    Unsupported(String),
}

/// Parses a string literal at the start of `text` (which must begin with `'`). Returns the value
/// and the number of bytes consumed, or the byte offset of the opening quote when unterminated.
pub fn parse_literal(text: &str) -> Result<(String, usize), usize> {
    let mut value = String::new();
    let mut chars = text.char_indices().peekable();
    match chars.next() {
        Some((_, '\'')) => {}
        _ => return Err(0),
    }
    while let Some((index, c)) = chars.next() {
        if c == '\'' {
            if let Some((_, '\'')) = chars.peek() {
                chars.next();
                value.push('\'');
            } else {
                return Ok((value, index + 1));
            }
        } else {
            value.push(c);
        }
    }
    Err(0)
}

/// Writes a value as an OData string literal (the inverse of `parse_literal`). Only tests and
/// fuzz targets write literals: the emulator reads them.
#[cfg(any(test, feature = "internals"))]
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn syntax_error(c: char, position: usize, filter: &str) -> FilterError {
    FilterError::Syntax(format!(
        "Syntax error: character '{c}' is not valid at position {position} in '{filter}'."
    ))
}

pub fn parse_filter(filter: &str) -> Result<Vec<Clause>, FilterError> {
    let mut clauses = Vec::new();
    let mut pos = 0;
    let bytes_at = |pos: usize| filter[pos..].chars().next();
    let skip_ws = |pos: &mut usize| {
        while let Some(c) = filter[*pos..].chars().next().filter(|c| c.is_whitespace()) {
            *pos += c.len_utf8();
        }
    };
    let word = |pos: &mut usize| -> String {
        let start = *pos;
        while let Some(c) = filter[*pos..]
            .chars()
            .next()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '/')
        {
            *pos += c.len_utf8();
        }
        filter[start..*pos].to_string()
    };
    loop {
        skip_ws(&mut pos);
        let property = word(&mut pos);
        if property.is_empty() {
            return Err(match bytes_at(pos) {
                Some(c) => syntax_error(c, pos, filter),
                None => FilterError::Syntax(format!(
                    "Expression expected at position {pos} in '{filter}'."
                )),
            });
        }
        skip_ws(&mut pos);
        let operator = word(&mut pos);
        match operator.as_str() {
            "eq" => {}
            "ne" | "gt" | "ge" | "lt" | "le" | "in" | "startswith" | "endswith" => {
                return Err(FilterError::Unsupported(format!(
                    "Unsupported or invalid query filter clause specified for property '{property}' of resource 'DirectoryObject'."
                )));
            }
            "" => {
                return Err(match bytes_at(pos) {
                    Some('(') => FilterError::Unsupported(format!(
                        "Unsupported Query: function '{property}' is not supported here."
                    )),
                    Some(c) => syntax_error(c, pos, filter),
                    None => FilterError::Syntax(format!(
                        "Expression expected at position {pos} in '{filter}'."
                    )),
                });
            }
            other => {
                return Err(FilterError::Syntax(format!(
                    "Syntax error: '{other}' at position {pos} in '{filter}' is not an operator."
                )));
            }
        }
        skip_ws(&mut pos);
        match bytes_at(pos) {
            Some('\'') => {}
            Some(c) => return Err(syntax_error(c, pos, filter)),
            None => {
                return Err(FilterError::Syntax(format!(
                    "Expression expected at position {pos} in '{filter}'."
                )));
            }
        }
        let (value, consumed) = parse_literal(&filter[pos..]).map_err(|_| {
            FilterError::Syntax(format!(
                "There is an unterminated string literal at position {pos} in '{filter}'."
            ))
        })?;
        pos += consumed;
        clauses.push(Clause { property, value });
        skip_ws(&mut pos);
        match bytes_at(pos) {
            None => return Ok(clauses),
            Some(c) => {
                let at = pos;
                let keyword = word(&mut pos);
                if keyword != "and" || !filter[pos..].starts_with(char::is_whitespace) {
                    return Err(syntax_error(c, at, filter));
                }
            }
        }
    }
}

/// A key segment: `('value')` or `(name='value')`. Returns (name, value).
pub fn parse_key(segment: &str) -> Option<(Option<String>, String)> {
    let inner = segment.strip_prefix('(')?.strip_suffix(')')?;
    let (name, literal) = match inner.find('=') {
        Some(eq) if !inner[..eq].contains('\'') => {
            (Some(inner[..eq].trim().to_string()), inner[eq + 1..].trim())
        }
        _ => (None, inner.trim()),
    };
    let (value, consumed) = parse_literal(literal).ok()?;
    (consumed == literal.len()).then_some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubled_quotes_are_one_quote_of_data() {
        assert_eq!(parse_literal("'O''Brien'"), Ok(("O'Brien".to_string(), 10)));
        assert_eq!(parse_literal("''''"), Ok(("'".to_string(), 4)));
        assert_eq!(parse_literal("'open"), Err(0));
    }

    #[test]
    fn a_hostile_name_round_trips_through_quote_and_parse() {
        for name in [
            "Team' or displayName eq 'x",
            "'",
            "''",
            "a)b(c",
            "100% ✓ & co",
            " padded ",
        ] {
            let clauses = parse_filter(&format!("displayName eq {}", quote(name))).unwrap();
            assert_eq!(
                clauses,
                vec![Clause {
                    property: "displayName".into(),
                    value: name.into()
                }]
            );
        }
    }

    #[test]
    fn an_unescaped_quote_is_a_syntax_error_with_its_position() {
        let err = parse_filter("displayName eq 'O'Brien'").unwrap_err();
        assert_eq!(err, FilterError::Syntax("Syntax error: character 'B' is not valid at position 18 in 'displayName eq 'O'Brien''.".into()));
        assert!(
            matches!(parse_filter("displayName eq 'open"), Err(FilterError::Syntax(m)) if m.contains("unterminated"))
        );
        assert!(matches!(
            parse_filter("displayName ne 'x'"),
            Err(FilterError::Unsupported(_))
        ));
        assert!(parse_filter("").is_err());
        assert!(parse_filter("displayName eq x").is_err());
    }

    #[test]
    fn clauses_join_with_and() {
        let clauses = parse_filter("mail eq 'a@b.c' and displayName eq 'A'").unwrap();
        assert_eq!(clauses.len(), 2);
    }

    #[test]
    fn key_segments_parse_with_and_without_a_name() {
        assert_eq!(parse_key("('$x@y.com')"), Some((None, "$x@y.com".into())));
        assert_eq!(
            parse_key("(appId='abc')"),
            Some((Some("appId".into()), "abc".into()))
        );
        assert_eq!(parse_key("(appId='a'b')"), None);
    }
}
