#!/usr/bin/env bash
# The controller benchmark (`keyless bench --controller`) on a fresh loopback control plane from
# ../shared/k8s, torn down afterwards.
#
#   bash .ci/bench-controller.sh small   # CI's size (a few minutes): fails only on request ratios
#   bash .ci/bench-controller.sh medium  # 5 accounts × 100 objects × 2 principals
#   bash .ci/bench-controller.sh full    # issue 18's size: 20 accounts over 5 subscriptions ×
#                                        # 250 objects × 2 principals = 10,000 grants; memory with
#                                        # 10,000 OpenAIAccess, 20,000 ServiceAccounts, 2,000 Namespaces
#
# More flags after the size go to the bench (e.g. `--json bench.json`, `--skip takeover`). The
# binary is built in debug unless KEYLESS_BIN names one (use a release build for the README's
# figures: `cargo build --release` and KEYLESS_BIN=target/release/keyless).
# Without ../shared it skips with a notice, unless KEYLESS_REQUIRE_SHARED=1 (CI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

size=${1:-small}
shift || true
SHARED=${KEYLESS_SHARED_DIR:-../shared}
if [[ ! -f $SHARED/k8s/up.sh ]]; then
  if [[ ${KEYLESS_REQUIRE_SHARED:-} == 1 ]]; then
    echo "FAIL $SHARED/k8s is missing (KEYLESS_REQUIRE_SHARED=1)"
    exit 1
  fi
  echo "notice: $SHARED/k8s is missing: skipping the controller benchmark"
  exit 0
fi

case $size in
  small)
    # Ratios only (--check); resyncs short so the steady phase takes seconds.
    flags=(--accounts 4 --subscriptions 2 --objects 10 --principals 2 --workload-namespaces 4
      --resyncs 2 --resync-interval 10s --churn-namespaces 20 --churn-service-accounts 20
      --churn-rounds 5 --memory-objects 200 --memory-service-accounts 400 --memory-namespaces 50
      --latency-ms 20 --propagation-grace 15s --propagation-check-interval 5s
      --memory-trim-interval 2s --check)
    ;;
  medium)
    flags=(--accounts 5 --subscriptions 1 --objects 100 --principals 2 --resyncs 3
      --resync-interval 20s --memory-objects 2000 --memory-service-accounts 4000
      --memory-namespaces 400 --propagation-grace 60s --propagation-check-interval 10s
      --memory-trim-interval 10s --check)
    ;;
  full)
    flags=(--check)
    ;;
  *)
    echo "usage: $0 [small|medium|full] [bench flags...]" >&2
    exit 2
    ;;
esac

if [[ -n ${KEYLESS_BIN:-} ]]; then
  bin=$KEYLESS_BIN
else
  cargo build --locked --quiet
  bin=target/debug/keyless
fi

work=$(mktemp -d)
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  [[ ! -d $work/kas ]] || bash "$SHARED/k8s/down.sh" "$work/kas" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

bash "$SHARED/k8s/up.sh" "$work/kas" >"$work/up.log" 2>&1 || {
  cat "$work/up.log"
  exit 1
}
status=0
"$bin" bench --controller --kubeconfig "$work/kas/kubeconfig" --log-dir "$work/logs" "${flags[@]}" "$@" || status=$?
if [[ $status != 0 ]]; then
  echo "controller bench: FAILED (exit $status); the controller's logs:"
  tail -n 40 "$work"/logs/*.log 2>/dev/null || true
fi
exit "$status"
