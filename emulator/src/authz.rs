//! Azure RBAC as ARM evaluates it: role assignments at or above the scope whose role grants the
//! action, and ABAC conditions (version 2.0) on those assignments (facts §F.2).
//!
//! The condition language is parsed for the subset Azure documents for role-assignment
//! delegation: `AND`/`OR`/`NOT`/`!`, parentheses, `ActionMatches{'...'}`, and comparisons
//! `@Request[...]`/`@Resource[...]` with `GuidEquals`, `GuidNotEquals`, `StringEquals`,
//! `StringEqualsIgnoreCase`, `StringNotEquals`, `StringNotEqualsIgnoreCase`, optionally
//! quantified by `ForAnyOfAnyValues:` / `ForAllOfAnyValues:` / `ForAnyOfAllValues:` /
//! `ForAllOfAllValues:`. A condition that does not parse denies: failing closed is the only safe
//! reading of a grant nobody can interpret.

use crate::state::{RoleDefinition, World, is_at_or_above, role_guid};

/// Attributes of a role assignment a condition may read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignmentAttributes {
    pub role_definition_id: Option<String>,
    pub principal_id: Option<String>,
    pub principal_type: Option<String>,
}

impl AssignmentAttributes {
    fn get(&self, attribute: &str) -> Vec<String> {
        let name = attribute.rsplit(':').next().unwrap_or(attribute);
        let value = if name.eq_ignore_ascii_case("RoleDefinitionId") {
            self.role_definition_id.as_deref().and_then(role_guid)
        } else if name.eq_ignore_ascii_case("PrincipalId") {
            self.principal_id.clone()
        } else if name.eq_ignore_ascii_case("PrincipalType") {
            self.principal_type.clone()
        } else {
            None
        };
        value.into_iter().collect()
    }
}

/// One access check.
#[derive(Clone, Debug, Default)]
pub struct AccessRequest {
    pub action: String,
    pub scope: String,
    pub request: AssignmentAttributes,
    pub resource: AssignmentAttributes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No assignment grants the action.
    Deny,
    /// An assignment grants the action but its condition is not fulfilled.
    DenyByCondition,
}

/// `*` matches any run of characters; comparison ignores case, as ARM's does.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    let (pattern, action) = (pattern.to_ascii_lowercase(), action.to_ascii_lowercase());
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == action;
    }
    let mut rest = action.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

pub fn role_grants(definition: &RoleDefinition, action: &str) -> bool {
    definition.actions.iter().any(|p| action_matches(p, action))
        && !definition
            .not_actions
            .iter()
            .any(|p| action_matches(p, action))
}

/// Decides whether `principal_id` (and the groups it is in) may perform the request.
pub fn authorize(world: &World, principal_id: &str, request: &AccessRequest) -> Decision {
    let principals = world.principal_and_groups(principal_id);
    let mut blocked_by_condition = false;
    for assignment in world.role_assignments.of_principals(&principals) {
        if !principals
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&assignment.principal_id))
            || !is_at_or_above(&assignment.scope, &request.scope)
        {
            continue;
        }
        let Some(definition) = world.role_definition(&assignment.role_definition_guid) else {
            continue;
        };
        if !role_grants(definition, &request.action) {
            continue;
        }
        match &assignment.condition {
            None => return Decision::Allow,
            Some(condition) => {
                if evaluate(condition, request).unwrap_or(false) {
                    return Decision::Allow;
                }
                blocked_by_condition = true;
            }
        }
    }
    if blocked_by_condition {
        Decision::DenyByCondition
    } else {
        Decision::Deny
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
    ActionMatches(String),
    Compare {
        source: Source,
        attribute: String,
        quantifier: Quantifier,
        operator: Operator,
        values: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Request,
    Resource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantifier {
    Single,
    AnyOfAny,
    AllOfAny,
    AnyOfAll,
    AllOfAll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    GuidEquals,
    GuidNotEquals,
    StringEquals,
    StringEqualsIgnoreCase,
    StringNotEquals,
    StringNotEqualsIgnoreCase,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("condition does not parse at position {position}: {reason}")]
pub struct ConditionParse {
    pub position: usize,
    pub reason: String,
}

/// Parses and evaluates in one go.
pub fn evaluate(condition: &str, request: &AccessRequest) -> Result<bool, ConditionParse> {
    Ok(eval(&parse_condition(condition)?, request))
}

fn eval(condition: &Condition, request: &AccessRequest) -> bool {
    match condition {
        Condition::And(a, b) => eval(a, request) && eval(b, request),
        Condition::Or(a, b) => eval(a, request) || eval(b, request),
        Condition::Not(a) => !eval(a, request),
        Condition::ActionMatches(pattern) => action_matches(pattern, &request.action),
        Condition::Compare {
            source,
            attribute,
            quantifier,
            operator,
            values,
        } => {
            let actual = match source {
                Source::Request => request.request.get(attribute),
                Source::Resource => request.resource.get(attribute),
            };
            compare(&actual, *quantifier, *operator, values)
        }
    }
}

fn op_holds(operator: Operator, left: &str, right: &str) -> bool {
    let guid = |s: &str| uuid::Uuid::parse_str(s.trim()).ok();
    match operator {
        Operator::GuidEquals => guid(left).is_some() && guid(left) == guid(right),
        Operator::GuidNotEquals => guid(left) != guid(right),
        Operator::StringEquals => left == right,
        Operator::StringEqualsIgnoreCase => left.eq_ignore_ascii_case(right),
        Operator::StringNotEquals => left != right,
        Operator::StringNotEqualsIgnoreCase => !left.eq_ignore_ascii_case(right),
    }
}

fn compare(
    actual: &[String],
    quantifier: Quantifier,
    operator: Operator,
    values: &[String],
) -> bool {
    // A missing attribute fulfils no comparison: an assignment request without principalType
    // cannot satisfy a condition on PrincipalType (what Terraform's docs warn about).
    if actual.is_empty() || values.is_empty() {
        return false;
    }
    match quantifier {
        Quantifier::Single | Quantifier::AnyOfAny => actual
            .iter()
            .any(|a| values.iter().any(|v| op_holds(operator, a, v))),
        Quantifier::AllOfAny => actual
            .iter()
            .all(|a| values.iter().any(|v| op_holds(operator, a, v))),
        Quantifier::AnyOfAll => actual
            .iter()
            .any(|a| values.iter().all(|v| op_holds(operator, a, v))),
        Quantifier::AllOfAll => actual
            .iter()
            .all(|a| values.iter().all(|v| op_holds(operator, a, v))),
    }
}

/// The deepest condition tree accepted. The parser, the evaluator and dropping the tree all
/// recurse once per level, so an unbounded depth (`((((…` or `a AND b AND …` in a request body)
/// would overflow the stack and abort the emulator; real conditions are a few levels deep.
pub const MAX_CONDITION_DEPTH: usize = 64;

pub fn parse_condition(text: &str) -> Result<Condition, ConditionParse> {
    let mut parser = Parser { text, pos: 0 };
    let (condition, _) = parser.or(0)?;
    parser.skip_ws();
    if parser.pos != text.len() {
        return Err(parser.error("unexpected text after the condition"));
    }
    Ok(condition)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &str) -> ConditionParse {
        ConditionParse {
            position: self.pos,
            reason: reason.to_string(),
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        let rest = self.rest();
        if rest.len() >= token.len()
            && rest.is_char_boundary(token.len())
            && rest[..token.len()].eq_ignore_ascii_case(token)
        {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn eat_keyword(&mut self, word: &str) -> bool {
        let start = self.pos;
        if self.eat(word) {
            let next = self.rest().chars().next();
            if next.is_none_or(|c| !c.is_ascii_alphanumeric()) {
                return true;
            }
        }
        self.pos = start;
        false
    }

    // Each returns the tree and its height; `depth` is how deep the caller already is.
    fn deeper(&self, depth: usize) -> Result<usize, ConditionParse> {
        if depth >= MAX_CONDITION_DEPTH {
            return Err(self.error("the condition is nested too deeply"));
        }
        Ok(depth + 1)
    }

    fn or(&mut self, depth: usize) -> Result<(Condition, usize), ConditionParse> {
        let (mut left, mut height) = self.and(depth)?;
        while self.eat_keyword("OR") || self.eat("||") {
            let (right, right_height) = self.and(depth)?;
            height = self.deeper(depth + height.max(right_height))? - depth;
            left = Condition::Or(Box::new(left), Box::new(right));
        }
        Ok((left, height))
    }

    fn and(&mut self, depth: usize) -> Result<(Condition, usize), ConditionParse> {
        let (mut left, mut height) = self.unary(depth)?;
        while self.eat_keyword("AND") || self.eat("&&") {
            let (right, right_height) = self.unary(depth)?;
            height = self.deeper(depth + height.max(right_height))? - depth;
            left = Condition::And(Box::new(left), Box::new(right));
        }
        Ok((left, height))
    }

    fn unary(&mut self, depth: usize) -> Result<(Condition, usize), ConditionParse> {
        if self.eat("!") || self.eat_keyword("NOT") {
            let inner_depth = self.deeper(depth)?;
            let (inner, height) = self.unary(inner_depth)?;
            return Ok((Condition::Not(Box::new(inner)), height + 1));
        }
        if self.eat("(") {
            // Parentheses add no node, but recurse: they count as a level.
            let (inner, height) = self.or(self.deeper(depth)?)?;
            if !self.eat(")") {
                return Err(self.error("expected ')'"));
            }
            return Ok((inner, height));
        }
        if self.eat_keyword("ActionMatches") || self.eat_keyword("SubOperationMatches") {
            if !self.eat("{") {
                return Err(self.error("expected '{' after ActionMatches"));
            }
            let pattern = self.quoted()?;
            if !self.eat("}") {
                return Err(self.error("expected '}'"));
            }
            return Ok((Condition::ActionMatches(pattern), 1));
        }
        if self.eat("@") {
            return Ok((self.comparison()?, 1));
        }
        Err(self.error("expected an expression"))
    }

    fn quoted(&mut self) -> Result<String, ConditionParse> {
        self.skip_ws();
        let rest = self.rest();
        let Some(body) = rest.strip_prefix('\'') else {
            return Err(self.error("expected a quoted string"));
        };
        let Some(end) = body.find('\'') else {
            return Err(self.error("unterminated string"));
        };
        let value = body[..end].to_string();
        self.pos += end + 2;
        Ok(value)
    }

    fn comparison(&mut self) -> Result<Condition, ConditionParse> {
        let source = if self.eat_keyword("Request") {
            Source::Request
        } else if self.eat_keyword("Resource") {
            Source::Resource
        } else {
            return Err(self.error("expected Request or Resource after '@'"));
        };
        if !self.eat("[") {
            return Err(self.error("expected '['"));
        }
        let Some(end) = self.rest().find(']') else {
            return Err(self.error("expected ']'"));
        };
        let attribute = self.rest()[..end].trim().to_string();
        self.pos += end + 1;
        self.skip_ws();
        let word_len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
            .unwrap_or(self.rest().len());
        let word = self.rest()[..word_len].to_string();
        self.pos += word_len;
        let (quantifier, op) = match word.split_once(':') {
            Some((q, op)) => {
                let quantifier = match q.to_ascii_lowercase().as_str() {
                    "foranyofanyvalues" => Quantifier::AnyOfAny,
                    "forallofanyvalues" => Quantifier::AllOfAny,
                    "foranyofallvalues" => Quantifier::AnyOfAll,
                    "forallofallvalues" => Quantifier::AllOfAll,
                    _ => return Err(self.error("unknown quantifier")),
                };
                (quantifier, op.to_string())
            }
            None => (Quantifier::Single, word),
        };
        let operator = match op.to_ascii_lowercase().as_str() {
            "guidequals" => Operator::GuidEquals,
            "guidnotequals" => Operator::GuidNotEquals,
            "stringequals" => Operator::StringEquals,
            "stringequalsignorecase" => Operator::StringEqualsIgnoreCase,
            "stringnotequals" => Operator::StringNotEquals,
            "stringnotequalsignorecase" => Operator::StringNotEqualsIgnoreCase,
            _ => return Err(self.error("unknown operator")),
        };
        let values = if self.eat("{") {
            let Some(end) = self.rest().find('}') else {
                return Err(self.error("expected '}'"));
            };
            let list = self.rest()[..end].to_string();
            self.pos += end + 1;
            list.split(',')
                .map(|v| v.trim().trim_matches('\'').to_string())
                .filter(|v| !v.is_empty())
                .collect()
        } else {
            self.skip_ws();
            if self.rest().starts_with('\'') {
                vec![self.quoted()?]
            } else {
                let len = self
                    .rest()
                    .find(|c: char| c.is_whitespace() || c == ')')
                    .unwrap_or(self.rest().len());
                let value = self.rest()[..len].to_string();
                self.pos += len;
                vec![value]
            }
        };
        Ok(Condition::Compare {
            source,
            attribute,
            quantifier,
            operator,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles;
    use crate::seed::tests::example_delegation_condition;

    fn write_of(role: &str, principal_type: Option<&str>) -> AccessRequest {
        AccessRequest {
            action: "Microsoft.Authorization/roleAssignments/write".into(),
            scope: "/subscriptions/s".into(),
            request: AssignmentAttributes {
                role_definition_id: Some(format!(
                    "/providers/Microsoft.Authorization/roleDefinitions/{role}"
                )),
                principal_id: Some("p".into()),
                principal_type: principal_type.map(str::to_string),
            },
            resource: AssignmentAttributes::default(),
        }
    }

    #[test]
    fn the_example_delegation_allows_its_roles_and_refuses_others() {
        let condition = example_delegation_condition();
        for role in [
            roles::COGNITIVE_SERVICES_OPENAI_USER,
            roles::COGNITIVE_SERVICES_OPENAI_CONTRIBUTOR,
            roles::COGNITIVE_SERVICES_USER,
            roles::FOUNDRY_USER,
        ] {
            assert_eq!(
                evaluate(&condition, &write_of(&role.to_uppercase(), None)),
                Ok(true)
            );
        }
        assert_eq!(
            evaluate(
                &condition,
                &write_of("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", None)
            ),
            Ok(false)
        );
        let mut delete = write_of("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", None);
        delete.action = "Microsoft.Authorization/roleAssignments/delete".into();
        delete.resource = delete.request.clone();
        assert_eq!(evaluate(&condition, &delete), Ok(false));
        delete.resource.role_definition_id = Some(roles::COGNITIVE_SERVICES_OPENAI_USER.into());
        assert_eq!(evaluate(&condition, &delete), Ok(true));
        // Reads are not constrained.
        let mut read = write_of("x", None);
        read.action = "Microsoft.Authorization/roleAssignments/read".into();
        assert_eq!(evaluate(&condition, &read), Ok(true));
    }

    #[test]
    fn a_principal_type_condition_needs_the_principal_type_sent() {
        let condition = "((!(ActionMatches{'Microsoft.Authorization/roleAssignments/write'})) OR (@Request[Microsoft.Authorization/roleAssignments:PrincipalType] ForAnyOfAnyValues:StringEqualsIgnoreCase {'ServicePrincipal', 'Group'}))";
        assert_eq!(
            evaluate(condition, &write_of("r", Some("servicePrincipal"))),
            Ok(true)
        );
        assert_eq!(evaluate(condition, &write_of("r", Some("User"))), Ok(false));
        assert_eq!(evaluate(condition, &write_of("r", None)), Ok(false));
    }

    #[test]
    fn garbage_does_not_parse() {
        assert!(parse_condition("(ActionMatches{'x'}").is_err());
        assert!(parse_condition("@Request[x] Frobnicates {1}").is_err());
        assert!(parse_condition("ActionMatches{'x'} trailing").is_err());
    }

    #[test]
    fn wildcards_match_like_arm_actions() {
        assert!(action_matches(
            "*/read",
            "Microsoft.CognitiveServices/accounts/read"
        ));
        assert!(action_matches(
            "Microsoft.CognitiveServices/*/read",
            "microsoft.cognitiveservices/accounts/read"
        ));
        assert!(!action_matches(
            "*/read",
            "Microsoft.Authorization/roleAssignments/write"
        ));
        assert!(action_matches("*", "anything"));
        assert!(action_matches(
            "Microsoft.Authorization/*",
            "Microsoft.Authorization/roleAssignments/write"
        ));
    }

    #[test]
    fn a_condition_nested_beyond_the_limit_is_refused_not_a_stack_overflow() {
        let leaf = "ActionMatches{'a'}";
        let deep = [
            format!("{}{leaf}{}", "(".repeat(100_000), ")".repeat(100_000)),
            format!("{}{leaf}", "!".repeat(100_000)),
            format!("{}{leaf}", "NOT ".repeat(100_000)),
            vec![leaf; 100_000].join(" AND "),
            vec![leaf; 100_000].join(" || "),
        ];
        for text in deep {
            let error = parse_condition(&text).unwrap_err();
            assert_eq!(error.reason, "the condition is nested too deeply");
        }
        // At the limit it still parses (and evaluates).
        let at_limit = format!("{}{leaf}", "!".repeat(MAX_CONDITION_DEPTH - 1));
        assert!(parse_condition(&at_limit).is_ok());
        let chain = vec![leaf; MAX_CONDITION_DEPTH].join(" AND ");
        assert!(parse_condition(&chain).is_ok());
        let too_long = vec![leaf; MAX_CONDITION_DEPTH + 2].join(" AND ");
        assert!(parse_condition(&too_long).is_err());
    }
}
