#!/usr/bin/env bash
# The operator without the emulator (issue 23): what the image builds (`--no-default-features`).
# Builds keyless both ways and checks, one PASS/FAIL line each:
#   - `keyless emulator --help`, `keyless bench` and `--emulator` fail in the no-emulator binary
#     and say how to get a build with the emulator;
#   - the no-emulator binary holds none of the emulator's code: strings only the emulator's
#     server prints are absent from it and present in the default binary (so the check can fail).
# Ends with "no emulator: N passed, M failed"; exits non-zero when any fails. Called by .ci/run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

out=target/no-emulator
mkdir -p "$out"
passed=0
failed=0
check() { # check NAME COMMAND...: PASS when COMMAND succeeds
  local name=$1
  shift
  if "$@"; then
    echo "PASS $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    failed=$((failed + 1))
  fi
}

# The default build last: target/debug/keyless is what the tests and the benchmark run next.
cargo build --locked --quiet --package keyless --no-default-features --bin keyless || exit 1
cp target/debug/keyless "$out/keyless"
cargo build --locked --quiet --package keyless --bin keyless || exit 1
cp target/debug/keyless "$out/keyless-default"

hint="built without the Azure emulator"
# fails_with_hint ARGS...: exits non-zero, and stderr names the missing feature.
fails_with_hint() {
  local stderr status
  stderr=$("$out/keyless" "$@" 2>&1 >/dev/null)
  status=$?
  [[ $status -ne 0 && $stderr == *"$hint"* && $stderr == *"keyless-emulator"* ]] ||
    { echo "  keyless $*: exit $status, stderr: $stderr"; return 1; }
}
check "keyless emulator --help fails with the hint" fails_with_hint emulator --help
check "keyless emulator --seed x fails with the hint" fails_with_hint emulator --seed x
check "keyless bench fails with the hint" fails_with_hint bench
check "keyless plan --emulator fails with the hint" fails_with_hint plan -f examples/manifests/ --emulator
check "keyless crd works without the emulator" bash -c "'$out/keyless' crd | grep -q 'kind: CustomResourceDefinition'"

# Strings of the emulator's server alone: its start-up banner and its admin API's 404.
for marker in "keyless Azure emulator listening on" "no admin route"; do
  check "default binary holds \"$marker\"" grep -q -a -F "$marker" "$out/keyless-default"
  check "no-emulator binary lacks \"$marker\"" bash -c "! grep -q -a -F '$marker' '$out/keyless'"
done
echo "sizes (debug): $(stat -c %s "$out/keyless-default") bytes with the emulator, $(stat -c %s "$out/keyless") without"

echo "no emulator: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
