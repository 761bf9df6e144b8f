//! Entra: the token endpoint for workload identity federation (facts §D.2), and the JWTs it issues.
//!
//! Access tokens are JWT-shaped like Entra's v1 tokens (`aud`, `iss`, `oid`, `tid`, `appid`,
//! `roles`, `exp`) and signed with HS256 under a key the emulator draws at start: only the
//! emulator has to verify them. Client assertions are checked the way Entra checks them against
//! the identity's federated credentials (issuer, subject, audience, lifetime). Their signatures are
//! not checked: that would need the issuer's JWKS, which a loopback emulator cannot fetch.

use crate::http::Reply;
use crate::state::World;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

/// The resource a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Audience {
    /// Azure Resource Manager (`https://management.azure.com/.default`).
    Arm,
    /// Microsoft Graph (`https://graph.microsoft.com/.default`).
    Graph,
}

/// The audiences ARM accepts, as its 401 message lists them.
pub const ARM_AUDIENCES: [&str; 4] = [
    "https://management.core.windows.net/",
    "https://management.core.windows.net",
    "https://management.azure.com/",
    "https://management.azure.com",
];
pub const GRAPH_AUDIENCES: [&str; 3] = [
    "https://graph.microsoft.com",
    "https://graph.microsoft.com/",
    "00000003-0000-0000-c000-000000000000",
];

impl Audience {
    pub fn of_resource(resource: &str) -> Option<Audience> {
        if ARM_AUDIENCES
            .iter()
            .any(|a| a.eq_ignore_ascii_case(resource))
        {
            Some(Audience::Arm)
        } else if GRAPH_AUDIENCES
            .iter()
            .any(|a| a.eq_ignore_ascii_case(resource))
        {
            Some(Audience::Graph)
        } else {
            None
        }
    }

    /// The `aud` claim of a token requested with `{resource}/.default`.
    pub fn claim(self) -> &'static str {
        match self {
            Audience::Arm => "https://management.azure.com",
            Audience::Graph => "https://graph.microsoft.com",
        }
    }
}

/// The claims of an access token the emulator issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub oid: String,
    pub sub: String,
    pub tid: String,
    pub appid: String,
    pub appidacr: String,
    pub idtyp: String,
    pub ver: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xms_mirid: Option<String>,
}

/// Why a bearer token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenProblem {
    Malformed,
    BadSignature,
    Expired { exp: i64 },
    WrongAudience { aud: String },
    WrongTenant { tid: String },
}

/// Signs and verifies the emulator's own tokens.
pub struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

impl Signer {
    pub fn random() -> Signer {
        Signer {
            key: rand::random(),
        }
    }

    fn mac(&self, input: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail; fall back to an empty tag anyway.
        match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mut mac) => {
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"typ": "JWT", "alg": "HS256", "kid": "keyless-emulator"});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(self.mac(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    /// Verifies signature, lifetime, tenant and audience.
    pub fn verify(
        &self,
        token: &str,
        tenant_id: &str,
        audience: Audience,
        now: i64,
    ) -> Result<AccessClaims, TokenProblem> {
        let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenProblem::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenProblem::Malformed)?;
        let claims: AccessClaims =
            serde_json::from_value(decode_unverified(token).ok_or(TokenProblem::Malformed)?)
                .map_err(|_| TokenProblem::Malformed)?;
        let expected = self.mac(signing_input.as_bytes());
        // Constant-time comparison through the MAC crate would need the raw tag; lengths are fixed
        // and the key never leaves the process, so a plain comparison is acceptable here.
        if expected.is_empty() || expected != signature {
            return Err(TokenProblem::BadSignature);
        }
        if claims.exp <= now {
            return Err(TokenProblem::Expired { exp: claims.exp });
        }
        if !claims.tid.eq_ignore_ascii_case(tenant_id) {
            return Err(TokenProblem::WrongTenant { tid: claims.tid });
        }
        if Audience::of_resource(&claims.aud) != Some(audience) {
            return Err(TokenProblem::WrongAudience { aud: claims.aud });
        }
        Ok(claims)
    }
}

/// The claims of a JWT, without checking anything.
pub fn decode_unverified(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.is_object().then_some(value)
}

pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Claims for an access token of `principal_id` (a service principal) for `audience`.
pub fn access_claims(
    world: &World,
    principal_id: &str,
    audience: Audience,
    now: i64,
    lifetime_secs: i64,
) -> Option<AccessClaims> {
    let sp = world.directory.iter().find_map(|e| match &e.object {
        crate::state::DirectoryObject::ServicePrincipal(sp)
            if sp.id.eq_ignore_ascii_case(principal_id) =>
        {
            Some(sp)
        }
        _ => None,
    })?;
    Some(AccessClaims {
        aud: audience.claim().to_string(),
        iss: format!("https://sts.windows.net/{}/", world.tenant_id),
        iat: now,
        nbf: now,
        exp: now + lifetime_secs,
        oid: sp.id.clone(),
        sub: sp.id.clone(),
        tid: world.tenant_id.clone(),
        appid: sp.app_id.clone(),
        appidacr: "2".to_string(),
        idtyp: "app".to_string(),
        ver: "1.0".to_string(),
        // Graph permissions travel in the token, as with Entra: a grant made later needs a new token.
        roles: if audience == Audience::Graph {
            sp.graph_app_roles.clone()
        } else {
            Vec::new()
        },
        xms_mirid: sp.identity_resource_id.clone(),
    })
}

/// An Entra token-endpoint error (`{"error","error_description","error_codes",...}`).
pub fn entra_error(status: u16, error: &str, code: u32, description: &str) -> Reply {
    let trace_id = uuid::Uuid::new_v4().to_string();
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let timestamp = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%SZ")
        .to_string();
    Reply::json(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}"),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What a valid token request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    pub principal_id: String,
    pub audience: Audience,
}

/// Checks a client-credentials request with a federated client assertion the way Entra does.
pub fn check_token_request(
    world: &World,
    tenant: &str,
    form: &[(String, String)],
    now: i64,
    accept_opaque: bool,
) -> Result<Grant, Reply> {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if !tenant.eq_ignore_ascii_case(&world.tenant_id) {
        return Err(entra_error(
            400,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ));
    }
    match field("grant_type") {
        Some("client_credentials") => {}
        Some(other) => {
            return Err(entra_error(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            ));
        }
        None => {
            return Err(entra_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            ));
        }
    }
    let Some(client_id) = field("client_id") else {
        return Err(entra_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        ));
    };
    let Some(sp) = world.service_principal_by_app_id(client_id) else {
        return Err(entra_error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.",
                world.tenant_id
            ),
        ));
    };
    let scope = field("scope").unwrap_or_default();
    let audience = audience_of_scope(scope, &world.tenant_id)?;
    let (Some(assertion_type), Some(assertion)) =
        (field("client_assertion_type"), field("client_assertion"))
    else {
        return Err(entra_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    if assertion_type != JWT_BEARER {
        return Err(entra_error(
            400,
            "invalid_request",
            50027,
            "Invalid client_assertion_type.",
        ));
    }
    match decode_unverified(assertion) {
        Some(claims) => check_assertion(world, client_id, &claims, now)?,
        None if accept_opaque => {}
        None => {
            return Err(entra_error(
                400,
                "invalid_client",
                50027,
                "JWT token is invalid or malformed.",
            ));
        }
    }
    Ok(Grant {
        principal_id: sp.id.clone(),
        audience,
    })
}

fn audience_of_scope(scope: &str, tenant_id: &str) -> Result<Audience, Reply> {
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let Some(first) = scopes.first() else {
        return Err(entra_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        ));
    };
    let mut audience = None;
    for scope in &scopes {
        let Some(resource) = scope.strip_suffix("/.default") else {
            return Err(entra_error(
                400,
                "invalid_scope",
                1002012,
                &format!(
                    "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            ));
        };
        let Some(found) = Audience::of_resource(resource) else {
            return Err(entra_error(
                400,
                "invalid_resource",
                500011,
                &format!(
                    "The resource principal named {resource} was not found in the tenant named {tenant_id}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
                ),
            ));
        };
        if audience.is_some_and(|a| a != found) {
            return Err(entra_error(
                400,
                "invalid_scope",
                70011,
                &format!(
                    "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {first} ... is not valid. All scopes included must be for a single resource."
                ),
            ));
        }
        audience = Some(found);
    }
    audience.ok_or_else(|| {
        entra_error(
            400,
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid.",
        )
    })
}

fn check_assertion(world: &World, client_id: &str, claims: &Value, now: i64) -> Result<(), Reply> {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (issuer, subject) = (text("iss"), text("sub"));
    let audiences: Vec<String> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(0);
    if exp <= now || nbf > now + 300 {
        return Err(entra_error(
            400,
            "invalid_client",
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {exp}."
            ),
        ));
    }
    let credentials = world.federated_credentials_of(client_id);
    let by_issuer: Vec<_> = credentials.iter().filter(|c| c.issuer == issuer).collect();
    let hint = "Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation";
    if by_issuer.is_empty() {
        return Err(entra_error(
            400,
            "invalid_client",
            700211,
            &format!(
                "No matching federated identity record found for presented assertion issuer '{issuer}'. {hint}"
            ),
        ));
    }
    let by_subject: Vec<_> = by_issuer
        .into_iter()
        .filter(|c| c.subject == subject)
        .collect();
    if by_subject.is_empty() {
        return Err(entra_error(
            400,
            "invalid_client",
            700213,
            &format!(
                "No matching federated identity record found for presented assertion subject '{subject}'. {hint}"
            ),
        ));
    }
    if !by_subject
        .iter()
        .any(|c| c.audiences.iter().any(|a| audiences.contains(a)))
    {
        return Err(entra_error(
            400,
            "invalid_client",
            700212,
            &format!(
                "No matching federated identity record found for presented assertion audience '{}'. {hint}",
                audiences.join(",")
            ),
        ));
    }
    Ok(())
}

/// A service account token as a Kubernetes OIDC issuer would write it (unsigned for Entra's
/// purposes: see the module docs).
pub fn federated_assertion(
    signer: &Signer,
    issuer: &str,
    subject: &str,
    audience: &str,
    now: i64,
    lifetime_secs: i64,
) -> String {
    signer.sign(&json!({
        "iss": issuer,
        "sub": subject,
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_secs,
        "kubernetes.io": { "serviceaccount": { "name": subject.rsplit(':').next().unwrap_or_default() } },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::Seed;

    const OPERATOR_CLIENT: &str = "932c691f-143e-4919-b0ce-026e518e94fb";

    fn world() -> World {
        World::from_seed(&Seed::example().unwrap()).unwrap()
    }

    fn form(assertion: &str, scope: &str) -> Vec<(String, String)> {
        vec![
            ("client_assertion".into(), assertion.into()),
            ("client_assertion_type".into(), JWT_BEARER.into()),
            ("client_id".into(), OPERATOR_CLIENT.into()),
            ("grant_type".into(), "client_credentials".into()),
            ("scope".into(), scope.into()),
        ]
    }

    #[test]
    fn tokens_verify_only_for_their_audience_and_until_they_expire() {
        let signer = Signer::random();
        let world = world();
        let claims = access_claims(
            &world,
            "37d99a9d-85be-4a09-9afa-73e46bc24f11",
            Audience::Arm,
            1000,
            60,
        )
        .unwrap();
        let token = signer.sign(&serde_json::to_value(&claims).unwrap());
        assert!(
            signer
                .verify(&token, &world.tenant_id, Audience::Arm, 1001)
                .is_ok()
        );
        assert!(matches!(
            signer.verify(&token, &world.tenant_id, Audience::Graph, 1001),
            Err(TokenProblem::WrongAudience { .. })
        ));
        assert!(matches!(
            signer.verify(&token, &world.tenant_id, Audience::Arm, 1060),
            Err(TokenProblem::Expired { .. })
        ));
        assert_eq!(
            Signer::random().verify(&token, &world.tenant_id, Audience::Arm, 1001),
            Err(TokenProblem::BadSignature)
        );
    }

    #[test]
    fn a_federated_assertion_must_match_issuer_subject_and_audience() {
        let signer = Signer::random();
        let world = world();
        let issuer = "https://oidc.keyless.example/cluster-1/";
        let good = federated_assertion(
            &signer,
            issuer,
            "system:serviceaccount:keyless-system:keyless",
            "api://AzureADTokenExchange",
            100,
            3600,
        );
        let grant = check_token_request(
            &world,
            &world.tenant_id,
            &form(&good, "https://management.azure.com/.default"),
            200,
            false,
        )
        .unwrap();
        assert_eq!(grant.audience, Audience::Arm);
        for (bad, code) in [
            (
                federated_assertion(
                    &signer,
                    "https://elsewhere/",
                    "system:serviceaccount:keyless-system:keyless",
                    "api://AzureADTokenExchange",
                    100,
                    3600,
                ),
                "700211",
            ),
            (
                federated_assertion(
                    &signer,
                    issuer,
                    "system:serviceaccount:default:default",
                    "api://AzureADTokenExchange",
                    100,
                    3600,
                ),
                "700213",
            ),
            (
                federated_assertion(
                    &signer,
                    issuer,
                    "system:serviceaccount:keyless-system:keyless",
                    "api://other",
                    100,
                    3600,
                ),
                "700212",
            ),
            (
                federated_assertion(
                    &signer,
                    issuer,
                    "system:serviceaccount:keyless-system:keyless",
                    "api://AzureADTokenExchange",
                    100,
                    50,
                ),
                "700024",
            ),
            ("not-a-jwt".to_string(), "50027"),
        ] {
            let reply = check_token_request(
                &world,
                &world.tenant_id,
                &form(&bad, "https://management.azure.com/.default"),
                200,
                false,
            )
            .unwrap_err();
            assert!(
                String::from_utf8_lossy(&reply.body).contains(code),
                "{code}"
            );
        }
    }
}
