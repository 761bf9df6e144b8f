//! Stable fuzz targets (proptest, no nightly) for every parser of external input: what Azure, a
//! token endpoint, a seed file, a manifest or an HTTP client can send keyless or its emulator.
//!
//! Each target feeds arbitrary strings or bytes (no panic allowed) and mutations of the valid seeds
//! in `tests/fuzz-corpus/` (structure-aware: the interesting inputs are near-valid ones), and checks
//! a round trip where a printer exists. `KEYLESS_FUZZ_CASES` sets the inputs per target (default 300,
//! about 8 s for all targets in a debug build on 2 shared cores); the README has the figures.
//! A failure is shrunk by proptest and kept in `proptest-regressions/fuzz.txt`, replayed on every run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::time::Duration;

fn cases() -> u32 {
    std::env::var("KEYLESS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn config() -> Config {
    Config {
        cases: cases(),
        // Only panics are searched for, not long-running inputs; shrinking a failure is enough.
        max_shrink_iters: 2_000,
        // Failures persist to proptest-regressions/fuzz.txt (replayed first on every run).
        source_file: Some(file!()),
        ..Config::default()
    }
}

fn seeds(text: &'static str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// One edit of a text: insert, delete or replace a character, or splice in a fragment that parsers
/// of this input care about.
#[derive(Clone, Debug)]
enum Edit {
    Insert(usize, char),
    Delete(usize),
    Replace(usize, char),
    Splice(usize, &'static str),
    Truncate(usize),
}

const FRAGMENTS: &[&str] = &[
    "'",
    "''",
    "/",
    "//",
    "(",
    ")",
    "=",
    "@",
    "$",
    "%",
    "%2F",
    "..",
    ".",
    "-",
    " ",
    "\n",
    "\t",
    "\u{0}",
    "é",
    "日本",
    "\u{feff}",
    "eyJ",
    "==",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    "#",
    "---\n",
    "- ",
    "  ",
    "providers",
    "subscriptions",
    "resourceGroups",
    "and",
    "eq",
    "null",
    "true",
    "-1",
    "99999999999999999999",
    "1e999",
    "Z",
    "GMT",
    "instance=",
    "keyless:v1 ",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<char>()).prop_map(|(at, c)| Edit::Insert(at, c)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), any::<char>()).prop_map(|(at, c)| Edit::Replace(at, c)),
        (any::<usize>(), proptest::sample::select(FRAGMENTS))
            .prop_map(|(at, f)| Edit::Splice(at, f)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        let len = chars.len();
        let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *edit {
            Edit::Insert(i, c) => chars.insert(at(i), c),
            Edit::Delete(i) if len > 0 => {
                chars.remove(i % len);
            }
            Edit::Replace(i, c) if len > 0 => chars[i % len] = c,
            Edit::Splice(i, fragment) => {
                let at = at(i);
                chars.splice(at..at, fragment.chars());
            }
            Edit::Truncate(i) => chars.truncate(at(i)),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Arbitrary strings half the time, mutations of a seed the other half.
fn input(seeds: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (
            proptest::sample::select(seeds),
            proptest::collection::vec(edit(), 0..6)
        )
            .prop_map(|(seed, edits)| apply(&seed, &edits)),
    ]
}

/// Runs `check` on `cases()` inputs; panics with the shrunk input on failure.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value)) {
    let mut runner = TestRunner::new(config());
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |value| {
        check(value);
        Ok(())
    });
    // The figures for the README when run with --nocapture.
    println!(
        "fuzz {name}: {} inputs in {:.1?}, {}",
        cases(),
        started.elapsed(),
        if result.is_ok() { "0 panics" } else { "FAILED" }
    );
    if let Err(error) = result {
        panic!("fuzz target {name}: {error}");
    }
}

const ARM_IDS: &str = include_str!("../tests/fuzz-corpus/arm-ids.txt");
const UPNS: &str = include_str!("../tests/fuzz-corpus/upns.txt");
const ODATA: &str = include_str!("../tests/fuzz-corpus/odata.txt");
const ERROR_BODIES: &str = include_str!("../tests/fuzz-corpus/error-bodies.txt");
const CONFLICTS: &str = include_str!("../tests/fuzz-corpus/conflict-messages.txt");
const TOKEN_RESPONSES: &str = include_str!("../tests/fuzz-corpus/token-responses.txt");
const MARKERS: &str = include_str!("../tests/fuzz-corpus/markers.txt");
const RETRY_AFTER: &str = include_str!("../tests/fuzz-corpus/retry-after.txt");
const JWTS: &str = include_str!("../tests/fuzz-corpus/jwts.txt");

#[test]
fn fuzz_arm_resource_ids() {
    use crate::plan::AccountScope;
    fuzz("arm_resource_ids", input(seeds(ARM_IDS)), |id| {
        if let Ok(scope) = AccountScope::parse(&id) {
            // Round trip: the scope's own id parses to the same scope, and matches itself.
            let again = AccountScope::parse(&scope.to_string()).unwrap();
            assert_eq!(again, scope, "{id:?}");
            assert!(scope.matches(&scope.to_string()), "{id:?}");
        }
        let _ = crate::azure::arm::parse_identity_id(&id);
        let _ = crate::azure::arm::parse_assignment_id(&id);
        let _ = keyless_emulator::internals::route(&id);
    });
}

#[test]
fn fuzz_upns_client_path_to_emulator_key() {
    // Round trip over realistic UPNs: what the Graph client sends, the emulator reads back as the
    // same UPN (path segment or, for a leading `$`, a key literal).
    let realistic = "[$A-Za-z0-9'._!#^~-]{1,20}@[a-z0-9.-]{1,20}";
    fuzz("upns", (input(seeds(UPNS)), realistic), |(any_upn, upn)| {
        let _ = crate::azure::graph::user_path(&any_upn);
        let _ = keyless_emulator::internals::split(&format!(
            "/{}",
            crate::azure::graph::user_path(&any_upn)
        ));
        let path = format!("/{}", crate::azure::graph::user_path(&upn));
        let decoded = percent_encoding::percent_decode_str(&path)
            .decode_utf8_lossy()
            .to_string();
        let (_, key) = keyless_emulator::internals::split(&decoded).expect("a users path");
        let key = key.expect("a key");
        let value = if key.starts_with('(') {
            keyless_emulator::internals::parse_key(&key)
                .expect("a key literal")
                .1
        } else {
            key
        };
        assert_eq!(value, upn);
    });
}

#[test]
fn fuzz_odata_literals_and_filters() {
    use keyless_emulator::internals::{parse_filter, parse_key, parse_literal, quote};
    fuzz(
        "odata",
        (input(seeds(ODATA)), any::<String>()),
        |(text, value)| {
            let _ = parse_literal(&text);
            let _ = parse_filter(&text);
            let _ = parse_key(&text);
            let _ = keyless_emulator::internals::parse_assignment_filter(Some(&text));
            // The client's quoting and the emulator's parsing are inverses, whatever the value.
            let literal = crate::azure::graph::odata_string(&value);
            assert_eq!(literal, quote(&value));
            let (parsed, used) = parse_literal(&format!("{literal} and x")).unwrap();
            assert_eq!(parsed, value);
            assert_eq!(used, literal.len());
            assert_eq!(parse_key(&format!("({literal})")), Some((None, value)));
        },
    );
}

fn reply(status: u16, body: &str, headers: &[(&str, &str)]) -> crate::azure::http::Reply {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) {
            map.insert(name, value);
        }
    }
    crate::azure::http::Reply {
        service: crate::azure::http::Service::Arm,
        operation: "fuzz",
        status: reqwest::StatusCode::from_u16(status).unwrap_or(reqwest::StatusCode::BAD_REQUEST),
        headers: map,
        body: bytes::Bytes::from(body.to_string()),
    }
}

#[test]
fn fuzz_arm_and_graph_error_bodies() {
    fuzz(
        "error_bodies",
        (input(seeds(ERROR_BODIES)), 100u16..600),
        |(body, status)| {
            let reply = reply(status, &body, &[("x-ms-request-id", "r")]);
            let parsed = reply.error_body();
            let error = reply.to_error("fuzz");
            // The service's code is carried into the error as sent.
            if let Some(code) = parsed.code {
                assert!(error.to_string().contains(&code), "{error} lacks {code:?}");
            }
            let _ = reply.json::<serde_json::Value>("fuzz");
        },
    );
}

#[test]
fn fuzz_role_assignment_exists_message() {
    use crate::azure::arm::existing_assignment_name;
    fuzz(
        "conflict_409",
        (input(seeds(CONFLICTS)), any::<u128>(), any::<String>()),
        |(message, bits, prefix)| {
            let _ = existing_assignment_name(&message);
            // Round trip: the GUID ARM prints (simple form) comes back as the same GUID.
            let name = uuid::Uuid::from_u128(bits);
            let printed = format!(
                "{prefix} The ID of the existing role assignment is {}.",
                name.simple()
            );
            assert_eq!(
                existing_assignment_name(&printed),
                Some(name),
                "{printed:?}"
            );
        },
    );
}

#[test]
fn fuzz_ownership_marker() {
    use crate::plan::InstanceId;
    use crate::plan::ownership::{is_owned_by, ownership_marker};
    fuzz(
        "ownership_marker",
        (
            input(seeds(MARKERS)),
            "[a-z0-9][a-z0-9-]{0,40}",
            any::<String>(),
            "[a-z0-9-]{1,30}",
        ),
        |(description, id, declared_by, other)| {
            let Ok(instance) = InstanceId::new(&id) else {
                return;
            };
            let _ = is_owned_by(Some(&description), &instance);
            // Round trip: the marker written for an instance is owned by it and by no other.
            let marker = ownership_marker(&instance, &declared_by);
            assert!(is_owned_by(Some(&marker), &instance), "{marker:?}");
            if other != id
                && let Ok(other) = InstanceId::new(&other)
            {
                assert!(!is_owned_by(Some(&marker), &other), "{marker:?}");
            }
            assert!(!is_owned_by(
                Some(&crate::plan::ownership::released_marker(&declared_by)),
                &instance
            ));
        },
    );
}

#[test]
fn fuzz_retry_after() {
    use crate::azure::retry::retry_after;
    fuzz(
        "retry_after",
        (input(seeds(RETRY_AFTER)), any::<u32>(), 0usize..3),
        |(value, seconds, header)| {
            let name = ["retry-after", "retry-after-ms", "x-ms-retry-after-ms"][header];
            let _ = retry_after(&reply(429, "", &[(name, &value)]).headers);
            // Round trip: a number of seconds is that many seconds, milliseconds that many ms.
            let headers = reply(429, "", &[("retry-after", &seconds.to_string())]).headers;
            assert_eq!(
                retry_after(&headers),
                Some(Duration::from_secs(u64::from(seconds)))
            );
            let headers = reply(429, "", &[("retry-after-ms", &seconds.to_string())]).headers;
            assert_eq!(
                retry_after(&headers),
                Some(Duration::from_millis(u64::from(seconds)))
            );
        },
    );
}

#[test]
fn fuzz_emulator_jwts_and_client_assertions() {
    use keyless_emulator::Audience;
    use keyless_emulator::internals::{Signer, check_token_request, decode_unverified};
    let signer = Signer::random();
    let seed = keyless_emulator::Seed::example().unwrap();
    let world = keyless_emulator::internals::World::from_seed(&seed).unwrap();
    let tenant = world.tenant_id.clone();
    let client = seed_operator_client_id(&world);
    fuzz(
        "jwts",
        (
            input(seeds(JWTS)),
            // A few claims are enough for the round trip; `any::<BTreeMap>` (up to 100 entries
            // of long strings) made generating the input cost more than checking it.
            proptest::collection::btree_map(any::<String>(), any::<String>(), 0..8),
        ),
        |(token, claims)| {
            let _ = decode_unverified(&token);
            let _ = signer.verify(&token, &tenant, Audience::Arm, 0);
            let form = vec![
                ("grant_type".to_string(), "client_credentials".to_string()),
                ("client_id".to_string(), client.clone()),
                (
                    "client_assertion_type".to_string(),
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string(),
                ),
                ("client_assertion".to_string(), token.clone()),
                (
                    "scope".to_string(),
                    "https://management.azure.com/.default".to_string(),
                ),
            ];
            let _ = check_token_request(&world, &tenant, &form, 0, false);
            // Round trip: what the signer signs decodes to the same claims.
            let claims = serde_json::to_value(&claims).unwrap();
            assert_eq!(decode_unverified(&signer.sign(&claims)), Some(claims));
        },
    );
}

fn seed_operator_client_id(world: &keyless_emulator::internals::World) -> String {
    // The identity keyless runs as, so the assertion (what is fuzzed) is what gets checked.
    world
        .identities
        .iter()
        .find(|i| world.operator_identity.as_deref() == Some(i.name.as_str()))
        .or(world.identities.first())
        .map(|i| i.client_id.clone())
        .unwrap_or_default()
}

#[test]
fn fuzz_seed_yaml() {
    let example = keyless_emulator::seed::EXAMPLE_SEED_YAML.to_string();
    fuzz("seed_yaml", input(vec![example]), |text| {
        if let Ok(seed) = keyless_emulator::Seed::from_yaml(&text) {
            let _ = keyless_emulator::internals::World::from_seed(&seed);
        }
    });
}

const MANIFESTS: [&str; 5] = [
    include_str!("../examples/manifests/00-account-oai-prod.yaml"),
    include_str!("../examples/manifests/10-namespace-team-chat.yaml"),
    include_str!("../examples/manifests/20-access-team-chat.yaml"),
    include_str!("../examples/manifests/30-access-ml-platform.yaml"),
    include_str!("../examples/manifests/40-account-ais-dev.yaml"),
];

#[test]
fn fuzz_manifest_yaml() {
    use crate::api::validation::MAX_MESSAGE;
    use crate::files::load::{LoadError, Origin, YamlSyntax, from_documents};
    let seeds: Vec<String> = MANIFESTS.iter().map(|s| s.to_string()).collect();
    fuzz("manifest_yaml", input(seeds), |text| {
        match serde_saphyr::from_multiple::<serde_json::Value>(&text) {
            Err(error) => {
                // A syntax error is shown bounded, whatever the file.
                let shown = YamlSyntax::new("m.yaml", &error).to_string();
                assert!(shown.lines().count() <= crate::files::load::YAML_ERROR_LINES);
            }
            Ok(values) => {
                let documents = values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        (
                            Origin {
                                file: "m.yaml".into(),
                                document: i + 1,
                            },
                            v,
                        )
                    })
                    .collect();
                if let Err(LoadError::Invalid(problems)) = from_documents(documents) {
                    for problem in problems {
                        assert!(
                            problem.message.chars().count() <= MAX_MESSAGE + 1,
                            "{} characters: {problem}",
                            problem.message.chars().count()
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn fuzz_token_responses() {
    use crate::azure::cloud::{AzureCloud, CloudEndpoints, EndpointOverrides};
    use crate::azure::credential::{CredentialChoice, CredentialSettings, build_credential_with};
    use azure_core::http::headers::Headers;
    use azure_core::http::{AsyncRawResponse, HttpClient, Request, StatusCode};
    use std::sync::{Arc, Mutex};

    #[derive(Debug)]
    struct Endpoint(Mutex<(u16, String)>);

    #[async_trait::async_trait]
    impl HttpClient for Endpoint {
        async fn execute_request(&self, _: &Request) -> azure_core::Result<AsyncRawResponse> {
            let (status, body) = self.0.lock().unwrap().clone();
            Ok(AsyncRawResponse::from_bytes(
                StatusCode::from(status),
                Headers::default(),
                body.into_bytes(),
            ))
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "projected.service.account.token").unwrap();
    let endpoints = CloudEndpoints::resolve(
        AzureCloud::AzurePublicCloud,
        &EndpointOverrides {
            authority_host: Some(url::Url::parse("https://login.fake.local").unwrap()),
            ..EndpointOverrides::default()
        },
    )
    .unwrap();
    let settings = CredentialSettings {
        choice: CredentialChoice::WorkloadIdentity,
        tenant_id: Some("22222222-2222-2222-2222-222222222222".into()),
        client_id: Some("11111111-1111-1111-1111-111111111111".into()),
        federated_token_file: Some(token_file),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // One credential for many inputs (building one per input cost more than the parse fuzzed), and
    // a scope never asked before per input, so its token cache always misses and every input
    // reaches azure_identity's parser; rebuilt every CREDENTIAL_REUSE inputs so the cache stays small.
    const CREDENTIAL_REUSE: u64 = 1_000;
    let endpoint = Arc::new(Endpoint(Mutex::new((200, String::new()))));
    let built = std::cell::RefCell::new(None);
    let counter = std::cell::Cell::new(0u64);
    fuzz(
        "token_responses",
        (
            input(seeds(TOKEN_RESPONSES)),
            prop_oneof![Just(200u16), Just(400), Just(401)],
        ),
        |(body, status)| {
            let n = counter.get();
            counter.set(n + 1);
            *endpoint.0.lock().unwrap() = (status, body.clone());
            let mut built = built.borrow_mut();
            if n.is_multiple_of(CREDENTIAL_REUSE) || built.is_none() {
                *built = Some(
                    build_credential_with(&settings, &endpoints, endpoint.clone(), None, &|_| None)
                        .unwrap(),
                );
            }
            let credential = &built.as_ref().unwrap().credential;
            let scope = format!("https://management.azure.com/fuzz{n}/.default");
            let result = runtime.block_on(credential.get_token(&[scope.as_str()], None));
            // Whatever the body, a failure never echoes an access token it carried.
            if let Err(error) = result {
                let shown = format!("{error} {error:?}");
                assert!(!shown.contains("header.payload.signature"), "{shown}");
            }
        },
    );
}

const CONDITIONS: &str = include_str!("../tests/fuzz-corpus/conditions.txt");

#[test]
fn fuzz_abac_conditions() {
    use crate::api::roles::{RoleName, delegation_condition};
    use keyless_emulator::internals::{
        AccessRequest, AssignmentAttributes, evaluate, parse_condition,
    };
    let attributes = || {
        (
            proptest::option::of(any::<String>()),
            proptest::option::of("[0-9a-f-]{36}"),
            proptest::option::of("User|Group|ServicePrincipal|.*"),
        )
            .prop_map(|(role_definition_id, principal_id, principal_type)| {
                AssignmentAttributes {
                    role_definition_id,
                    principal_id,
                    principal_type,
                }
            })
    };
    let request = (
        "Microsoft.Authorization/roleAssignments/(write|delete)|.*",
        attributes(),
        attributes(),
    )
        .prop_map(|(action, request, resource)| AccessRequest {
            action,
            scope: "/subscriptions/s".into(),
            request,
            resource,
        });
    let roles = proptest::sample::subsequence(RoleName::ALL.to_vec(), 1..=RoleName::ALL.len());
    fuzz(
        "abac_conditions",
        (input(seeds(CONDITIONS)), request, roles),
        |(text, request, roles)| {
            let _ = evaluate(&text, &request);
            // What keyless asks Azure to attach (the delegation condition) always parses, and
            // allows writing exactly the roles it names.
            let condition = delegation_condition(&roles);
            parse_condition(&condition).unwrap();
            let write = |role: RoleName| AccessRequest {
                action: "Microsoft.Authorization/roleAssignments/write".into(),
                scope: "/subscriptions/s".into(),
                request: AssignmentAttributes {
                    role_definition_id: Some(role.definition_id("s")),
                    principal_id: Some("p".into()),
                    principal_type: Some("ServicePrincipal".into()),
                },
                resource: AssignmentAttributes::default(),
            };
            for role in RoleName::ALL {
                assert_eq!(
                    evaluate(&condition, &write(role)),
                    Ok(roles.contains(&role)),
                    "{role:?} under {condition}"
                );
            }
        },
    );
}
