#!/bin/sh
# One-shot setup of the single-node Garage of deploy/compose.yaml, safe to re-run:
#   layout (once), the fixed access key from .env, bucket $BUCKET, key allowed on the bucket.
# The CLI finds the node through /etc/garage.toml (rpc_public_addr) and the node id in the
# metadata volume (mounted read-only); GARAGE_RPC_SECRET comes from the environment.
set -eu

: "${BUCKET:=media}"
: "${S3_ACCESS_KEY:?S3_ACCESS_KEY is required (GK + 24 hex characters)}"
: "${S3_SECRET_KEY:?S3_SECRET_KEY is required (64 hex characters)}"

case "$S3_ACCESS_KEY" in
  GK????????????????????????) ;;
  *) echo "garage-init: S3_ACCESS_KEY must be GK followed by 24 hex characters" >&2; exit 1 ;;
esac
if [ "${#S3_SECRET_KEY}" -ne 64 ]; then
  echo "garage-init: S3_SECRET_KEY must be 64 hex characters" >&2
  exit 1
fi

i=0
until garage status >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -ge 60 ]; then echo "garage-init: Garage did not answer within 60s" >&2; exit 1; fi
  sleep 1
done
garage status

if garage layout show | grep -q "No nodes currently have a role"; then
  node="$(garage node id -q | cut -d@ -f1)"
  garage layout assign -z dc1 -c 1G "$node"
  garage layout apply --version 1
else
  echo "garage-init: layout already applied"
fi

if garage key info "$S3_ACCESS_KEY" >/dev/null 2>&1; then
  echo "garage-init: key $S3_ACCESS_KEY already present"
else
  garage key import --yes -n media-api "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
fi

if garage bucket info "$BUCKET" >/dev/null 2>&1; then
  echo "garage-init: bucket $BUCKET already present"
else
  garage bucket create "$BUCKET"
fi

garage bucket allow --read --write --owner "$BUCKET" --key "$S3_ACCESS_KEY"
echo "garage-init: bucket $BUCKET ready for key $S3_ACCESS_KEY"
