//! The small HTTP vocabulary every route uses: a reply value, ARM error bodies, query parsing.

use serde_json::{Value, json};

/// A response before it becomes a hyper response. `reset` asks the server to drop the connection
/// without answering (the connection-reset fault).
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub reset: bool,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: value.to_string().into_bytes(),
            reset: false,
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            ..Reply::default()
        }
    }

    pub fn reset() -> Reply {
        Reply {
            status: 0,
            reset: true,
            ..Reply::default()
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// ARM's error envelope (common-types ErrorResponse): `{"error":{"code","message"}}`.
pub fn arm_error(status: u16, code: &str, message: impl Into<String>) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"code": code, "message": message.into()}}),
    )
}

/// Query parameters, decoded (`+` is a space, as in the docs' `$filter=atScope()+and+...`).
pub fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn query_value<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Percent-encodes a query value the way a client would.
pub fn encode_query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
