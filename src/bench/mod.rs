//! What the two benchmarks share: `keyless bench` (file mode, [`crate::files::bench`]) and
//! `keyless bench --controller` ([`controller`]).
//!
//! - the generated Azure side: subscriptions, a pool of principals named by `objectId` (so Graph is
//!   not what is measured), accounts, and keyless's operator identity with its ABAC-limited grant
//!   at every subscription;
//! - reading the emulator's request counts (by operation and status) and a process's RSS;
//! - the bound ARM's write buckets put on converging a number of writes per subscription.
//!
//! [`figures`] is the pure part of the controller benchmark: floors, ratio checks, the table and
//! the JSON.

pub mod controller;
pub mod figures;

use crate::api::RoleName;
use crate::api::roles::{RBAC_ADMINISTRATOR_GUID, delegation_condition};
use keyless_emulator::config::Bucket;
use keyless_emulator::seed::{
    Seed, SeedAccount, SeedFederatedCredential, SeedIdentity, SeedOperator, SeedResourceGroup,
    SeedRoleAssignment, SeedServicePrincipal, SeedSubscription, SeedUser,
};
use std::collections::BTreeMap;

pub const TENANT: &str = "0b1e5c3a-7d2f-4e8b-9a6c-5f4d3e2c1b0a";
pub const RESOURCE_GROUP: &str = "rg-bench";

/// A stable GUID for the `index`-th generated thing of a kind.
pub fn guid(kind: &str, index: u32) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("keyless-bench/{kind}/{index}").as_bytes(),
    )
    .to_string()
}

pub fn subscription(index: u32) -> String {
    guid("subscription", index)
}

/// The ARM resource id of a generated account.
pub fn account_resource_id(subscription: &str, name: &str) -> String {
    format!(
        "/subscriptions/{subscription}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.CognitiveServices/accounts/{name}"
    )
}

/// The `index`-th principal of the pool as an OpenAIAccess principal (users and service principals
/// alternately, by `objectId`).
pub fn principal(index: u32) -> serde_json::Value {
    if index.is_multiple_of(2) {
        serde_json::json!({ "objectId": guid("user", index), "principalType": "User" })
    } else {
        serde_json::json!({ "objectId": guid("sp", index), "principalType": "ServicePrincipal" })
    }
}

/// A seed with `subscriptions` subscriptions (one resource group each), `principals` principals,
/// keyless's operator identity federated with `issuer` and its grant at every subscription. No
/// accounts yet: see [`add_account`].
pub fn seed(subscriptions: u32, principals: u32, issuer: &str) -> Seed {
    let mut seed = Seed {
        tenant_id: TENANT.into(),
        ..Seed::default()
    };
    for s in 0..subscriptions {
        seed.subscriptions.push(SeedSubscription {
            id: subscription(s),
            display_name: Some(format!("bench-{s}")),
            resource_groups: vec![SeedResourceGroup {
                name: RESOURCE_GROUP.into(),
                location: "swedencentral".into(),
            }],
        });
    }
    for g in 0..principals {
        if g.is_multiple_of(2) {
            seed.users.push(SeedUser {
                id: guid("user", g),
                user_principal_name: format!("user{g}@bench.example"),
                display_name: format!("User {g}"),
                mail: None,
            });
        } else {
            seed.service_principals.push(SeedServicePrincipal {
                id: guid("sp", g),
                app_id: guid("app", g),
                display_name: format!("app-{g}"),
                graph_app_roles: Vec::new(),
                federated_credentials: Vec::new(),
                app_owner_organization_id: None,
            });
        }
    }
    let operator_principal = guid("operator", 0);
    seed.identities.push(SeedIdentity {
        subscription_id: subscription(0),
        resource_group: RESOURCE_GROUP.into(),
        name: "id-keyless-operator".into(),
        location: "swedencentral".into(),
        principal_id: operator_principal.clone(),
        client_id: guid("operator-client", 0),
        federated_credentials: vec![SeedFederatedCredential {
            name: "keyless".into(),
            issuer: issuer.into(),
            subject: "system:serviceaccount:keyless-system:keyless".into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
            claims_matching_expression: None,
        }],
        graph_app_roles: Vec::new(),
        tags: BTreeMap::new(),
    });
    seed.operator = Some(SeedOperator {
        identity: "id-keyless-operator".into(),
    });
    for s in 0..subscriptions {
        seed.role_assignments.push(SeedRoleAssignment {
            name: guid("operator-grant", s),
            scope: format!("/subscriptions/{}", subscription(s)),
            role_definition_id: RBAC_ADMINISTRATOR_GUID.into(),
            principal_id: operator_principal.clone(),
            principal_type: Some("ServicePrincipal".into()),
            description: Some("keyless bench operator".into()),
            condition: Some(delegation_condition(&RoleName::ALL)),
            condition_version: Some("2.0".into()),
            created_on: None,
            created_by: None,
        });
    }
    seed
}

/// Adds an Azure OpenAI account named `name` (its custom subdomain too) to `subscription`.
pub fn add_account(seed: &mut Seed, subscription: &str, name: &str) {
    seed.accounts.push(SeedAccount {
        subscription_id: subscription.into(),
        resource_group: RESOURCE_GROUP.into(),
        name: name.into(),
        kind: "OpenAI".into(),
        location: "swedencentral".into(),
        custom_sub_domain_name: Some(name.into()),
        disable_local_auth: true,
        endpoint: None,
    });
}

/// Requests by (operation, status), as the emulator counts them.
pub type Counts = BTreeMap<(String, u16), u64>;

/// Requests of one operation, whatever their status.
pub fn total(counts: &Counts, operation: &str) -> u64 {
    counts
        .iter()
        .filter(|((op, _), _)| op == operation)
        .map(|(_, n)| n)
        .sum()
}

/// Requests answered 429.
pub fn throttled(counts: &Counts) -> u64 {
    counts
        .iter()
        .filter(|((_, status), _)| *status == 429)
        .map(|(_, n)| n)
        .sum()
}

/// Requests to Microsoft Graph (the emulator names their operations `Graph_*`).
pub fn graph_requests(counts: &Counts) -> u64 {
    counts
        .iter()
        .filter(|((op, _), _)| op.starts_with("Graph_"))
        .map(|(_, n)| n)
        .sum()
}

/// Resident set size of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rss {
    /// `VmRSS`: now.
    pub current_kib: u64,
    /// `VmHWM`: the peak so far.
    pub peak_kib: u64,
    /// `RssAnon` now: the heap, stacks and other private memory (what the process allocated).
    pub anon_kib: u64,
    /// `RssFile` now: mapped file pages, mostly the executable's own code and data.
    pub file_kib: u64,
}

impl Rss {
    /// `pid`'s RSS (this process's when `None`); `None` where `/proc` is not readable.
    pub fn of(pid: Option<u32>) -> Option<Rss> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/status"),
            None => "/proc/self/status".into(),
        };
        Rss::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// Reads `VmRSS`, `VmHWM`, `RssAnon` and `RssFile` from the text of `/proc/<pid>/status` (the
    /// last two are 0 where the kernel does not split them).
    pub fn parse(status: &str) -> Option<Rss> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some(Rss {
            current_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
            anon_kib: field("RssAnon:").unwrap_or(0),
            file_kib: field("RssFile:").unwrap_or(0),
        })
    }
}

/// Seconds ARM's write bucket needs for these writes per subscription: the first `capacity` writes
/// of a subscription are free, then `refill_per_second`; subscriptions are independent, so the
/// slowest one bounds the run.
pub fn bucket_bound<'a>(
    writes_per_subscription: impl IntoIterator<Item = &'a u64>,
    writes: Bucket,
) -> f64 {
    writes_per_subscription
        .into_iter()
        .map(|w| w.saturating_sub(u64::from(writes.capacity)) as f64 / writes.refill_per_second)
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_bound_is_the_slowest_subscription_past_its_burst() {
        let bucket = Bucket {
            capacity: 200,
            refill_per_second: 10.0,
        };
        assert_eq!(bucket_bound(&[150, 200], bucket), 0.0);
        assert_eq!(bucket_bound(&[1200, 700], bucket), 100.0);
        assert_eq!(bucket_bound(&[], bucket), 0.0);
    }

    #[test]
    fn rss_is_read_from_proc_status() {
        let status = "Name:\tkeyless\nVmHWM:\t   65536 kB\nVmRSS:\t   40960 kB\n\
                      RssAnon:\t   30720 kB\nRssFile:\t   10240 kB\n";
        assert_eq!(
            Rss::parse(status),
            Some(Rss {
                current_kib: 40960,
                peak_kib: 65536,
                anon_kib: 30720,
                file_kib: 10240,
            })
        );
        let old_kernel = "VmHWM:\t 2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(Rss::parse(old_kernel).map(|r| r.anon_kib), Some(0));
        assert_eq!(Rss::parse("Name:\tkeyless\n"), None);
        assert!(Rss::of(None).is_some_and(|r| r.peak_kib >= r.current_kib));
    }

    #[test]
    fn counts_are_summed_by_operation_status_and_service() {
        let counts: Counts = [
            (("RoleAssignments_Create".to_string(), 201), 5),
            (("RoleAssignments_Create".to_string(), 429), 2),
            (("RoleAssignments_ListForScope".to_string(), 200), 3),
            (("Graph_GetUser".to_string(), 200), 4),
        ]
        .into_iter()
        .collect();
        assert_eq!(total(&counts, "RoleAssignments_Create"), 7);
        assert_eq!(throttled(&counts), 2);
        assert_eq!(graph_requests(&counts), 4);
    }
}
