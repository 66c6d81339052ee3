#!/usr/bin/env bash
# A deployed federation on one machine: a coordinator and three hospital sites as separate
# processes on 127.0.0.1, with TLS, node-key authentication, DP-SGD and secure aggregation.
# Each site has its own DICOM export, written from the digit composites that ship with clinfl.
#
#   examples/loopback_deployment.sh [OUT_DIR]      (default runs/deploy-demo; about 4 minutes on 2 cores)
#
# On real machines the same commands run on different hosts: see docs/coordinator.md and
# docs/site.md.
set -euo pipefail
OUT=${1:-runs/deploy-demo}
CLINFL=${CLINFL:-clinfl}
PORT=${PORT:-19092}
SITES=(site-1 site-2 site-3)

rm -rf "$OUT" && mkdir -p "$OUT"
echo "== PKI: a CA, the coordinator's certificate for 127.0.0.1, one identity per site"
"$CLINFL" pki init --out "$OUT/pki" --host 127.0.0.1
for site in "${SITES[@]}"; do "$CLINFL" pki add-site "$site" --pki "$OUT/pki"; done

echo "== one small DICOM export per site"
for k in 0 1 2; do
    "$CLINFL" data make-export --digits --seed "$k" --limit 150 --out "$OUT/export-${SITES[$k]}"
done
# the clinical default policy (DP-SGD and secure aggregation required), sized for 3 demo sites
sed -e 's/min_sites = 3/min_sites = 2/' -e 's/min_samples = 50/min_samples = 10/' \
    "$(dirname "$0")/../policies/default.toml" > "$OUT/policy.toml"
cat > "$OUT/federation.toml" <<'TOML'
[data]
label_space = "digits"
image_size = 16

[federation]
rounds = 2
batch_size = 16

[secagg]
min_sites = 2
TOML

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== the coordinator (log: $OUT/coordinator.log)"
"$CLINFL" coordinator start --config "$OUT/federation.toml" --pki "$OUT/pki" \
    --run-dir "$OUT/run" --address "127.0.0.1:$PORT" > "$OUT/coordinator.log" 2>&1 &
coordinator=$!
for k in 0 1 2; do
    site=${SITES[$k]}
    echo "== $site (log: $OUT/$site.log)"
    "$CLINFL" site run --data "$OUT/export-$site" --policy "$OUT/policy.toml" \
        --coordinator "127.0.0.1:$PORT" --pki "$OUT/pki" --site "$site" --state "$OUT/state-$site" \
        --label-space digits --image-size 16 --runtime-port $((PORT + 10 + k)) --threads 1 \
        > "$OUT/$site.log" 2>&1 &
    pids+=($!)
done

echo "== waiting for the run (watch it from another shell: $CLINFL coordinator status --run-dir $OUT/run)"
wait "$coordinator"
"$CLINFL" coordinator status --run-dir "$OUT/run"
cleanup
pids=()
for site in "${SITES[@]}"; do
    echo "== $site's privacy spend ($OUT/state-$site/audit_report.md)"
    grep -A4 '^| run | round' "$OUT/state-$site/audit_report.md" || true
done
