#!/usr/bin/env bash
# A deployed federation on one machine: a coordinator and three hospital sites as separate
# processes on 127.0.0.1, with TLS, node-key authentication, DP-SGD and secure aggregation.
# Each site makes its own keys and pins the roster it approved; the coordinator never holds a
# site's private key. Each site has its own DICOM export, written from the digit composites that
# ship with clinfl.
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
echo "== coordinator: a CA and the coordinator's certificate for 127.0.0.1 (clinfl pki init)"
"$CLINFL" pki init --out "$OUT/pki" --host 127.0.0.1
for site in "${SITES[@]}"; do
    echo "== $site: its keys, made in its own state folder (clinfl site init)"
    "$CLINFL" site init --site "$site" --state "$OUT/state-$site"
    # out of band: the site sends site-request.json to the administrator and reads its
    # fingerprint to them by phone; here both ends are on this machine
    echo "== coordinator: admit $site's request (clinfl pki admit)"
    said=$(sed -n 's/.*"fingerprint": "\([^"]*\)".*/\1/p' "$OUT/state-$site/site-request.json")
    "$CLINFL" pki admit "$OUT/state-$site/site-request.json" --pki "$OUT/pki" \
        --fingerprint "$said" > /dev/null
done
echo "== every site checks the roster and pins it (clinfl site trust)"
# out of band: the administrator hands each site roster.json, ca.crt and its certificate, and the
# hospitals compare the roster's fingerprint by phone; here every site accepts the one printed
fingerprint=$("$CLINFL" pki roster --pki "$OUT/pki" --json | sed -e 's/.*"fingerprint": "\([^"]*\)".*/\1/')
echo "roster fingerprint: $fingerprint"
for site in "${SITES[@]}"; do
    "$CLINFL" site trust --roster "$OUT/pki/roster.json" --state "$OUT/state-$site" \
        --ca "$OUT/pki/ca.crt" --cert "$OUT/pki/issued/$site.crt" --accept "$fingerprint" > /dev/null
done

echo "== one small DICOM export per site"
for k in 0 1 2; do
    "$CLINFL" data make-export --digits --seed "$k" --limit 150 --out "$OUT/export-${SITES[$k]}"
done
# the clinical default policy (DP-SGD and secure aggregation required), sized for 3 demo sites:
# min_sites 2 with one colluder assumed, so every round needs all three
# (docs/secure-aggregation.md, "Small federations")
sed -e 's/min_sites = 3/min_sites = 2/' -e 's/min_samples = 50/min_samples = 10/' \
    "$(dirname "$0")/../policies/default.toml" > "$OUT/policy.toml"
# The default lets no metric leave a site. Each site lists auc: it joins the federated evaluation,
# in which its score histograms travel only inside the masked sum (docs/coordinator.md,
# "Federated evaluation"); the coordinator unmasks only the three sites' pooled histograms.
sed -e 's/^metrics = \[\]$/metrics = ["auc"]/' "$OUT/policy.toml" > "$OUT/policy-eval.toml"
grep -q '^metrics = \["auc"\]$' "$OUT/policy-eval.toml"
mv "$OUT/policy-eval.toml" "$OUT/policy.toml"
cat > "$OUT/federation.toml" <<'TOML'
[data]
label_space = "digits"
image_size = 16

[federation]
rounds = 2
batch_size = 16
# a fixed number of local steps per round, whatever a site's size: the default policy keeps
# sample counts at the site, so it declines a run that trains by epochs (docs/site.md)
local_steps = 8

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
    policy="$OUT/policy.toml"
    echo "== $site (log: $OUT/$site.log, policy: $policy)"
    "$CLINFL" site run --data "$OUT/export-$site" --policy "$policy" \
        --coordinator "127.0.0.1:$PORT" --state "$OUT/state-$site" \
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
echo "== the selected round's thresholds, chosen on the three sites' pooled validation histograms"
"$(dirname "$(command -v "$CLINFL")")/python" - "$OUT/run/results.json" <<'PY' || true
import json, sys
best = json.load(open(sys.argv[1]))["best"]
operating = best["operating"]
print(f"round {best['round']}: validation macro-AUC {best['val_macro_auc']:.3f}, test macro-AUC "
      f"{best['macro_auc']:.3f}, chosen on {operating['chosen_on']} over {operating['sites']} sites")
for name, c in operating["classes"].items():
    print(f"  {name}: threshold {c['threshold']:.3f}, test sensitivity {c['test_sensitivity']}")
PY
