#!/usr/bin/env bash
# Mutation testing of the critical modules with cargo-mutants (by hand; about an hour on two
# cores). Each group names the files it mutates and the tests that must catch the mutants; the
# outcome of each group is kept in tests/mutants/<group>/ (caught.txt, missed.txt, timeout.txt,
# unviable.txt), and tests/mutants/README.md explains every mutant still missed.
#
#   tests/mutants/run.sh            # every group
#   tests/mutants/run.sh ingress    # one group
#   ITERATE=1 tests/mutants/run.sh  # re-test only what the last run missed
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${ENGINE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/engine-tests}
VERSION=27.1.0
MUTANTS="$cache/cargo-mutants-$VERSION/bin/cargo-mutants"
if [ ! -x "$MUTANTS" ]; then
  cargo install --locked --quiet --root "$cache/cargo-mutants-$VERSION" cargo-mutants --version "$VERSION"
fi

# group | files (comma-separated) | cargo test arguments
groups=(
  "ingress|actors/src/ingress.rs,actors/src/device_keys.rs|-p actors --lib"
  "session|actors/src/session.rs|-p actors --lib"
  "sink|actors/src/sink.rs,actors/src/sink_feed.rs|-p actors --lib"
  "converter-limits|actors/src/converter/guard.rs|-p actors --lib"
  "memory-queue|engine/src/queue/memory.rs|-p engine --lib -- queue::memory"
  "coap-exchange|engine/src/transport/coap/exchange.rs|-p engine --lib -- transport::coap"
)
for g in "${groups[@]}"; do
  IFS='|' read -r name files args <<<"$g"
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  file_args=()
  IFS=',' read -ra fs <<<"$files"
  for f in "${fs[@]}"; do file_args+=(--file "$f"); done
  out="tests/mutants/$name"
  mkdir -p "$out"
  iterate=()
  [ -n "${ITERATE:-}" ] && iterate=(--iterate)
  echo "== $name: ${fs[*]}"
  # shellcheck disable=SC2086
  "$MUTANTS" mutants --in-place --no-shuffle "${iterate[@]}" "${file_args[@]}" \
    --output "$out" -- $args || {
    rc=$?
    # 2: some mutants missed, 3: some timed out; anything else is a failure of the run itself.
    if [ $rc -ne 2 ] && [ $rc -ne 3 ]; then echo "cargo-mutants failed ($rc)" >&2; exit $rc; fi
  }
  for f in caught missed timeout unviable; do
    cp "$out/mutants.out/$f.txt" "$out/$f.txt" 2>/dev/null || : >"$out/$f.txt"
  done
  echo "   caught $(wc -l <"$out/caught.txt"), missed $(wc -l <"$out/missed.txt"), timeout $(wc -l <"$out/timeout.txt"), unviable $(wc -l <"$out/unviable.txt")"
done
