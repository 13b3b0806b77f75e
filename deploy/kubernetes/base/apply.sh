#!/bin/sh
# The applier: applies what the sidecar's actuators write, with the pod's ServiceAccount (its
# Roles grant exactly this). Router objects by server-side apply, pool sizes by the Deployments'
# scale subresource (`kubectl scale`), every 10 s; `apply.sh once` applies once.
actuation=${BUDGETPILOT_ACTUATION:-/var/lib/budgetpilot/actuation}

apply_once() {
  if ls "$actuation"/router/*.yaml >/dev/null 2>&1; then
    kubectl apply --server-side --field-manager=budgetpilot-sidecar --force-conflicts \
      -f "$actuation/router/"
  fi
  for manifest in "$actuation"/scale/*.scale.yaml; do
    [ -e "$manifest" ] || continue
    name=$(basename "$manifest" .scale.yaml)   # <namespace>.<deployment>
    replicas=$(sed -n 's/^ *replicas: *\([0-9][0-9]*\) *$/\1/p' "$manifest")
    [ -n "$replicas" ] || continue
    kubectl scale deployment "${name#*.}" --namespace "${name%%.*}" --replicas "$replicas"
  done
}

if [ "${1:-}" = once ]; then
  apply_once
  exit
fi
while true; do
  apply_once
  sleep 10
done
