//! ARM allows 4,000 role assignments per subscription, a limit that cannot be raised. keyless
//! counts them at most once per interval per subscription (one unfiltered LIST), exports the count
//! as a metric, and warns on every OpenAIAccount of a subscription when it crosses 80 %.

use super::Context;
use super::kube_io::publish;
use crate::api::OpenAIAccount;
use crate::ops::metrics::{ARM_ROLE_ASSIGNMENT_LIMIT, near_limit};
use crate::plan::AccountScope;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

pub async fn count_assignments_periodically(
    ctx: Arc<Context>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()> + Unpin,
) {
    let mut shutdown = shutdown;
    // Which subscriptions were near the limit at the last count, so each crossing warns once.
    let mut near: BTreeSet<String> = BTreeSet::new();
    super::wait_until_ready(&ctx.accounts).await;
    loop {
        count_once(&ctx, &mut near).await;
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn count_once(ctx: &Context, near: &mut BTreeSet<String>) {
    let mut by_subscription: BTreeMap<String, Vec<OpenAIAccount>> = BTreeMap::new();
    for account in ctx
        .accounts
        .state()
        .iter()
        .filter_map(|a| a.0.as_ref().ok())
    {
        if let Ok(scope) = AccountScope::parse(&account.spec.resource_id) {
            by_subscription
                .entry(scope.subscription_id().to_string())
                .or_default()
                .push(account.clone());
        }
    }
    for (subscription, accounts) in by_subscription {
        let count = match ctx
            .azure
            .arm
            .count_subscription_assignments(&subscription)
            .await
        {
            Ok(count) => count,
            Err(error) => {
                // Commonly a 403: the least-privilege delegation is at the accounts, not the
                // subscription. The count is an early warning, not needed to reconcile.
                tracing::info!(%subscription, %error, "could not count the role assignments of the subscription");
                continue;
            }
        };
        ctx.metrics
            .role_assignments_per_subscription(&subscription, count);
        if near_limit(count) {
            if near.insert(subscription.clone()) {
                for account in &accounts {
                    publish(
                        &ctx.recorder,
                        &account.object_ref(&()),
                        true,
                        "RoleAssignmentLimitNear",
                        "Count",
                        format!(
                            "subscription {subscription} holds {count} of ARM's {ARM_ROLE_ASSIGNMENT_LIMIT} role assignments; new grants on {} will fail at the limit: group principals or clean up assignments",
                            account.name_any()
                        ),
                    )
                    .await;
                }
            }
        } else {
            near.remove(&subscription);
        }
    }
}
