#!/usr/bin/env bash
# asg-drain.sh: the baseline lastcall is measured against. This is the script operators write
# today for an Auto Scaling termination hook whose notifications go to an SQS queue shared by the
# group: bash, AWS CLI v1, jq and curl. One pass: find out who we are from instance metadata
# (IMDSv2), receive up to ten messages, and for each one whose EC2InstanceId is ours, run the
# drain commands, delete it and complete the lifecycle action with CONTINUE. Another instance's
# message is left alone: it stays invisible for the queue's visibility timeout (30 s by
# default), and its owner gets it only after that, if it is the one to receive it then.
#
# From cron:     * * * * * root WAIT_SECONDS=0 /usr/local/bin/asg-drain.sh
# In a loop:     while true; do /usr/local/bin/asg-drain.sh; done        (long polls, 20 s)
#
# Environment: QUEUE_URL (required), WAIT_SECONDS (long poll, default 20), AWS_ENDPOINT_URL (a
# VPC or local endpoint, passed as --endpoint-url), AWS_EC2_METADATA_SERVICE_ENDPOINT (default
# http://169.254.169.254). Each decision is logged with a timestamp.
set -euo pipefail

QUEUE_URL=${QUEUE_URL:?set QUEUE_URL}
WAIT_SECONDS=${WAIT_SECONDS:-20}
IMDS=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}
IMDS=${IMDS%/}

log() { echo "$(date +%s.%N) asg-drain: $*"; }

aws_() {
  # AWS CLI v1 does not read AWS_ENDPOINT_URL for every service; pass it explicitly.
  if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
    aws --endpoint-url "$AWS_ENDPOINT_URL" "$@"
  else
    aws "$@"
  fi
}

# IMDSv2: a session token, then the instance id and region.
TOKEN=$(curl -sS --fail -m 2 -X PUT "$IMDS/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
md() { curl -sS --fail -m 2 -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/$1"; }
INSTANCE_ID=$(md instance-id)
AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-$(md placement/region)}
export AWS_DEFAULT_REGION

out=$(aws_ sqs receive-message --queue-url "$QUEUE_URL" --max-number-of-messages 10 \
  --wait-time-seconds "$WAIT_SECONDS" --output json)
# The CLI prints nothing at all when no message came.
[ -n "$out" ] || exit 0

jq -c '.Messages[]' <<<"$out" | while read -r msg; do
  id=$(jq -r '.MessageId' <<<"$msg")
  handle=$(jq -r '.ReceiptHandle' <<<"$msg")
  body=$(jq -r '.Body' <<<"$msg")
  event=$(jq -r '.Event // empty' <<<"$body" 2>/dev/null || true)
  if [ "$event" = "autoscaling:TEST_NOTIFICATION" ]; then
    log "test notification $id; deleting it"
    aws_ sqs delete-message --queue-url "$QUEUE_URL" --receipt-handle "$handle"
    continue
  fi
  target=$(jq -r '.EC2InstanceId // empty' <<<"$body" 2>/dev/null || true)
  if [ "$target" != "$INSTANCE_ID" ]; then
    log "message $id is for ${target:-nobody}, not us; leaving it"
    continue
  fi
  group=$(jq -r '.AutoScalingGroupName' <<<"$body")
  hook=$(jq -r '.LifecycleHookName' <<<"$body")
  token=$(jq -r '.LifecycleActionToken' <<<"$body")
  log "termination of $INSTANCE_ID (message $id, group $group, hook $hook)"
  # The drain commands go here (none in the benchmark).
  aws_ sqs delete-message --queue-url "$QUEUE_URL" --receipt-handle "$handle"
  aws_ autoscaling complete-lifecycle-action --auto-scaling-group-name "$group" \
    --lifecycle-hook-name "$hook" --lifecycle-action-token "$token" \
    --instance-id "$INSTANCE_ID" --lifecycle-action-result CONTINUE
  log "completed the lifecycle action of $INSTANCE_ID"
done
